"""Reference training workloads (the TBD suite), profiled through tbdprof's public API."""

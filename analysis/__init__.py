"""Analysis of tbdprof runs: one module per figure, composed by :mod:`.report`.

Reads only the files of a run (Parquet segments and JSON metadata) through
DuckDB; never imports torch.
"""

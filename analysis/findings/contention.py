"""CPU contention: more runnable threads than cores, from the run's own settings or from other processes."""

from __future__ import annotations

from .base import Finding, graded, ranks_text
from .context import Context

OVERSUBSCRIBED = 1.0  # torch compute threads of a host's ranks / its cores: above this, warning
CRITICAL = 2.0  # at or above this, critical
RUNNABLE_PER_CORE = 2.0  # measured: runnable threads per core...
HOST_BUSY_PCT = 90.0  # ...on a host this busy, while the run's own threads fit...
OTHERS_SHARE = 0.25  # ...and other processes use at least this share of its cores


def cpu_contention(ctx: Context) -> list[Finding]:
    """One finding per contended host."""
    out = []
    for host, h in ctx.hosts.items():
        cores = h["cores"]
        if not cores:
            continue
        runnable, busy = ctx.gauge("cpu.runnable", host), ctx.gauge("cpu.system_pct", host)
        ranks_cores = sum((ctx.gauge("cpu.process_pct", r) or 0) for r in h["ranks"]) / 100
        evidence = {
            "host_cores": cores, "ranks_on_host": len(h["ranks"]), "torch_threads": h["torch_threads"],
            "threads_per_core": h["torch_threads"] / cores, "omp_num_threads": h["omp_num_threads"],
            "loader_workers": h["loader_workers"], "runnable_avg": runnable, "runnable_per_core": runnable / cores if runnable else None,
            "host_cpu_busy_pct": busy, "ranks_cores": ranks_cores,
            "other_processes_cores": max(0.0, (busy or 0) / 100 * cores - ranks_cores) if busy is not None else None,
        }
        severity = graded(evidence["threads_per_core"], OVERSUBSCRIBED + 1e-9, CRITICAL)
        if severity:
            evidence["source"] = "this run's thread settings"
            title = (f"host {host} is oversubscribed: {len(h['ranks'])} ranks x torch threads = {h['torch_threads']} "
                     f"compute threads on {cores} cores")
            advice = (f"Set OMP_NUM_THREADS (and torch.set_num_threads) to cores / ranks per host = "
                      f"{max(1, cores // len(h['ranks']))}, or run fewer ranks per host; pin ranks to disjoint cores "
                      "(taskset/numactl, launcher binding). Loader workers need cores too.")
        elif ((evidence["runnable_per_core"] or 0) >= RUNNABLE_PER_CORE and (busy or 0) >= HOST_BUSY_PCT
              and (evidence["other_processes_cores"] or 0) >= OTHERS_SHARE * cores):
            severity, evidence["source"] = "warning", "other processes"
            title = (f"host {host} is contended: {runnable:.1f} runnable threads on {cores} cores, other processes "
                     f"use {evidence['other_processes_cores']:.1f} cores")
            advice = ("Other processes compete with training for the CPU: run on a dedicated node (exclusive "
                      "allocation), stop background jobs, or pin the ranks to reserved cores.")
        else:
            continue
        out.append(Finding(kind="cpu_contention", severity=severity, ranks=h["ranks"], hosts=[host],
                           title=title + f" ({ranks_text(h['ranks'])})", evidence=evidence, recommendation=advice,
                           time_range_s=ctx.window_s, score=evidence["threads_per_core"]))
    return out

"""Input-bound: the training loop waits for its data loader."""

from __future__ import annotations

from .base import Finding, graded, ranks_text
from .context import Context

WARNING = 0.25  # data wait / step time
CRITICAL = 0.50
WORKERS_BUSY = 0.8  # estimated busy cores per loader worker above which the workers are CPU-bound


def input_bound(ctx: Context) -> list[Finding]:
    """Ranks whose data wait is at least ``WARNING`` of their step time."""
    hit = {r: p for r, p in ctx.per_rank.items() if (p["data_wait_fraction"] or 0) >= WARNING}
    if not hit:
        return []
    worst = max(p["data_wait_fraction"] for p in hit.values())
    rates = ctx.read_rates()
    per_rank, cpu_bound, host_full = {}, [], []
    for r, p in hit.items():
        meta = ctx.run.ranks[r].get("metadata") or {}
        workers = meta.get("num_workers")
        cores = (ctx.gauge("cpu.process_pct", r) or 0) / 100
        # While the training thread waits it uses no CPU: what it uses the rest of the time is at most one core.
        loader_busy = max(0.0, cores - (1 - p["data_wait_fraction"])) / workers if workers else None
        host = ctx.hosts.get(p["host"], {})
        busy = ctx.gauge("cpu.system_pct", p["host"])
        per_rank[r] = {"data_wait_fraction": p["data_wait_fraction"], "data_wait_s_per_step": p["phase_s"]["data_wait"],
                       "step_s": p["step_s"], "loader_workers": workers, "process_cores": cores,
                       "cores_per_worker_busy": loader_busy, **rates.get(r, {}),
                       "host_cores": host.get("cores"), "host_cpu_busy_pct": busy}
        cpu_bound += [r] * (not workers or (loader_busy or 0) >= WORKERS_BUSY)
        host_full += [r] * ((busy or 0) >= 90)
    return [Finding(
        kind="input_bound", severity=graded(worst, WARNING, CRITICAL), ranks=sorted(hit), hosts=sorted({p["host"] for p in hit.values()}),
        title=f"{ranks_text(hit)} wait{'s' * (len(hit) == 1)} for data {worst:.0%} of the step (worst rank)",
        evidence={"per_rank": per_rank}, recommendation=_advice(per_rank, cpu_bound, host_full),
        time_range_s=ctx.window_s, score=worst,
    )]


def _advice(per_rank: dict, cpu_bound: list, host_full: list) -> str:
    if any(not p["loader_workers"] for p in per_rank.values()):
        return ("Preprocessing runs in the training process: use DataLoader workers (num_workers > 0) with "
                "pin_memory and prefetch_factor >= 2 so loading overlaps compute.")
    if cpu_bound and host_full:
        return ("The loader workers are CPU-bound and the host has no idle cores: move preprocessing off the critical "
                "path (decode/augment on the GPU, e.g. DALI; pre-resize or pre-tokenize offline; cache decoded samples) "
                "rather than adding workers.")
    if cpu_bound:
        return ("The loader workers are CPU-bound: add workers (the host has idle cores), raise prefetch_factor, "
                "or move preprocessing to the GPU or offline.")
    return ("The loader workers are mostly idle while the step waits: loading is latency-bound (storage or a remote "
            "source), not CPU-bound. Raise prefetch_factor and num_workers to keep more reads in flight, use "
            "persistent workers, and read from faster or local storage (cache, larger sequential shards).")

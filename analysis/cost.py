"""What profiling cost the run, from each rank's own account (``rank.json`` ``profiling_cost``, :mod:`tbdprof.cost`).

Per rank: the training thread's profiler time per step in the steady state
as a share of the median step (each component's time over the steps
recorded, the memory breakdown's per measured step at its sampling rate:
:func:`_per_step`), its threads' CPU time as a share of one core over the
recording's wall time, and the bytes it wrote per hour. The run's figures are the worst
rank's shares and the mean bytes per rank-hour.
"""

from __future__ import annotations

from tbdprof import schema

from . import rollups
from .fmt import fmt_bytes, fmt_pct
from .load import Run


def _steps(run: Run) -> dict[int, tuple[int, float]]:
    """Per rank, (steps recorded, deep-window steps included: the account covers them; the median step in s,
    outside windows)."""
    if not run.has(schema.SPANS):
        return {}
    if run.zoom:  # scale mode: the whole run's steps from the rollups (spans hold the zoom window's only)
        counts = {r: m.count for (r, _), m in rollups.merged(run, schema.KIND_STEP).items()}
    else:
        counts = dict(run.sql("SELECT rank, count(*) FROM spans_all WHERE kind = ? GROUP BY rank", [schema.KIND_STEP]))
    rows = run.sql("SELECT rank, median(end_ns - start_ns) FROM spans WHERE kind = ? GROUP BY rank", [schema.KIND_STEP])
    return {r: (counts.get(r, 0), m / 1e9) for r, m in rows if m}


def _per_step(components: dict, steps: int, memory_every: int) -> dict[str, float]:
    """Each component's training-thread seconds per step in the steady state. The memory breakdown runs on the
    warm-up steps and then every ``memory_every``-th: its cost per measured step, at that rate (the warm-up
    measurements are a fixed cost, which a short recording would otherwise show as a share of every step)."""
    out = {}
    for k, v in components.items():
        if not isinstance(v, dict) or v.get("s") is None:
            continue
        measured = v.get("measured_steps")
        if k == "memory_breakdown" and measured:
            out[k] = v["s"] / measured / max(1, memory_every)
        elif steps:
            out[k] = v["s"] / steps
    return out


def profiling_cost(run: Run) -> dict | None:
    """``summary.json``'s ``profiling_cost`` (None when no rank kept an account: an unprofiled or older recording)."""
    accounts = {r: m["profiling_cost"] for r, m in run.ranks.items() if isinstance(m.get("profiling_cost"), dict)}
    if not accounts:
        return None
    steps = _steps(run)
    per_rank = {}
    for r, c in sorted(accounts.items()):
        wall = c.get("wall_s") or 0
        n, median_s = steps.get(r, (0, None))
        thread = c.get("training_thread") or {}
        comps = {k: v.get("s") for k, v in thread.items() if isinstance(v, dict) and "s" in v}
        per_step = _per_step(thread, n, int(run.ranks[r].get("memory_every") or 1))
        per_rank[str(r)] = {
            "training_thread_s": c.get("training_thread_s"),
            "step_time_s": median_s * n if median_s else None,
            "median_step_s": median_s,
            "per_step_s": per_step,
            "training_thread_fraction": sum(per_step.values()) / median_s if median_s and per_step else None,
            "threads_cpu_s": c.get("threads_cpu_s"),
            "wall_s": wall,
            "threads_core_fraction": c["threads_cpu_s"] / wall if wall and c.get("threads_cpu_s") is not None else None,
            "bytes_written": c.get("bytes_written"),
            "bytes_per_hour": c["bytes_written"] * 3600 / wall if wall and c.get("bytes_written") is not None else None,
            "rows_dropped": c.get("rows_dropped", 0),
            "components_s": comps,
            "memory_measured_steps": thread.get("memory_breakdown", {}).get("measured_steps"),
        }

    def worst(key):
        vals = [(v[key], r) for r, v in per_rank.items() if v[key] is not None]
        return max(vals) if vals else (None, None)

    train, train_rank = worst("training_thread_fraction")
    threads, threads_rank = worst("threads_core_fraction")
    rates = [v["bytes_per_hour"] for v in per_rank.values() if v["bytes_per_hour"] is not None]
    comps = per_rank[train_rank]["per_step_s"] if train_rank is not None else {}
    return {
        "training_thread_fraction": train,
        "training_thread_worst_rank": int(train_rank) if train_rank is not None else None,
        "threads_core_fraction": threads,
        "threads_worst_rank": int(threads_rank) if threads_rank is not None else None,
        "bytes_per_rank_hour": sum(rates) / len(rates) if rates else None,
        "bytes_written": sum(v["bytes_written"] or 0 for v in per_rank.values()),
        "rows_dropped": sum(v["rows_dropped"] or 0 for v in per_rank.values()),
        "largest_component": max(comps, key=lambda k: comps[k] or 0) if comps else None,
        "method": next(iter(accounts.values())).get("method"),
        "per_rank": per_rank,
    }


def cost_line(cost: dict | None) -> str | None:
    """``profiling cost: 0.3 % of step time on the training thread, 0.5 % of one core in its threads, 3.4 MB per hour``."""
    if not cost:
        return None
    def pct(x):
        return fmt_pct(x, 2 if x < 0.01 else 1)

    parts = [f"{pct(cost['training_thread_fraction'])} of step time on the training thread"
             if cost.get("training_thread_fraction") is not None else "training thread: no steps",
             f"{pct(cost['threads_core_fraction'])} of one core in its threads"
             if cost.get("threads_core_fraction") is not None else None,
             f"{fmt_bytes(cost['bytes_per_rank_hour'])} per hour" if cost.get("bytes_per_rank_hour") is not None else None]
    line = "profiling cost: " + ", ".join(p for p in parts if p)
    if len(cost.get("per_rank", {})) > 1:
        line += " (worst rank; bytes per rank)"
    if cost.get("rows_dropped"):
        line += f"; {cost['rows_dropped']} rows dropped"
    return line

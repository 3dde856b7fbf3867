"""Step time and throughput, warm-up steps excluded, aggregated in SQL."""

from __future__ import annotations

from tbdprof import schema

from . import rollups
from .load import Run
from .timeline import Series, span_series

_STATS = ("count(*), quantile_cont(d, [0.5, 0.9, 0.99]), min(d), max(d), avg(d), coalesce(stddev_samp(d), 0), "
          "sum(items), min(start_ns), max(end_ns), sum(units)")


def throughput_unit(run: Run) -> str:
    """The workload's natural throughput unit (the ``unit`` metadata: samples, tokens, frames...).

    Step spans count samples in ``items`` and, where the unit is not samples, that unit in ``units``."""
    units = {str((m.get("metadata") or {}).get("unit") or "") for m in run.ranks.values()} - {""}
    return units.pop() if len(units) == 1 else "samples"


def step_stats(run: Run) -> dict:
    """Step-time percentiles per rank and overall, their spread, and throughput from the step spans.

    Throughput is the samples (``items``) of all steady-state steps of all
    ranks divided by the wall time from the first such step's start to the
    last one's end, on the aligned clock; ``throughput_per_s`` counts the
    workload's own unit (``units``, e.g. tokens) the same way. ``rank_spread`` is how
    much slower the slowest rank's median step is than the fastest's.
    """
    warm = run.warmup_steps
    if run.zoom:  # scale mode: from the step rollups (whole run; the warm-up steps of the first interval included)
        by_rank = {r: m for (r, _), m in rollups.merged(run, schema.KIND_STEP).items() if m.count}
        every = rollups.all_ranks({(r, ""): m for r, m in by_rank.items()}).get("")
        total = rollups.stats_row(every) if every else (0,)
        rank_rows = [(r, *rollups.stats_row(m)) for r, m in sorted(by_rank.items())]
    else:
        inner = "SELECT rank, (end_ns - start_ns) / 1e9 AS d, items, units, start_ns, end_ns FROM steady_steps"
        total = run.sql(f"SELECT {_STATS} FROM ({inner})")[0]
        rank_rows = run.sql(f"SELECT rank, {_STATS} FROM ({inner}) GROUP BY rank ORDER BY rank") if total[0] else []
    unit = throughput_unit(run)
    if not total[0]:
        return {"steps": 0, "warmup_steps": warm, "unit": unit, "per_rank": {}, "ranks_without_steps": sorted(run.ranks)}
    per_rank = {str(r): _stats(row) for r, *row in rank_rows}
    overall = _stats(total)
    wall = overall["last_end_ns"] - overall["first_start_ns"]
    items = overall["items"]
    counted = items if unit == "samples" else overall["units"]
    rate = items / (wall / 1e9) if wall > 0 else None
    medians = [p["median_s"] for p in per_rank.values()]
    return {
        "steps": max(p["steps"] for p in per_rank.values()),
        "warmup_steps": warm,
        "unit": unit,
        "samples": items,
        "items": items,
        "units": counted,
        "wall_s": wall / 1e9,
        "throughput_per_s": counted / (wall / 1e9) if wall > 0 and counted else None,
        "throughput_samples_per_s": rate,
        "step_time_s": {k: overall[f"{k}_s"] for k in ("median", "p90", "p99")},
        "step_time_spread": {
            "mean_s": overall["mean_s"],
            "stdev_s": overall["stdev_s"],
            "cv": overall["stdev_s"] / overall["mean_s"] if overall["mean_s"] else None,
            "rank_spread": max(medians) / min(medians) - 1 if min(medians) > 0 else None,
            "slowest_rank": int(max(per_rank, key=lambda r: per_rank[r]["median_s"])),
        },
        "per_rank": {r: {k: v for k, v in p.items() if not k.endswith("_ns") and k not in ("items", "units")} for r, p in per_rank.items()},
        "ranks_without_steps": sorted(set(run.ranks) - {int(r) for r in per_rank}),
    }


def _stats(row) -> dict:
    n, (median, p90, p99), lo, hi, mean, stdev, items, first, last, units = row
    return {"steps": n, "median_s": median, "p90_s": p90, "p99_s": p99, "min_s": lo, "max_s": hi, "mean_s": mean,
            "stdev_s": stdev, "items": int(items or 0), "units": int(units or 0), "first_start_ns": first, "last_end_ns": last}


def step_series(run: Run) -> Series:
    """Step duration (s) over time per rank, all steps, bucketed to a bounded number of points."""
    return span_series(run, schema.KIND_STEP)

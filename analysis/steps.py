"""Step time and throughput, warm-up steps excluded."""

from __future__ import annotations

from .load import Run


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def step_stats(run: Run) -> dict:
    """Step-time percentiles per rank and overall, and throughput from the step spans.

    Throughput is the samples of all steady-state steps of all ranks divided by
    the wall time from the first such step's start to the last one's end, on
    the aligned clock.
    """
    warm = run.warmup_steps
    rows = run.sql(
        "SELECT rank, step, (end_ns - start_ns) / 1e9, items, start_ns, end_ns FROM spans "
        "WHERE kind = 'step' AND step >= ? ORDER BY rank, step",
        [warm],
    )
    if not rows:
        return {"steps": 0, "warmup_steps": warm, "per_rank": {}}
    per_rank: dict[int, list[float]] = {}
    items = 0
    for rank, _step, dur, n, *_ in rows:
        per_rank.setdefault(rank, []).append(dur)
        items += n or 0
    start = min(r[4] for r in rows)
    end = max(r[5] for r in rows)
    wall = (end - start) / 1e9
    all_durs = [r[2] for r in rows]
    steps_per_rank = {r: len(v) for r, v in per_rank.items()}
    return {
        "steps": max(steps_per_rank.values()),
        "warmup_steps": warm,
        "samples": items,
        "wall_s": wall,
        "throughput_samples_per_s": items / wall if wall > 0 else None,
        "step_time_s": {"median": _pct(all_durs, 0.5), "p90": _pct(all_durs, 0.9), "p99": _pct(all_durs, 0.99)},
        "per_rank": {
            str(r): {
                "steps": len(v),
                "median_s": _pct(v, 0.5),
                "p90_s": _pct(v, 0.9),
                "min_s": min(v),
                "max_s": max(v),
            }
            for r, v in sorted(per_rank.items())
        },
    }


def step_series(run: Run) -> dict[int, list[tuple[int, float]]]:
    """(step, seconds) per rank, all steps (for plots)."""
    out: dict[int, list[tuple[int, float]]] = {}
    for rank, step, dur in run.sql("SELECT rank, step, (end_ns - start_ns) / 1e9 FROM spans WHERE kind = 'step' ORDER BY rank, step"):
        out.setdefault(rank, []).append((step, dur))
    return out

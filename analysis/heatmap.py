"""The rank x time heatmap: per rank (grouped by host) and time bucket, step time, data wait and
communication time per step, each relative to its median cell.

One DuckDB query buckets the steady-state spans by (host, rank, start-time
bucket); only ranks x ``BUCKETS`` cells leave DuckDB, whatever the run's
length. A slow rank is a red row, a slow host a red band of rows, a slow
moment (a stall everywhere) a red column.
"""

from __future__ import annotations

from statistics import median

from tbdprof import schema

from .load import Run

BUCKETS = 120  # time buckets across: finer than a 7.5-inch figure shows adds bytes, not detail
HOT = 3  # at most this many ranks and hosts named on the figure
HOT_RATIO = 1.1  # those whose median cell is at least this many times the median
# metric -> (title, what it is per step)
METRICS = {
    "step": "step time",
    "data_wait": "data wait per step",
    "comm": "communication time per step (collective spans, waiting for late ranks included)",
}


def rank_heatmap(run: Run, buckets: int = BUCKETS) -> dict | None:
    """The heatmap's cells, or None without steady-state steps: ``rows`` [(host, rank)] sorted by host then rank,
    ``x_s`` (bucket start, seconds since the run's start), ``bucket_s``, and per metric of ``METRICS``
    ``values`` (rows x buckets, seconds per step, None where the rank had no step starting in the bucket),
    ``median`` (of the cells), ``hot_ranks`` and ``hot_hosts`` (of highest median ratio, at least ``HOT_RATIO``)."""
    window = run.steady_window
    if window is None:
        return None
    lo, hi = window
    width = max(1, -(-(hi - lo) // buckets))
    if run.zoom:  # scale mode: a cell per rank and rollup interval (starts on the ranks' own clocks: off by their offsets)
        width = schema.ROLLUP_INTERVAL_NS
        lo = run.sql("SELECT min(interval_ns) FROM rollups WHERE kind = ?", [schema.KIND_STEP])[0][0]
    rows = _rollup_cells(run, lo) if run.zoom else run.sql(
        "SELECT host, rank, (start_ns - $lo) // $w AS b, avg(end_ns - start_ns) FILTER (WHERE kind = $step) / 1e9, "
        "sum(end_ns - start_ns) FILTER (WHERE kind = $phase AND name = $data) / 1e9 / count(*) FILTER (WHERE kind = $step), "
        "sum(end_ns - start_ns) FILTER (WHERE kind = $comm) / 1e9 / count(*) FILTER (WHERE kind = $step) "
        "FROM steady_spans WHERE kind = $step OR kind = $comm OR (kind = $phase AND name = $data) "
        "GROUP BY ALL HAVING count(*) FILTER (WHERE kind = $step) > 0",
        {"lo": lo, "w": width, "step": schema.KIND_STEP, "phase": schema.KIND_PHASE, "data": schema.PHASE_DATA,
         "comm": schema.KIND_COMM})
    if not rows:
        return None
    keys = sorted({(h or "", r) for h, r, *_ in rows})
    index = {k: i for i, k in enumerate(keys)}
    n = max(b for _, _, b, *_ in rows) + 1
    values = {m: [[None] * n for _ in keys] for m in METRICS}
    for host, rank, b, *vals in rows:
        for m, v in zip(METRICS, vals):
            values[m][index[(host or "", rank)]][b] = v
    out = {"rows": keys, "x_s": [(lo - run.t0_ns + i * width) / 1e9 for i in range(n)], "bucket_s": width / 1e9, "metrics": {}}
    for m, grid in values.items():
        cells = [v for row in grid for v in row if v is not None]
        mid = median(cells) if cells else None
        if not mid:  # nothing recorded (no data-wait or comm spans), or zero everywhere
            continue
        ratio = [median([v for v in row if v is not None] or [0.0]) / mid for row in grid]
        by_host: dict[str, list[float]] = {}
        for (h, _), x in zip(keys, ratio):
            by_host.setdefault(h, []).append(x)
        host_ratio = {h: median(xs) for h, xs in by_host.items()}
        out["metrics"][m] = {
            "title": METRICS[m], "values": grid, "median": mid,
            "hot_ranks": [keys[i][1] for i in sorted(range(len(keys)), key=lambda i: -ratio[i])[:HOT] if ratio[i] >= HOT_RATIO],
            "hot_hosts": [h for h in sorted(host_ratio, key=lambda h: -host_ratio[h])[:HOT] if host_ratio[h] >= HOT_RATIO]
            if len(host_ratio) > 1 else [],
        }
    return out


def _rollup_cells(run: Run, first_interval: int) -> list[tuple]:
    """(host, rank, interval index, mean step s, data wait s per step, comm s per step) from the rollups."""
    return run.sql(
        "SELECT host, rank, (interval_ns - $lo) // $w AS b, sum(sum_ns) FILTER (WHERE kind = $step) / "
        "sum(count) FILTER (WHERE kind = $step) / 1e9, "
        "coalesce(sum(sum_ns) FILTER (WHERE kind = $phase AND name = $data), 0) / sum(count) FILTER (WHERE kind = $step) / 1e9, "
        "coalesce(sum(sum_ns) FILTER (WHERE kind = $comm), 0) / sum(count) FILTER (WHERE kind = $step) / 1e9 "
        "FROM rollups WHERE kind = $step OR kind = $comm OR (kind = $phase AND name = $data) "
        "GROUP BY ALL HAVING sum(count) FILTER (WHERE kind = $step) > 0",
        {"lo": first_interval, "w": schema.ROLLUP_INTERVAL_NS, "step": schema.KIND_STEP, "phase": schema.KIND_PHASE,
         "data": schema.PHASE_DATA, "comm": schema.KIND_COMM})

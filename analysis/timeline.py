"""Metric timelines, downsampled in SQL to a bounded number of points per series.

Every timeline shares one x axis: seconds since the run's first timestamp
(:attr:`Run.t0_ns`) on the aligned clock. A series is cut into at most
``max_points`` equal time buckets; a gauge becomes the mean of its readings in
each bucket, a counter (``Metric.counter``) the time-weighted rate
``sum(delta value) / sum(delta t)`` of the consecutive reading pairs that end
in the bucket. Only the bucketed rows leave DuckDB, so the cost in Python is
bounded by ``max_points`` per series whatever the run's length.
"""

from __future__ import annotations

from tbdprof import schema

from .load import SAMPLE_ROLLUP_TS, Run

MAX_POINTS = 2000
COUNTERS = tuple(m.name for m in schema.METRICS.values() if m.counter)

Series = dict[str, list[tuple[float, float]]]


def is_counter(metric: str) -> bool:
    m = schema.METRICS.get(metric)
    return bool(m and m.counter)


def label(metric: str, host: str, rank: int, device: str) -> str:
    """The series name: ``host [device]`` for host metrics, ``rank R [device]`` otherwise."""
    scope = schema.METRICS[metric].scope if metric in schema.METRICS else "process"
    who = host if scope == "host" else f"rank {rank}"
    return f"{who} {device}".strip()


def _width(run: Run, last_ns: int | None, max_points: int) -> int | None:
    """Bucket width in ns so that [t0, last_ns] spans at most ``max_points`` buckets."""
    if last_ns is None:
        return None
    return max(1, -(-(last_ns - run.t0_ns + 1) // max(1, max_points)))


def _samples_end(run: Run) -> int | None:
    return run.cached("samples_end", lambda: run.sql("SELECT max(ts_ns) FROM samples")[0][0])


def sample_buckets(run: Run) -> bool:
    """Whether the run has samples; then table ``sample_buckets`` and view ``counter_buckets`` exist (made once per run).

    ``sample_buckets`` is every series cut into ``MAX_POINTS`` time buckets:
    host, rank, metric, device, b (bucket), n (readings), mean, vmax, vmin,
    t_first, t_last, v_first, v_last. Every figure over samples (timelines,
    averages, counter totals and rates) reads it instead of the readings, so
    a run's samples are scanned once.

    ``counter_buckets`` has the counter increases per bucket: (host, rank,
    metric, device, b, t_last, dv, dt_ns): ``dv`` is the increase from the
    previous bucket's last reading (the bucket's own first reading, for the
    first bucket) to this bucket's last one, i.e. the sum of the
    consecutive-reading deltas that end in the bucket; a drop (a counter
    reset) counts as no increase. ``dt_ns`` is the time between those
    readings. A filter on the metric reaches the buckets before the window.
    """
    def make() -> bool:
        width = bucket_width(run)
        if width is None:
            return False
        if run.zoom:  # scale mode: the samples are already one row per series and rollup interval
            run.sql("CREATE TEMP TABLE sample_buckets AS SELECT host, rank, metric, device, "
                    f"({SAMPLE_ROLLUP_TS} - {int(run.t0_ns)}) // {int(width)} AS b, "
                    "n, mean, vmax, vmin, t_first, t_last, v_first, v_last FROM sample_rollups ORDER BY metric")
        else:
            run.sql(
                "CREATE TEMP TABLE sample_buckets AS SELECT host, rank, metric, device, (ts_ns - ?) // ? AS b, "
                "count(*) AS n, avg(value) AS mean, max(value) AS vmax, min(value) AS vmin, min(ts_ns) AS t_first, "
                "max(ts_ns) AS t_last, arg_min(value, ts_ns) AS v_first, arg_max(value, ts_ns) AS v_last "
                "FROM samples GROUP BY ALL",
                [run.t0_ns, width],
            )
        run.sql(
            "CREATE TEMP VIEW counter_buckets AS SELECT host, rank, metric, device, b, t_last, "
            "greatest(0, v_last - v_first) + coalesce(greatest(0, v_first - lag(v_last) OVER w), 0) AS dv, "
            "t_last - coalesce(lag(t_last) OVER w, t_first) AS dt_ns "
            "FROM sample_buckets WINDOW w AS (PARTITION BY host, rank, metric, device ORDER BY b, t_last)"
        )
        return True

    return run.cached("sample_buckets", make)


def bucket_width(run: Run) -> int | None:
    return _width(run, _samples_end(run), MAX_POINTS) if run.has(schema.SAMPLES) else None


def metric_series(run: Run, metric: str, max_points: int = MAX_POINTS, scale: float = 1.0) -> Series:
    """``metric`` over time per (host or rank, device): (seconds since run start, value / scale).

    Counters come back as per-second rates. At most ``max_points`` points per
    series: the buckets of :func:`sample_buckets`, merged ``k`` at a time in
    SQL when fewer points are asked for.
    """
    if not sample_buckets(run):
        return {}
    width = bucket_width(run)
    k = max(1, -(-MAX_POINTS // max(1, max_points)))
    if is_counter(metric):
        query = (f"SELECT host, rank, device, b // {k} AS g, sum(dv) / (sum(dt_ns) / 1e9) "
                 "FROM counter_buckets WHERE metric = ? AND dt_ns > 0 GROUP BY ALL ORDER BY ALL")
    else:
        query = f"SELECT host, rank, device, b // {k} AS g, sum(mean * n) / sum(n) FROM sample_buckets WHERE metric = ? GROUP BY ALL ORDER BY ALL"
    out: Series = {}
    names: dict[tuple, list] = {}
    for host, rank, device, g, value in run.sql(query, [metric]):
        pts = names.get((host, rank, device))
        if pts is None:
            pts = names[(host, rank, device)] = out.setdefault(label(metric, host, rank, device), [])
        pts.append(((g + 0.5) * k * width / 1e9, value / scale))
    return out


def span_series(run: Run, kind: str, name: str | None = None, max_points: int = MAX_POINTS) -> Series:
    """Per rank, the mean duration (s) of the spans of ``kind`` (named ``name``, or all), bucketed by start time."""
    where, params = ("kind = ?", [kind]) if name is None else ("kind = ? AND name = ?", [kind, name])
    if run.zoom:  # scale mode: one point per rank and rollup interval, at the interval's middle (the same x for all ranks)
        rows = run.sql(f"SELECT rank, interval_ns + ? - ?, sum(sum_ns) / sum(count) / 1e9 FROM rollups "
                       f"WHERE {where} GROUP BY rank, interval_ns ORDER BY ALL", [schema.ROLLUP_INTERVAL_NS // 2, run.t0_ns, *params])
        out = {}
        for rank, mid_ns, value in rows:
            out.setdefault(f"rank {rank}", []).append((mid_ns / 1e9, value))
        return out
    width = _width(run, run.sql(f"SELECT max(start_ns) FROM spans WHERE {where}", params)[0][0], max_points)
    if width is None:
        return {}
    out: Series = {}
    rows = run.sql(f"SELECT rank, (start_ns - ?) // ? AS b, avg(end_ns - start_ns) / 1e9 FROM spans WHERE {where} "
                   "GROUP BY ALL ORDER BY ALL", [run.t0_ns, width, *params])
    for rank, b, value in rows:
        out.setdefault(f"rank {rank}", []).append(((b + 0.5) * width / 1e9, value))
    return out


def counter_rates(run: Run, metrics: tuple[str, ...], steady: bool = True) -> dict[tuple, dict[str, float]]:
    """Per (host, rank, metric, device): ``total`` increase over the run and the rate ``per_s`` of counter ``metrics``.

    With ``steady`` the rate is taken over the buckets that end inside
    :attr:`Run.steady_window` (to one bucket, 1/MAX_POINTS of the run, at
    its edges) when they hold an increase, otherwise over the whole run.
    """
    if not metrics or not sample_buckets(run):
        return {}
    window = run.steady_window if steady else None
    lo, hi = window or (0, 0)
    query = (
        "SELECT host, rank, metric, device, sum(dv), sum(dt_ns), "
        "sum(dv) FILTER (WHERE t_last - dt_ns >= ? AND t_last <= ?), sum(dt_ns) FILTER (WHERE t_last - dt_ns >= ? AND t_last <= ?) "
        "FROM counter_buckets WHERE list_contains(?, metric) GROUP BY ALL ORDER BY ALL"
    )
    out = {}
    for host, rank, metric, device, total, t_all, d_win, t_win in run.sql(query, [lo, hi, lo, hi, list(metrics)]):
        delta, secs = (d_win, t_win) if window and t_win else (total, t_all)
        out[(host, rank, metric, device)] = {"total": total, "per_s": delta / (secs / 1e9) if secs else None}
    return out


def gauge_stats(run: Run, metrics: tuple[str, ...] | None = None, steady: bool = True) -> list[tuple]:
    """(host, rank, metric, device, avg, max, readings) of gauge ``metrics`` (all gauges when None),
    over the buckets inside the steady window when there are any, else the whole run."""
    if not sample_buckets(run):
        return []
    cond = "list_contains(?, metric)" if metrics else "NOT list_contains(?, metric)"
    query = (f"SELECT host, rank, metric, device, sum(mean * n) / sum(n), max(vmax), sum(n) FROM sample_buckets "
             f"WHERE {cond} AND t_first >= ? AND t_last <= ? GROUP BY ALL ORDER BY ALL")
    names = list(metrics or COUNTERS)
    window = run.steady_window if steady else None
    rows = run.sql(query, [names, *window]) if window else []
    return rows or run.sql(query, [names, -(2**62), 2**62])

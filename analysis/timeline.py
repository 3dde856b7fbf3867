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

from .load import Run, sql_list

MAX_POINTS = 2000

Series = dict[str, list[tuple[float, float]]]


def is_counter(metric: str) -> bool:
    m = schema.METRICS.get(metric)
    return bool(m and m.counter)


def label(metric: str, host: str, rank: int, device: str) -> str:
    """The series name: ``host [device]`` for host metrics, ``rank R [device]`` otherwise."""
    scope = schema.METRICS[metric].scope if metric in schema.METRICS else "process"
    who = host if scope == "host" else f"rank {rank}"
    return f"{who} {device}".strip()


def bucket_ns(run: Run, metric: str, max_points: int = MAX_POINTS) -> int | None:
    """The bucket width that keeps ``metric`` within ``max_points`` buckets (None: no readings)."""
    hi = run.sql("SELECT max(ts_ns) FROM samples WHERE metric = ?", [metric])[0][0]
    return _width(run, hi, max_points)


def _width(run: Run, last_ns: int | None, max_points: int) -> int | None:
    """Bucket width in ns so that [t0, last_ns] spans at most ``max_points`` buckets."""
    if last_ns is None:
        return None
    return max(1, -(-(last_ns - run.t0_ns + 1) // max(1, max_points)))


def rate_sql(where: str = "metric = ?") -> str:
    """Consecutive-reading deltas of counter samples: (host, rank, metric, device, ts_ns, dv, dt_ns).

    A negative delta (a counter reset) is dropped.
    """
    return (
        "SELECT host, rank, metric, device, ts_ns, CASE WHEN dv >= 0 THEN dv END AS dv, dt_ns FROM ("
        "SELECT host, rank, metric, device, ts_ns, value - lag(value) OVER w AS dv, ts_ns - lag(ts_ns) OVER w AS dt_ns "
        f"FROM samples WHERE {where} WINDOW w AS (PARTITION BY host, rank, metric, device ORDER BY ts_ns)) WHERE dt_ns > 0"
    )


def metric_series(run: Run, metric: str, max_points: int = MAX_POINTS, scale: float = 1.0) -> Series:
    """``metric`` over time per (host or rank, device): (seconds since run start, value / scale).

    Counters come back as per-second rates. At most ``max_points`` points per series.
    """
    width = bucket_ns(run, metric, max_points) if run.has(schema.SAMPLES) else None
    if width is None:
        return {}
    if is_counter(metric):
        query = (f"SELECT host, rank, device, (ts_ns - ?) // ? AS b, sum(dv) / (sum(dt_ns) / 1e9) FROM ({rate_sql()}) "
                 "WHERE dv IS NOT NULL GROUP BY ALL ORDER BY ALL")
    else:
        query = "SELECT host, rank, device, (ts_ns - ?) // ? AS b, avg(value) FROM samples WHERE metric = ? GROUP BY ALL ORDER BY ALL"
    out: Series = {}
    for host, rank, device, b, value in run.sql(query, [run.t0_ns, width, metric]):
        out.setdefault(label(metric, host, rank, device), []).append(((b + 0.5) * width / 1e9, value / scale))
    return out


def span_series(run: Run, where: str, max_points: int = MAX_POINTS) -> Series:
    """Per rank, the mean duration (s) of the spans matching ``where``, bucketed by start time."""
    width = _width(run, run.sql(f"SELECT max(start_ns) FROM spans WHERE {where}")[0][0], max_points)
    if width is None:
        return {}
    out: Series = {}
    rows = run.sql(f"SELECT rank, (start_ns - ?) // ? AS b, avg(end_ns - start_ns) / 1e9 FROM spans WHERE {where} "
                   "GROUP BY ALL ORDER BY ALL", [run.t0_ns, width])
    for rank, b, value in rows:
        out.setdefault(f"rank {rank}", []).append(((b + 0.5) * width / 1e9, value))
    return out


def counter_rates(run: Run, metrics: tuple[str, ...], steady: bool = True) -> dict[tuple, dict[str, float]]:
    """Per (host, rank, metric, device): ``total`` over the run and the rate ``per_s`` of counter ``metrics``.

    With ``steady`` the rate is taken over the readings inside
    :attr:`Run.steady_window` when it holds at least two of them, otherwise
    over the whole run.
    """
    if not run.has(schema.SAMPLES) or not metrics:
        return {}
    query = (f"SELECT host, rank, metric, device, sum(dv), sum(dt_ns) / 1e9 FROM ({rate_sql(f'metric IN {sql_list(metrics)} AND ts_ns BETWEEN ? AND ?')}) "
             "WHERE dv IS NOT NULL GROUP BY ALL ORDER BY ALL")
    everything = run.sql(query, [-(2**62), 2**62])
    window = run.steady_window if steady else None
    inside = {tuple(r[:4]): r for r in run.sql(query, list(window))} if window else {}
    out = {}
    for row in everything:
        *_, delta, secs = inside.get(tuple(row[:4]), row)
        out[tuple(row[:4])] = {"total": row[4], "per_s": delta / secs if secs else None}
    return out

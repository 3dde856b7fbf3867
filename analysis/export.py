"""Chrome Trace Event export (Perfetto UI, chrome://tracing), streamed in constant memory.

Layout: one process (``pid``) per rank, named ``rank R (host)``; threads
(``tid``) ``steps`` (1) and ``phases`` (2), then lanes from 10 up for every
other span kind (``comm 0``, ``comm 1``, ``mark 0``, ``hvd 0``...): spans of
those kinds may overlap, so each goes to the first lane of its kind that is
free at its start, and slices on one thread never partially overlap. Spans are complete events
(``"ph": "X"``); the progress watch's hangs are on thread ``hangs`` (3): a complete event from the
last progress to the resume or the end of the recording, instants (``"ph": "i"``) where a hang was
seen, resumed or failed; samples are counter events (``"ph": "C"``), one track per
metric and device, counters as per-second rates. ``ts`` and ``dur`` are
microseconds since the run's first timestamp on the aligned clock; that zero,
in Unix nanoseconds, is ``otherData.t0_unix_ns``.

Rows stream out of DuckDB as Arrow record batches and are written as they
come, so memory stays flat whatever the run's size. A name ending in ``.gz``
is gzip-compressed.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import IO, Iterator

from tbdprof import schema
from tbdprof.errors import UserError

from .load import Run, analyse
from .timeline import is_counter, label, rate_sql

TID_STEPS, TID_PHASES, TID_HANGS, TID_LANES = 1, 2, 3, 10
_KIND_TID = {schema.KIND_STEP: TID_STEPS, schema.KIND_PHASE: TID_PHASES}
_NESTED = f"kind IN ('{schema.KIND_STEP}', '{schema.KIND_PHASE}')"
BATCH_ROWS = 50_000


def _batches(run: Run, query: str, params: list) -> Iterator[dict[str, list]]:
    reader = run.con.sql(query, params=params).to_arrow_reader(BATCH_ROWS)
    for batch in reader:
        yield batch.to_pydict()


def _filters(ranks: list[int] | None, start_s: float | None, end_s: float | None, t0: int, ts: str, end: str) -> tuple[str, list]:
    where, params = [], []
    if ranks is not None:
        where.append(f"rank IN ({', '.join(str(int(r)) for r in ranks) or 'NULL'})")
    if start_s is not None:
        where.append(f"{end} >= ?")
        params.append(t0 + int(start_s * 1e9))
    if end_s is not None:
        where.append(f"{ts} <= ?")
        params.append(t0 + int(end_s * 1e9))
    return (" AND ".join(where) or "true"), params


def trace_events(run: Run, ranks: list[int] | None = None, start_s: float | None = None, end_s: float | None = None) -> Iterator[dict]:
    """The trace's events, one dict at a time: metadata, then slices, then counters.

    ``ranks`` keeps only those ranks; ``start_s``/``end_s`` (seconds since the
    run's start) keep the spans that overlap the window and the samples in it.
    """
    t0 = run.t0_ns or 0
    keep = sorted(r for r in run.ranks if ranks is None or r in ranks)
    for rank in keep:
        host = run.ranks[rank].get("host", "?")
        yield {"ph": "M", "name": "process_name", "pid": rank, "tid": 0, "args": {"name": f"rank {rank} ({host})"}}
        yield {"ph": "M", "name": "process_sort_index", "pid": rank, "tid": 0, "args": {"sort_index": rank}}
        for tid, name in ((TID_STEPS, "steps"), (TID_PHASES, "phases")):
            yield {"ph": "M", "name": "thread_name", "pid": rank, "tid": tid, "args": {"name": name}}
    span_where, params = _filters(ranks, start_s, end_s, t0, "start_ns", "end_ns")
    cols = "rank, step, name, kind, start_ns, end_ns, bytes, items"
    yield from _slices(run, f"SELECT {cols} FROM spans WHERE {_NESTED} AND {span_where}", params, t0, None)
    yield from _slices(run, f"SELECT {cols} FROM spans WHERE NOT {_NESTED} AND {span_where} ORDER BY rank, start_ns", params, t0, {})
    if run.has(schema.HANGS):
        hang_where, params = _filters(ranks, start_s, end_s, t0, "since_ns", "ts_ns")
        yield from _hangs(run, hang_where, params, t0)
    sample_where, params = _filters(ranks, start_s, end_s, t0, "ts_ns", "ts_ns")
    yield from _counters(run, sample_where, params, t0)


def _slices(run: Run, query: str, params: list, t0: int, lanes: dict | None) -> Iterator[dict]:
    """Complete events. With ``lanes`` (rows sorted by rank and start) each span takes the first
    free lane of its kind: ``lanes[rank][kind]`` is a list of [tid, end of its last slice]."""
    for b in _batches(run, query, params):
        for rank, step, name, kind, start, end, nbytes, items in zip(*b.values()):
            args = {k: v for k, v in (("step", step), ("bytes", nbytes), ("items", items)) if v is not None}
            if lanes is None:
                tid = _KIND_TID[kind]
            else:
                mine = lanes.setdefault(rank, {})
                free = next((lane for lane in mine.get(kind, []) if lane[1] <= start), None)
                if free is None:
                    free = [TID_LANES + sum(map(len, mine.values())), end]
                    mine.setdefault(kind, []).append(free)
                    yield {"ph": "M", "name": "thread_name", "pid": rank, "tid": free[0], "args": {"name": f"{kind} {len(mine[kind]) - 1}"}}
                free[1] = end
                tid = free[0]
            yield {"ph": "X", "name": name, "cat": kind, "pid": rank, "tid": tid,
                   "ts": (start - t0) / 1e3, "dur": max(0, end - start) / 1e3, "args": args}


def _hangs(run: Run, where: str, params: list, t0: int) -> Iterator[dict]:
    """The progress watch's events on a ``hangs`` thread of each rank: a hang is a complete event from the
    last progress to its resume (else to the end of the rank's recording) named after the place, plus an
    instant where it was seen (with the stacks); a resume and an error are instants."""
    query = (
        "SELECT h.rank, step, event, ts_ns, since_ns, threshold_s, place, waiting_in, location, phase, collective, stacks, "
        "CASE WHEN event = 'hang' AND lead(event) OVER w = 'resume' THEN lead(ts_ns) OVER w END AS resumed_ns, e.end_ns "
        "FROM hangs h LEFT JOIN (SELECT rank, max(t) AS end_ns FROM (SELECT rank, max(end_ns) AS t FROM spans GROUP BY rank "
        "UNION ALL SELECT rank, max(ts_ns) FROM samples GROUP BY rank UNION ALL SELECT rank, max(ts_ns) FROM hangs GROUP BY rank) "
        f"GROUP BY rank) e ON e.rank = h.rank WHERE {where.replace('rank IN', 'h.rank IN')} "
        "WINDOW w AS (PARTITION BY h.rank ORDER BY ts_ns) ORDER BY h.rank, ts_ns")
    from .hangs import place_label

    named = set()
    for b in _batches(run, query, params):
        for rank, step, event, ts, since, thr, place, waiting, loc, phase, coll, stacks, resumed, end in zip(*b.values()):
            if rank not in named:
                named.add(rank)
                yield {"ph": "M", "name": "thread_name", "pid": rank, "tid": TID_HANGS, "args": {"name": "hangs"}}
            info = {"step": step, "place": place, "waiting_in": waiting, "location": loc, "phase": phase, "collective": coll,
                    "threshold_s": thr}
            info = {k: v for k, v in info.items() if v is not None}
            label = place_label("failed" if event == schema.HANG_ERROR else "hung", info)
            if event == schema.HANG_HANG:
                stop = resumed if resumed is not None else max(end or ts, ts)
                yield {"ph": "X", "name": f"no progress: {label}", "cat": "hang", "pid": rank, "tid": TID_HANGS,
                       "ts": (since - t0) / 1e3, "dur": max(0, stop - since) / 1e3,
                       "args": info | {"resumed": resumed is not None, "since_s": (since - t0) / 1e9}}
            name = {schema.HANG_HANG: f"hang seen: {label}", schema.HANG_RESUME: "resumed"}.get(event, f"error: {label}")
            yield {"ph": "i", "s": "t", "name": name, "cat": "hang", "pid": rank, "tid": TID_HANGS, "ts": (ts - t0) / 1e3,
                   "args": info | {"event": event, "no_progress_s": (ts - since) / 1e9} | ({"stacks": stacks} if stacks else {})}


def _counters(run: Run, where: str, params: list, t0: int) -> Iterator[dict]:
    gauges = f"SELECT host, rank, metric, device, ts_ns, value FROM samples WHERE {where} AND metric NOT IN (SELECT unnest(?))"
    rates = f"SELECT host, rank, metric, device, ts_ns, dv / (dt_ns / 1e9) FROM ({rate_sql(f'metric IN (SELECT unnest(?)) AND {where}')}) WHERE dv IS NOT NULL"
    counters = [m.name for m in schema.METRICS.values() if m.counter]
    for query, qparams in ((gauges, [*params, counters]), (rates, [counters, *params])):
        for b in _batches(run, query, qparams):
            for host, rank, metric, device, ts, value in zip(*b.values()):
                name = metric + ("/s" if is_counter(metric) else "")
                yield {"ph": "C", "name": name, "pid": rank, "tid": 0, "ts": (ts - t0) / 1e3,
                       "args": {label(metric, host, rank, device) if device else "value": value}}


def write_chrome_trace(run: Run, out: IO[str], **filters) -> int:
    """Write the trace as JSON (object form) to ``out``; return the number of events."""
    out.write('{"displayTimeUnit": "ms", "otherData": ')
    json.dump({"tool": "tbdprof", "run_id": run.meta.get("run_id") or run.path.name, "t0_unix_ns": run.t0_ns,
               "clock": "rank 0's clock (aligned)"}, out)
    out.write(', "traceEvents": [\n')
    n = 0
    for event in trace_events(run, **filters):
        if n:
            out.write(",\n")
        out.write(json.dumps(event, separators=(",", ":")))
        n += 1
    out.write("\n]}\n")
    return n


def export(run_dir: str | Path, fmt: str = "chrome", output: str | Path | None = None, **filters) -> Path | None:
    """Export ``run_dir`` to ``output`` (default ``<run_dir>/trace.json.gz``; ``-`` for stdout)."""
    if fmt != "chrome":
        raise ValueError(f"unknown export format {fmt!r}")
    path = None if str(output) == "-" else Path(output) if output else Path(run_dir) / "trace.json.gz"

    def write(run: Run) -> tuple[int, list[str]]:
        if path is None:
            return write_chrome_trace(run, sys.stdout, **filters), run.problems
        opener = gzip.open if path.name.endswith(".gz") else open
        try:
            f = opener(path, "wt", encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror or e}") from None
        with f:
            return write_chrome_trace(run, f, **filters), run.problems

    n, problems = analyse(run_dir, write)
    for p in problems:
        print(f"tbdprof: note: {p}", file=sys.stderr)
    if path is not None:
        print(f"tbdprof: wrote {n} events to {path}", file=sys.stderr)
    return path

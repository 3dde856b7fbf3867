"""Chrome Trace Event export (Perfetto UI, chrome://tracing), streamed in constant memory.

Layout: one process (``pid``) per rank, named ``rank R (host)``; threads
(``tid``) ``steps`` (1) and ``phases`` (2), then lanes from 10 up for every
other span kind (``comm 0``, ``comm 1``, ``mark 0``, ``hvd 0``...): spans of
those kinds may overlap, so each goes to the first lane of its kind that is
free at its start, and slices on one thread never partially overlap. Spans are complete events
(``"ph": "X"``), deep-window steps included. The operators of deep windows (table ``ops``) are
complete events on one thread per profiler thread, ``ops <thread>`` (tid 1000 up), nested as
torch.profiler saw them (layer ranges ``module: <path>`` around their operators), each with its
step, phase and layer in ``args``, on the same aligned clock as the phases above them; GPU
kernels (table ``kernels``, CUDA only) on one thread per device and stream, ``GPU d stream s``
(tid 2000 up), with the operator that launched them. The progress watch's hangs are on thread ``hangs`` (3): a complete event from the
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
from .timeline import COUNTERS, is_counter, label

TID_STEPS, TID_PHASES, TID_HANGS, TID_LANES, TID_OPS, TID_KERNELS = 1, 2, 3, 10, 1000, 2000
_KIND_TID = {schema.KIND_STEP: TID_STEPS, schema.KIND_PHASE: TID_PHASES}
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
    nested = [list(_KIND_TID), *params]  # steps and phases never overlap on their thread
    yield from _slices(run, f"SELECT {cols} FROM spans_all WHERE list_contains(?, kind) AND {span_where}", nested, t0, None)
    yield from _slices(run, f"SELECT {cols} FROM spans_all WHERE NOT list_contains(?, kind) AND {span_where} ORDER BY rank, start_ns",
                       nested, t0, {})
    if run.has(schema.OPS):
        yield from _ops(run, span_where, params, t0)
    if run.has(schema.KERNELS):
        yield from _kernels(run, span_where, params, t0)
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


def _threads(tid: int, rank: int, name: str, named: set) -> Iterator[dict]:
    if (rank, tid) not in named:
        named.add((rank, tid))
        yield {"ph": "M", "name": "thread_name", "pid": rank, "tid": tid, "args": {"name": name}}
        yield {"ph": "M", "name": "thread_sort_index", "pid": rank, "tid": tid, "args": {"sort_index": tid}}


def _ops(run: Run, where: str, params: list, t0: int) -> Iterator[dict]:
    """Deep-window operators: one thread per (rank, profiler thread), nested, with their step, phase and layer."""
    from .ops import ops_sql

    sql, ops_params = ops_sql(None, None)
    query = (f"WITH x AS ({sql}) SELECT rank, thread, name, module, phase, step, start_ns, end_ns, self_ns FROM x "
             f"WHERE {where} ORDER BY rank, thread, start_ns, end_ns DESC")
    tids: dict[tuple[int, int], int] = {}
    named: set = set()
    for b in _batches(run, query, [*ops_params, *params]):
        for rank, thread, name, module, phase, step, start, end, self_ns in zip(*b.values()):
            if (rank, thread) not in tids:
                tids[(rank, thread)] = TID_OPS + sum(1 for r, _ in tids if r == rank)
            tid = tids[(rank, thread)]
            yield from _threads(tid, rank, f"ops {thread}", named)
            args = {k: v for k, v in (("step", step), ("phase", phase), ("layer", module)) if v is not None}
            yield {"ph": "X", "name": name, "cat": "op", "pid": rank, "tid": tid, "ts": (start - t0) / 1e3,
                   "dur": max(0, end - start) / 1e3, "args": args | {"self_us": self_ns / 1e3}}


def _kernels(run: Run, where: str, params: list, t0: int) -> Iterator[dict]:
    """Deep-window GPU activities: one thread per (rank, device, stream), with the operator that launched each."""
    query = ("SELECT rank, device, stream, name, kind, step, op, module, bytes, start_ns, end_ns FROM kernels "
             f"WHERE {where} ORDER BY rank, device, stream, start_ns")
    tids: dict[tuple[int, int, int], int] = {}
    named: set = set()
    for b in _batches(run, query, params):
        for rank, device, stream, name, kind, step, op, module, nbytes, start, end in zip(*b.values()):
            if (rank, device, stream) not in tids:
                tids[(rank, device, stream)] = TID_KERNELS + sum(1 for r, _, _ in tids if r == rank)
            tid = tids[(rank, device, stream)]
            yield from _threads(tid, rank, f"GPU {device} stream {stream}", named)
            args = {k: v for k, v in (("step", step), ("op", op), ("layer", module), ("bytes", nbytes)) if v is not None}
            yield {"ph": "X", "name": name, "cat": kind, "pid": rank, "tid": tid, "ts": (start - t0) / 1e3,
                   "dur": max(0, end - start) / 1e3, "args": args}


def _hangs(run: Run, where: str, params: list, t0: int) -> Iterator[dict]:
    """The progress watch's events on a ``hangs`` thread of each rank: a hang is a complete event from the
    last progress to its resume (else to the end of the rank's recording) named after the place, plus an
    instant where it was seen (with the stacks); a resume and an error are instants."""
    query = (
        "SELECT h.rank, step, event, ts_ns, since_ns, threshold_s, place, waiting_in, location, phase, collective, stacks, "
        "CASE WHEN event = ? AND lead(event) OVER w = ? THEN lead(ts_ns) OVER w END AS resumed_ns, e.end_ns "
        "FROM hangs h LEFT JOIN (SELECT rank, max(t) AS end_ns FROM (SELECT rank, max(end_ns) AS t FROM spans GROUP BY rank "
        "UNION ALL SELECT rank, max(ts_ns) FROM samples GROUP BY rank UNION ALL SELECT rank, max(ts_ns) FROM hangs GROUP BY rank) "
        f"GROUP BY rank) e ON e.rank = h.rank WHERE {where.replace('rank IN', 'h.rank IN')} "
        "WINDOW w AS (PARTITION BY h.rank ORDER BY ts_ns) ORDER BY h.rank, ts_ns")
    from .hangs import place_label

    named = set()
    for b in _batches(run, query, [schema.HANG_HANG, schema.HANG_RESUME, *params]):
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
    # counters: consecutive-reading deltas per second; a negative delta (a counter reset) is dropped
    rates = ("SELECT host, rank, metric, device, ts_ns, dv / (dt_ns / 1e9) FROM (SELECT host, rank, metric, device, ts_ns, "
             "value - lag(value) OVER w AS dv, ts_ns - lag(ts_ns) OVER w AS dt_ns FROM samples "
             f"WHERE metric IN (SELECT unnest(?)) AND {where} WINDOW w AS (PARTITION BY host, rank, metric, device ORDER BY ts_ns)) "
             "WHERE dt_ns > 0 AND dv >= 0")
    counters = list(COUNTERS)
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

    n, problems = analyse(run_dir, write, "raw")  # every span of the range asked for, whatever the run's size
    for p in problems:
        print(f"tbdprof: note: {p}", file=sys.stderr)
    if path is not None:
        print(f"tbdprof: wrote {n} events to {path}", file=sys.stderr)
    return path

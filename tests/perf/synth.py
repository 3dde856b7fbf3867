"""A deterministic synthetic run in the tbdprof store format, for scale tests.

``python tests/perf/synth.py --ranks 64 --hours 1 --out DIR`` writes what a
64-rank job would record in an hour at the defaults: 10 steps/s with
data_wait/h2d/forward/backward/optimizer phases and one allreduce per step,
10 Hz samples (process and GPU metrics on every rank, host metrics on each host's
local rank 0), and a memory row per step: about 70 million rows for 64 ranks. Files are laid out as the writer
leaves them after compaction (one range file per table per ``--file-minutes``; rollups
merged on to one file per six of those, an hour at the default).
Each table's columns are its row type (``tbdprof.schema``) holding numpy arrays,
converted to Arrow by the writer's own ``columns_to_table``. Table ``rollups`` holds
the rows the writer's ``tbdprof.rollup.Rollups`` makes from those spans, samples and memory rows,
computed column-wise (:func:`rollup_rows`; ``--no-rollups`` leaves it out).
``--jobs N`` writes N ranks at a time; each rank has its own seeded random
stream, so the files are the same whatever N is.
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tbdprof import rollup, schema, store
from tbdprof.writer import PARQUET_OPTIONS, ROLLUP_COMPACTION, columns_to_table

T0_NS = 1_780_000_000_000_000_000  # a fixed epoch: same bytes on every run
PHASES = (("data_wait", 0.05), ("h2d", 0.02), ("forward", 0.30), ("backward", 0.45), ("optimizer", 0.08))
GRAD_BYTES = 25_557_032 * 4
SLOW_RANK = {"forward": 0.3}  # a planted slow rank: +30% of a step in forward (compute)
SLOW_HOST = {"data_wait": 0.27}  # every rank of a planted slow host: +27% of a step waiting for data (straggler: >= 25%)
ROLLUP_FILE_CHUNKS = ROLLUP_COMPACTION[-1]  # the writer merges this many ten-minute rollups files into one (an hour)


def _spans(rng, rank, first_step, n_steps, step_ns, slow=None):
    """``slow``: phase -> extra time in it, as a fraction of the nominal step (a planted straggler)."""
    slow = slow or {}
    steps = np.arange(first_step, first_step + n_steps, dtype=np.int64)
    jitter = rng.normal(1.0, 0.03, n_steps).clip(0.8, 1.5)
    dur = (step_ns * jitter).astype(np.int64)
    starts = T0_NS + steps * step_ns
    rows = []

    def add(name, kind, s, e, nbytes=None, items=None):  # units stay null: counted in samples, not tokens
        row = schema.SpanRow(steps, name, kind, s, e, nbytes, items)
        rows.append([v if isinstance(v, np.ndarray) else np.full(n_steps, v, dtype=None if isinstance(v, int) else object)
                     for v in row])

    add("step", schema.KIND_STEP, starts, starts + dur + int(sum(slow.values()) * step_ns), items=32)
    t = starts.copy()
    bwd = None
    for name, frac in PHASES:
        e = t + (dur * frac).astype(np.int64) + int(slow.get(name, 0.0) * step_ns)
        add(name, schema.KIND_PHASE, t, e)
        if name == "backward":
            bwd = (t, e)
        t = e
    add(schema.COMM_ALLREDUCE, schema.KIND_COMM, bwd[0] + (bwd[1] - bwd[0]) // 3, bwd[1], nbytes=GRAD_BYTES)
    return schema.SpanRow(*(np.concatenate(col) for col in zip(*rows)))


def _samples(rng, local: int, first_tick, n_ticks, tick_ns, cores: int, nics: tuple[str, ...]):
    ts = T0_NS + np.arange(first_tick, first_tick + n_ticks, dtype=np.int64) * tick_ns
    series: list[tuple[str, str, np.ndarray]] = []
    growth = np.arange(first_tick, first_tick + n_ticks, dtype=np.float64)
    series.append(("cpu.process_pct", "", rng.normal(95, 5, n_ticks)))
    series.append(("cpu.process_threads", "", np.full(n_ticks, 24.0)))
    series.append(("mem.rss_bytes", "", np.full(n_ticks, 3.2e9) + rng.normal(0, 1e6, n_ticks)))
    series.append(("io.read_bytes", "", growth * 4.9e6))
    series.append(("io.write_bytes", "", growth * 1e3))
    series.append(("io.read_chars", "", growth * 5e6))
    series.append(("io.write_chars", "", growth * 2e3))
    gpu = f"gpu{local}"
    series.append(("gpu.util_pct", gpu, rng.uniform(85, 100, n_ticks)))
    series.append(("gpu.mem_util_pct", gpu, rng.uniform(40, 60, n_ticks)))
    series.append(("gpu.mem_used_bytes", gpu, np.full(n_ticks, 61e9)))
    series.append(("gpu.mem_total_bytes", gpu, np.full(n_ticks, 80e9)))
    series.append(("gpu.power_w", gpu, rng.normal(550, 20, n_ticks)))
    series.append(("gpu.energy_j", gpu, growth * 55.0))
    series.append(("gpu.temp_c", gpu, rng.normal(65, 1, n_ticks)))
    series.append(("gpu.sm_clock_mhz", gpu, np.full(n_ticks, 1980.0)))
    series.append(("gpu.mem_clock_mhz", gpu, np.full(n_ticks, 2619.0)))
    series.append(("gpu.pcie_tx_bytes_s", gpu, rng.uniform(1e8, 2e8, n_ticks)))
    series.append(("gpu.pcie_rx_bytes_s", gpu, rng.uniform(5e8, 1e9, n_ticks)))
    series.append(("torch.allocated_bytes", f"cuda:{local}", np.full(n_ticks, 58e9)))
    series.append(("torch.reserved_bytes", f"cuda:{local}", np.full(n_ticks, 60e9)))
    if local == 0:
        for c in range(cores):
            series.append(("cpu.core_pct", str(c), rng.uniform(60, 100, n_ticks)))
        series.append(("cpu.system_pct", "", rng.uniform(70, 95, n_ticks)))
        series.append(("cpu.iowait_pct", "", rng.uniform(0, 2, n_ticks)))
        series.append(("cpu.runnable", "", rng.integers(8, 20, n_ticks).astype(np.float64)))
        series.append(("mem.used_bytes", "", np.full(n_ticks, 60e9)))
        series.append(("mem.available_bytes", "", np.full(n_ticks, 450e9)))
        for nic in nics:
            series.append(("net.bytes_sent", nic, growth * GRAD_BYTES * 1.75))
            series.append(("net.bytes_recv", nic, growth * GRAD_BYTES * 1.75))
            series.append(("net.packets_sent", nic, growth * 60_000))
            series.append(("net.packets_recv", nic, growth * 60_000))
        series.append(("disk.read_bytes", "nvme0n1", growth * 4.9e6 * 8))
        series.append(("disk.write_bytes", "nvme0n1", growth * 1e4))
    n = len(series)
    return schema.SampleRow(
        ts_ns=np.tile(ts, n),
        metric=np.repeat(np.array([m for m, _, _ in series], dtype=object), n_ticks),
        device=np.repeat(np.array([d for _, d, _ in series], dtype=object), n_ticks),
        value=np.concatenate([v for _, _, v in series]))


def _memory(rng, first_step, n_steps, step_ns):
    steps = np.arange(first_step, first_step + n_steps, dtype=np.int64)
    w = np.full(n_steps, GRAD_BYTES, dtype=np.int64)
    act = (rng.normal(5.2e9, 1e7, n_steps)).astype(np.int64)
    other = np.full(n_steps, 400_000_000, dtype=np.int64)
    total = 3 * w + act + other
    return schema.MemoryRow(
        step=steps, ts_ns=T0_NS + (steps + 1) * step_ns, device=np.full(n_steps, "cuda:0", dtype=object), weights=w,
        gradients=w, optimizer_state=2 * w, activations=act, other=other, total=total, peak=total + 100_000_000)


# --- rollups, vectorized: the rows tbdprof.rollup.Rollups makes, without a Python loop over rows ---------------

_LOG_RATIO = math.log(schema.ROLLUP_RATIO)  # as schema.duration_bucket computes it
_NO_INTERVAL = np.iinfo(np.int64).min  # Rollups' latest interval before any (-inf)


def duration_buckets(ns: np.ndarray) -> np.ndarray:
    """``schema.duration_bucket`` of each duration. numpy's log may differ from ``math.log`` in the last bit,
    so where the quotient lies within rounding of a bucket edge the scalar function decides."""
    q = np.log(np.maximum(ns, 2).astype(np.float64)) / _LOG_RATIO
    b = q.astype(np.int64)
    near = np.flatnonzero((np.abs(q - np.rint(q)) < 1e-9) & (ns > 1))
    b[near] = [schema.duration_bucket(int(x)) for x in ns[near]]
    b[ns <= 1] = 0
    return b


def _codes(column: pa.ChunkedArray, vocab: dict[str, int]) -> np.ndarray:
    """A string column as codes into ``vocab``, which grows by the strings it has not seen."""
    parts = [np.empty(0, np.int64)]
    for chunk in column.chunks:
        chunk = chunk if pa.types.is_dictionary(chunk.type) else chunk.dictionary_encode()
        lut = np.array([vocab.setdefault(s, len(vocab)) for s in chunk.dictionary.to_pylist()], dtype=np.int64)
        parts.append(lut[chunk.indices.to_numpy(zero_copy_only=False)])
    return np.concatenate(parts)


def _ints(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A nullable integer column as (values with 0 for null, valid)."""
    return pc.fill_null(column, 0).to_numpy(), pc.is_valid(column).to_numpy()


def _span_columns(tables: list[pa.Table], vocab: dict[str, int], every_ns: int) -> dict[str, np.ndarray]:
    """The rolled-up spans of all chunks (kinds in ``rollup.SPAN_KINDS``) as arrays, with each one's chunk and
    interval: its step's end's when that step's span is in the same chunk (``summarize_spans``), else its own end's."""
    kept = np.array([vocab.setdefault(k, len(vocab)) for k in rollup.SPAN_KINDS])
    step_kind = vocab[schema.KIND_STEP]
    cols: dict[str, list] = {}
    for i, t in enumerate(tables):
        c = {"kind": _codes(t.column("kind"), vocab), "name": _codes(t.column("name"), vocab)}
        c |= {f: t.column(f).to_numpy() for f in ("step", "start_ns", "end_ns")}
        for f in ("bytes", "items", "units"):
            c[f], c[f + "_valid"] = _ints(t.column(f))
        own = c["end_ns"] - c["end_ns"] % every_ns
        is_step = c["kind"] == step_kind
        steps, last = np.unique(c["step"][is_step][::-1], return_index=True)  # a step's last span wins, as in a dict
        step_interval = own[is_step][::-1][last]
        at = np.searchsorted(steps, c["step"])
        found = at < len(steps)
        found[found] = steps[at[found]] == c["step"][found]
        found &= c["step"] >= 0
        c["interval"] = own.copy()
        c["interval"][found] = step_interval[at[found]]
        c["chunk"] = np.full(len(own), i)
        keep = np.isin(c["kind"], kept)
        for f, v in c.items():
            cols.setdefault(f, []).append(v[keep])
    return {f: np.concatenate(v) for f, v in cols.items()}


def _sample_columns(tables: list[pa.Table], vocab: dict[str, int], every_ns: int) -> dict[str, np.ndarray]:
    """The readings of all chunks but NaN as arrays, with each one's chunk, interval, kind (gauge or counter) and
    amount: the reading (a gauge) or its increase over the series' previous reading, 0 for the first (a counter)."""
    cols: dict[str, list] = {}
    for i, t in enumerate(tables):
        c = {"metric": _codes(t.column("metric"), vocab), "device": _codes(t.column("device"), vocab),
             "ts_ns": t.column("ts_ns").to_numpy(), "value": t.column("value").to_numpy()}
        c["chunk"] = np.full(len(c["value"]), i)
        keep = ~np.isnan(c["value"])
        for f, v in c.items():
            cols.setdefault(f, []).append(v[keep])
    c = {f: np.concatenate(v) for f, v in cols.items()}
    for kind in (schema.ROLLUP_GAUGE, schema.ROLLUP_COUNTER):
        vocab.setdefault(kind, len(vocab))
    is_counter = np.array([bool(m and m.counter) for m in map(schema.METRICS.get, vocab)])[c["metric"]]
    c["kind"] = np.where(is_counter, vocab[schema.ROLLUP_COUNTER], vocab[schema.ROLLUP_GAUGE])
    c["interval"] = c["ts_ns"] - c["ts_ns"] % every_ns
    c["amount"] = c["value"].copy()
    series = c["metric"] * len(vocab) + c["device"]
    at = np.flatnonzero(is_counter)
    at = at[np.argsort(series[at], kind="stable")]  # each counter's readings together, in row order
    v, series = c["value"][at], series[at]
    prev = np.concatenate([v[:1], v[:-1]])
    first = np.concatenate([[True], series[1:] != series[:-1]])
    prev[first] = v[first]  # so its first reading adds value - value, as Rollups computes it
    c["amount"][at] = v - prev
    return c


def _memory_columns(tables: list[pa.Table], vocab: dict[str, int], every_ns: int) -> dict[str, np.ndarray]:
    """The memory rows of all chunks as readings, one per rolled-up column (``summarize_memory``): metric the
    column, kind ``ROLLUP_MEMORY``, amount the value; in each column's readings the rows' order."""
    cols: dict[str, list] = {}
    for i, t in enumerate(tables):
        device, ts = _codes(t.column("device"), vocab), t.column("ts_ns").to_numpy()
        for name in rollup.MEMORY_COLUMNS:
            c = {"metric": np.full(len(ts), vocab.setdefault(name, len(vocab))), "device": device, "ts_ns": ts,
                 "value": t.column(name).to_numpy().astype(np.float64), "chunk": np.full(len(ts), i)}
            for f, v in c.items():
                cols.setdefault(f, []).append(v)
    c = {f: np.concatenate(v) for f, v in cols.items()}
    c["kind"] = np.full(len(c["ts_ns"]), vocab.setdefault(schema.ROLLUP_MEMORY, len(vocab)))
    c["interval"] = c["ts_ns"] - c["ts_ns"] % every_ns
    c["amount"] = c["value"]
    return c


def _groups(*keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order that sorts rows by ``keys`` (ints of a small range, most significant first; stable) and where
    each group of equal keys starts in it."""
    key = np.zeros(len(keys[0]), np.int64)
    for k in keys:
        low = int(k.min(initial=0))
        key = key * (int(k.max(initial=0)) - low + 1) + (k - low)
    order = np.argsort(key, kind="stable")
    key = key[order]
    return order, np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]])) if len(key) else np.empty(0, np.int64)


def _sequential_sum(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per group (rows from each start to the next) the sum of ``x`` added one by one from 0.0, as Python's
    ``+=`` in ``ValueStats`` does; numpy's own sums are pairwise and round differently, its cumsum is sequential."""
    lengths = np.diff(starts, append=len(x))
    group = np.repeat(np.arange(len(starts)), lengths)
    table = np.zeros((int(lengths.max(initial=0)) + 1, len(starts)))
    table[np.arange(len(x)) - starts[group] + 1, group] = x
    return np.cumsum(table, axis=0)[-1]


def _span_rows(c: dict[str, np.ndarray], emit: np.ndarray, words: list[str], every_ns: int) -> list[tuple[int, tuple]]:
    """(chunk it is written after, RollupRow) per (chunk, interval, kind, name) of the spans."""
    interval = c["interval"] // every_ns
    order, starts = _groups(emit, interval, c["kind"], c["name"])
    if not len(starts):
        return []
    first = order[starts]
    count = np.diff(starts, append=len(order))
    dur = c["end_ns"] - c["start_ns"]
    red = {f: u.reduceat(v[order], starts).tolist()
           for f, u, v in (("start", np.minimum, c["start_ns"]), ("end", np.maximum, c["end_ns"]), ("min", np.minimum, dur),
                           ("max", np.maximum, dur), ("first", np.minimum, c["step"]), ("last", np.maximum, c["step"]))}
    total = np.add.reduceat(dur[order], starts)
    opt = {f: [s if h else None for s, h in zip(np.add.reduceat(c[f][order], starts).tolist(),
                                                 np.logical_or.reduceat(c[f + "_valid"][order], starts).tolist())]
           for f in ("bytes", "items", "units")}  # null where no span of the group has one
    bucket = duration_buckets(dur[order])
    n_buckets = int(bucket.max()) + 1
    group = np.repeat(np.arange(len(starts)), count)
    cells, cell_count = np.unique(group * n_buckets + bucket, return_counts=True)
    cut = np.searchsorted(cells // n_buckets, np.arange(1, len(starts)))
    buckets = [b.tolist() for b in np.split(cells % n_buckets, cut)]
    counts = [n.tolist() for n in np.split(cell_count, cut)]
    cols = zip(emit[first].tolist(), c["interval"][first].tolist(), c["kind"][first].tolist(), c["name"][first].tolist(),
               red["start"], red["end"], count.tolist(), total.tolist(), red["min"], red["max"], opt["bytes"],
               opt["items"], opt["units"], red["first"], red["last"], buckets, counts)
    return [(e, schema.RollupRow(iv, words[k], words[n], "", *rest)) for e, iv, k, n, *rest in cols]


def _value_rows(c: dict[str, np.ndarray], emit: np.ndarray, words: list[str], every_ns: int) -> list[tuple[int, tuple]]:
    """(chunk it is written after, RollupRow) per (chunk, interval, kind, metric, device) of the readings."""
    interval = c["interval"] // every_ns
    # the writer sums each chunk's readings, then adds an open interval's chunk sums: rows in (key, chunk) order
    order, parts = _groups(emit, interval, c["kind"], c["metric"], c["device"], c["chunk"])
    if not len(parts):
        return []
    part_sum = _sequential_sum(c["amount"][order], parts)
    part = order[parts]
    _, starts = _groups(emit[part], interval[part], c["kind"][part], c["metric"][part], c["device"][part])
    total = _sequential_sum(part_sum, starts)
    starts = parts[starts]
    first = order[starts]
    red = [u.reduceat(c[f][order], starts).tolist()
           for u, f in ((np.minimum, "ts_ns"), (np.maximum, "ts_ns"), (np.minimum, "value"), (np.maximum, "value"))]
    cols = zip(emit[first].tolist(), c["interval"][first].tolist(), c["kind"][first].tolist(), c["metric"][first].tolist(),
               c["device"][first].tolist(), red[0], red[1], np.diff(starts, append=len(order)).tolist(), total.tolist(),
               red[2], red[3])
    return [(e, schema.RollupRow(iv, words[k], words[m], words[d], start, end, n, value_sum=s, value_min=lo, value_max=hi))
            for e, iv, k, m, d, start, end, n, s, lo, hi in cols]


def rollup_rows(spans: list[pa.Table], samples: list[pa.Table], memory: list[pa.Table],
                every_ns: int = schema.ROLLUP_INTERVAL_NS) -> list[list[schema.RollupRow]]:
    """What ``tbdprof.rollup.Rollups`` returns from ``take`` after each chunk (the last ``final``) when fed, chunk
    by chunk, one rank's spans, samples and memory rows, as the writer does: the same rows in the same order,
    floats to the bit.

    An interval is written after the first chunk that has seen a later one, as the writer writes it at the first
    flush that has: one that straddles two chunks (the run does not start on a minute, and a chunk's last step
    can end in the next) is one row, in the second chunk's file."""
    vocab: dict[str, int] = {"": 0}
    sp = _span_columns(spans, vocab, every_ns)
    sa, mem = _sample_columns(samples, vocab, every_ns), _memory_columns(memory, vocab, every_ns)
    sa = {f: np.concatenate([v, mem[f]]) for f, v in sa.items()}  # keys of their own (kind memory): rolled up alike
    latest = np.full(len(spans), _NO_INTERVAL)
    for c in (sp, sa):
        np.maximum.at(latest, c["chunk"], c["interval"])
    latest = np.maximum.accumulate(latest)

    def emit(c):  # the first chunk, from the row's own on, that has seen a later interval; else the last (final)
        return np.minimum(np.maximum(c["chunk"], np.searchsorted(latest, c["interval"], side="right")), len(spans) - 1)

    words = list(vocab)
    out: list[list] = [[] for _ in spans]
    for e, row in _span_rows(sp, emit(sp), words, every_ns) + _value_rows(sa, emit(sa), words, every_ns):
        out[e].append(row)
    return [sorted(rows, key=lambda r: r[:4]) for rows in out]


# --- the run ---------------------------------------------------------------------------------------------------


def _write_rank(out: Path, rank: int, ranks: int, hours: float, ranks_per_host: int, steps_per_s: float,
                sample_hz: float, file_minutes: float, seed: int, slow_ranks, slow_hosts, rollups: bool) -> None:
    """Write one rank's folder: its own random stream (seeded by ``seed`` and ``rank``), so ranks are independent."""
    duration_s = hours * 3600
    step_ns, tick_ns = int(1e9 / steps_per_s), int(1e9 / sample_hz)
    chunk_s = file_minutes * 60
    host, local = f"node{rank // ranks_per_host:03d}", rank % ranks_per_host
    rdir = store.rank_dir(out, host, rank)
    rdir.mkdir(parents=True)
    rng = np.random.default_rng((seed, rank))
    slow = (SLOW_RANK if rank in slow_ranks else {}) | (SLOW_HOST if host in slow_hosts else {})
    n_files = int(np.ceil(duration_s / chunk_s))
    kept: dict[str, list[pa.Table]] = {schema.SPANS: [], schema.SAMPLES: [], schema.MEMORY: []}
    for i in range(n_files):
        t_a, t_b = i * chunk_s, min(duration_s, (i + 1) * chunk_s)
        first_step, n_steps = int(t_a * steps_per_s), int((t_b - t_a) * steps_per_s)
        first_tick, n_ticks = int(t_a * sample_hz), int((t_b - t_a) * sample_hz)
        parts = {
            schema.SPANS: _spans(rng, rank, first_step, n_steps, step_ns, slow),
            schema.SAMPLES: _samples(rng, local, first_tick, n_ticks, tick_ns, 16, ("eth0", "ib0")),
            schema.MEMORY: _memory(rng, first_step, n_steps, step_ns),
        }
        for table, columns in parts.items():
            data = columns_to_table(table, columns, schema.table_schema(table, out.name, rank, host))
            pq.write_table(data, rdir / _segment(table, i), **PARQUET_OPTIONS)
            if rollups:
                kept[table].append(data)
    if rollups:
        sch = schema.table_schema(schema.ROLLUPS, out.name, rank, host)
        per_chunk = rollup_rows(kept[schema.SPANS], kept[schema.SAMPLES], kept[schema.MEMORY])
        whole = n_files - n_files % ROLLUP_FILE_CHUNKS  # chunks in whole files; each later one a file of its own
        files = [range(a, a + ROLLUP_FILE_CHUNKS) for a in range(0, whole, ROLLUP_FILE_CHUNKS)]
        for chunks in files + [range(i, i + 1) for i in range(whole, n_files)]:
            rows = [r for i in chunks for r in per_chunk[i]]
            if rows:
                pq.write_table(columns_to_table(schema.ROLLUPS, zip(*rows), sch),
                               rdir / _segment(schema.ROLLUPS, chunks[0], chunks[-1]), **PARQUET_OPTIONS)
    store.write_json_atomic(rdir / schema.RANK_FILE, {
        "schema_version": schema.SCHEMA_VERSION, "run_id": out.name, "rank": rank, "world_size": ranks,
        "local_rank": local, "local_world_size": ranks_per_host, "launcher": "synthetic", "host": host,
        "status": "complete", "start_ns": T0_NS, "end_ns": T0_NS + int(duration_s * 1e9), "warmup_steps": 2,
        "sample_hz": sample_hz, "steps": int(duration_s * steps_per_s),
        "clock": {"start": {"offset_ns": 0, "uncertainty_ns": 20_000, "at_ns": T0_NS, "rounds": 16}},
        "env": {"python": "3.11.7", "torch": "2.13.0", "env": {"OMP_NUM_THREADS": "8"}},
        "metadata": {"workload": "resnet50", "batch_size": 32, "global_batch_size": 32 * ranks, "params": 25_557_032},
    })


def _segment(table: str, first: int, last: int | None = None) -> str:
    """The range file of chunks ``first`` to ``last`` (default: just ``first``), as compaction names it (100
    flushes a chunk)."""
    return store.segment_name(table, first * 100 + 1, (first if last is None else last) * 100 + 100)


def generate(out: Path, ranks: int = 64, hours: float = 1.0, ranks_per_host: int = 8, steps_per_s: float = 10.0,
             sample_hz: float = 10.0, file_minutes: float = 10, seed: int = 0, slow_ranks=(), slow_hosts=(),
             rollups: bool = True, jobs: int = 1) -> Path:
    """Write the synthetic run into ``out`` (must not exist) and return it. Ranks in ``slow_ranks`` spend
    ``SLOW_RANK`` longer in a phase each step, every rank of the hosts in ``slow_hosts`` ``SLOW_HOST``.
    ``rollups``: table ``rollups`` too, the rows the writer's ``Rollups`` makes (:func:`rollup_rows`).
    ``jobs``: ranks written by that many processes at once; the files are the same whatever it is."""
    out = Path(out)
    out.mkdir(parents=True)
    store.write_json_atomic(out / schema.RUN_FILE, {
        "run_id": out.name, "schema_version": schema.SCHEMA_VERSION, "world_size": ranks, "launcher": "synthetic",
        "workload": "resnet50", "preset": "full", "status": "complete", "profiled": True,
    })
    write = functools.partial(_write_rank, out, ranks=ranks, hours=hours, ranks_per_host=ranks_per_host,
                              steps_per_s=steps_per_s, sample_hz=sample_hz, file_minutes=file_minutes, seed=seed,
                              slow_ranks=tuple(slow_ranks), slow_hosts=tuple(slow_hosts), rollups=rollups)
    if jobs <= 1:
        for rank in range(ranks):
            write(rank)
    else:
        with multiprocessing.Pool(min(jobs, ranks)) as pool:
            for _ in pool.imap_unordered(write, range(ranks)):
                pass
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="synth.py", description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=64)
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--ranks-per-host", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slow-rank", type=int, action="append", default=[], help="plant a slow rank (forward); repeatable")
    p.add_argument("--slow-host", action="append", default=[], help="plant a slow host, e.g. node003 (data wait); repeatable")
    p.add_argument("--no-rollups", dest="rollups", action="store_false",
                   help="leave table rollups out (the writer always writes it)")
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="ranks written in parallel (default: one per CPU)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.ranks < 1 or args.hours <= 0 or args.ranks_per_host < 1:
        print("synth.py: error: --ranks, --hours and --ranks-per-host must be positive", file=sys.stderr)
        return 2
    if Path(args.out).exists():
        print(f"synth.py: error: {args.out} already exists", file=sys.stderr)
        return 2
    generate(Path(args.out), args.ranks, args.hours, args.ranks_per_host, seed=args.seed, slow_ranks=args.slow_rank,
             slow_hosts=args.slow_host, rollups=args.rollups, jobs=args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

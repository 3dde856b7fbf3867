"""The synthetic store's rollups (tests/perf/synth.py, computed column-wise) are the rows the writer's own
``tbdprof.rollup.Rollups`` makes from the same spans, samples and memory rows, file by file, floats to the bit."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tbdprof import schema, store
from tbdprof.rollup import Rollups
from tbdprof.writer import columns_to_table

_spec = importlib.util.spec_from_file_location("synth", Path(__file__).parents[1] / "perf" / "synth.py")
synth = sys.modules["synth"] = importlib.util.module_from_spec(_spec)  # importable by name: jobs > 1 pickles its functions
_spec.loader.exec_module(synth)

MINUTE_NS = schema.ROLLUP_INTERVAL_NS


def _rows(path: Path) -> list[tuple]:
    return [tuple(r.values()) for r in pq.read_table(path).to_pylist()] if path.exists() else []


def test_store_rollups_are_the_writers_file_by_file(tmp_path):
    # one rank per host (both record host metrics), a slow rank and a slow host; 30 s chunks: minute intervals
    # straddle chunks (open intervals carry over, their sums merge), and 8 chunks make one rollups file of the
    # first 6 (as the writer merges six ten-minute files into an hour's) and one each for the last 2
    run = synth.generate(tmp_path / "run", ranks=2, hours=0.06, ranks_per_host=1, file_minutes=0.5, slow_ranks=[1],
                         slow_hosts=["node000"])
    chunk_ns = MINUTE_NS // 2
    for rdir in sorted(run.glob("host=*/rank=*")):
        chunks = sorted(rdir.glob("spans-*.parquet"))
        files = {store.parse_segment(p.name)[1:]: p for p in rdir.glob("rollups-*.parquet")}
        assert len(chunks) == 8 and sorted(files) == [(1, 600), (601, 700), (701, 800)]
        writer, want, straddled = Rollups(), {}, 0
        for i, spans in enumerate(chunks):
            for table in (schema.SPANS, schema.SAMPLES, schema.MEMORY):  # in the writer's order
                writer.add(table, _rows(rdir / spans.name.replace(schema.SPANS, table)))
            rows = writer.take(final=i == len(chunks) - 1)
            first, last = store.parse_segment(spans.name)[1:]
            (file,) = [k for k in files if k[0] <= first and last <= k[1]]
            want.setdefault(file, []).extend(tuple(r) for r in rows)
            chunk_start = synth.T0_NS + i * chunk_ns
            straddled += sum(r.kind in (schema.ROLLUP_GAUGE, schema.ROLLUP_COUNTER, schema.ROLLUP_MEMORY)
                             and r.start_ns < chunk_start <= r.end_ns for r in rows)  # readings of two chunks merged
        for file, path in files.items():
            assert _rows(path) == want[file], (rdir.name, file)
        assert {r[1] for r in want[(1, 600)]} == {schema.KIND_STEP, schema.KIND_PHASE, schema.KIND_COMM, schema.ROLLUP_GAUGE,
                                                  schema.ROLLUP_COUNTER, schema.ROLLUP_MEMORY}
        assert straddled > 0


def test_edge_rows_are_the_writers():
    # NaN readings, an unknown metric, a counter across chunks, an interval open across chunks and one written
    # again for a reading that came late; spans without a step, horovod spans (not rolled up), phases whose step
    # is in the other chunk, a step span seen twice, durations of 0, 1 and 2 ns; memory rows in one chunk only
    t0 = 1_000 * MINUTE_NS
    span_chunks = [
        [schema.SpanRow(0, "step", schema.KIND_STEP, t0, t0 + 5), schema.SpanRow(0, "forward", schema.KIND_PHASE, t0, t0 + 1),
         schema.SpanRow(-1, "eval", schema.KIND_MARK, t0 + 2, t0 + 2), schema.SpanRow(1, "forward", schema.KIND_PHASE, t0, t0 + 2),
         schema.SpanRow(3, "ALLREDUCE|w", schema.KIND_HOROVOD, t0, t0 + 9)],
        [schema.SpanRow(1, "step", schema.KIND_STEP, t0, t0 + MINUTE_NS), schema.SpanRow(1, "step", schema.KIND_STEP, t0, t0 + 7),
         schema.SpanRow(1, "allreduce", schema.KIND_COMM, t0 + 1, t0 + 4, 100), schema.SpanRow(0, "h2d", schema.KIND_PHASE, t0, t0 + 3)],
    ]
    sample_chunks = [
        [schema.SampleRow(t0, "net.bytes_sent", "eth0", 10.0), schema.SampleRow(t0 + 1, "net.bytes_sent", "eth0", math.nan),
         schema.SampleRow(t0 + 2, "custom.thing", "", 0.1), schema.SampleRow(t0 + 3, "cpu.process_pct", "", math.nan),
         schema.SampleRow(t0 + MINUTE_NS + 2, "net.bytes_sent", "eth0", 12.0)],
        [schema.SampleRow(t0 + MINUTE_NS + 5, "net.bytes_sent", "eth0", 25.5), schema.SampleRow(t0 + 3, "custom.thing", "", 0.2),
         schema.SampleRow(t0 + MINUTE_NS + 1, "net.bytes_sent", "eth1", 7.0)],
    ]
    memory_chunks = [[schema.MemoryRow(0, t0 + 5, "cuda:0", 10, 10, 20, 7, 3, 50, 60),
                      schema.MemoryRow(1, t0 + MINUTE_NS + 9, "cuda:0", 10, 10, 20, 9, 1, 50, 70)], []]
    chunks = {schema.SPANS: span_chunks, schema.SAMPLES: sample_chunks, schema.MEMORY: memory_chunks}
    tables = {t: [columns_to_table(t, zip(*rows) if rows else [[]] * len(schema.TABLES[t]), schema.TABLES[t]) for rows in c]
              for t, c in chunks.items()}
    writer, want = Rollups(), []
    for i in range(2):
        for table, c in chunks.items():
            writer.add(table, c[i])
        want.append(writer.take(final=i == 1))
    assert synth.rollup_rows(tables[schema.SPANS], tables[schema.SAMPLES], tables[schema.MEMORY]) == want
    assert {r[:4] for r in want[0]} & {r[:4] for r in want[1]}  # interval t0 closed after chunk 0, written again


def test_duration_buckets_at_every_edge():
    edges = np.array([round(schema.ROLLUP_RATIO ** b) for b in range(1, 1400)])
    ns = np.concatenate([[0, 1, 2, 3], edges - 1, edges, edges + 1])
    assert synth.duration_buckets(ns).tolist() == [schema.duration_bucket(int(x)) for x in ns]


def test_files_are_the_same_whatever_the_jobs(tmp_path):
    one = synth.generate(tmp_path / "one" / "run", ranks=3, hours=0.01, jobs=1, slow_ranks=[2])
    two = synth.generate(tmp_path / "two" / "run", ranks=3, hours=0.01, jobs=2, slow_ranks=[2])
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert len(files) == 1 + 3 * 5  # run.json; per rank: rank.json and spans, samples, memory, rollups
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)

"""Rollups at write time (tbdprof/rollup.py) and read back (analysis/rollups.py): merged rollups give the raw figures."""

import logging
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from tbdprof import schema, store
from tbdprof.analysis import load, rollups
from tbdprof.rollup import Rollups, summarize_samples, summarize_spans
from tbdprof.writer import Buffers, SegmentWriter

MIN = schema.ROLLUP_INTERVAL_NS
T0 = 29_666_667 * MIN  # a whole minute, in 2026


def _nearest_rank(values, q):
    s = sorted(values)
    return s[max(1, math.ceil(q * len(s))) - 1]


def _record(rank_dir, flushes):
    """Each item of ``flushes``: (spans, samples) appended as plain tuples, as the hot paths do, then one flush."""
    buf = Buffers()
    w = SegmentWriter(rank_dir, buf, {t: schema.table_schema(t, "r", 0, "h") for t in schema.TABLES}, interval_s=60)
    for spans, samples in flushes:
        buf.queues[schema.SpanRow].extend(spans)
        buf.queues[schema.SampleRow].extend(samples)
        w.flush()
    w.stop()
    return w


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Two ranks, 3000 steps each over about 5 minutes with lognormal step times, written in 7 s flushes."""
    run_dir = tmp_path_factory.mktemp("rollups") / "run"
    rng = np.random.default_rng(7)
    raw = {}
    for rank in (0, 1):
        rdir = store.rank_dir(run_dir, "h", rank)
        rdir.mkdir(parents=True)
        store.write_json_atomic(rdir / schema.RANK_FILE, {"rank": rank, "world_size": 2})
        dur = (rng.lognormal(math.log(100e6), 0.3 + 0.2 * rank, 3000)).astype(np.int64)
        t, spans = T0, []
        for step, d in enumerate(dur):
            fwd = int(d) // 3
            spans.append((step, schema.PHASE_FORWARD, schema.KIND_PHASE, t, t + fwd, None, None, None))
            spans.append((step, schema.COMM_ALLREDUCE, schema.KIND_COMM, t + fwd, t + 2 * fwd, 4096, None, None))
            spans.append((step, "step", schema.KIND_STEP, t, t + int(d), None, 8, None))
            t += int(d)
        spans.append((-1, schema.MARK_EVAL, schema.KIND_MARK, t, t + 5 * 10**9, None, None, None))
        flushes, i = [], 0
        for edge in range(T0 + 7 * 10**9, t + 14 * 10**9, 7 * 10**9):  # one flush per 7 s of spans
            j = i
            while j < len(spans) and spans[j][4] <= edge:
                j += 1
            flushes.append((spans[i:j], [(edge, "net.bytes_sent", "eth0", 1000.0 * (edge - T0) / 1e9 + rank),
                                         (edge, "cpu.process_pct", "", 50.0 + (edge // 10**9) % 7)]))
            i = j
        raw[rank] = {"steps": dur, "spans": spans, "samples": [s for _, ss in flushes for s in ss]}
        _record(rdir, flushes)
    return run_dir, raw


def test_merged_rollups_give_the_raw_counts_sums_and_quantiles_within_one_percent(recorded):
    run_dir, raw = recorded
    fig = rollups.whole_run(load.open_run(run_dir))
    every = np.concatenate([raw[r]["steps"] for r in raw])
    for rank, r in raw.items():
        got = fig["ranks"][rank]
        assert (got["count"], got["sum_ns"], got["min_ns"], got["max_ns"], got["items"]) == (
            len(r["steps"]), int(r["steps"].sum()), int(r["steps"].min()), int(r["steps"].max()), 8 * len(r["steps"]))
    for name, q in rollups.QUANTILES.items():
        for values, got in [(raw[0]["steps"], fig["ranks"][0]), (raw[1]["steps"], fig["ranks"][1]), (every, fig["steps"])]:
            want = _nearest_rank(values, q)
            assert abs(got[f"{name}_ns"] - want) <= 0.01 * want, (name, got[f"{name}_ns"], want)
    fwd = sum(s[4] - s[3] for r in raw.values() for s in r["spans"] if s[1] == schema.PHASE_FORWARD)
    assert fig["phases"][schema.PHASE_FORWARD]["sum_ns"] == fwd
    assert fig["comm"][schema.COMM_ALLREDUCE]["bytes"] == 4096 * len(every)
    assert fig["comm"][schema.COMM_ALLREDUCE]["count"] == len(every)


def test_an_interval_is_written_once_it_is_over_and_the_last_at_close(recorded):
    run_dir, raw = recorded
    rdir = store.rank_dir(run_dir, "h", 0)
    files = store.live_segments(sorted(rdir.glob("rollups-*.parquet")))
    rows = [r for p in files for r in pq.read_table(p).to_pylist()]
    steps = [r for r in rows if r["kind"] == schema.KIND_STEP]
    minutes = [r["interval_ns"] for r in steps]
    assert minutes == sorted(set(minutes)) and all(m % MIN == 0 for m in minutes)  # one row per minute: no partials
    assert len(steps) == (raw[0]["spans"][-2][4] // MIN) - T0 // MIN + 1
    # consecutive minutes hold consecutive steps, each step in the minute of its end
    assert [r["first_step"] for r in steps[1:]] == [r["last_step"] + 1 for r in steps[:-1]]
    for r in steps:
        assert r["start_ns"] >= r["interval_ns"] - 10**9 and r["interval_ns"] <= r["end_ns"] < r["interval_ns"] + MIN
    (mark,) = [r for r in rows if r["kind"] == schema.KIND_MARK]
    assert (mark["first_step"], mark["count"], mark["sum_ns"]) == (-1, 1, 5 * 10**9)


def test_phases_go_to_the_interval_of_their_step():
    # the step ends in the next minute; its phase ended in this one
    rows = [(0, "forward", schema.KIND_PHASE, T0 + MIN - 10, T0 + MIN - 5, None, None, None),
            (0, "step", schema.KIND_STEP, T0 + MIN - 20, T0 + MIN + 5, None, 4, None),
            (1, "forward", schema.KIND_PHASE, T0 + MIN + 10, T0 + MIN + 15, None, None, None)]  # its step not here
    assert sorted(summarize_spans(rows)) == [(T0 + MIN, schema.KIND_PHASE, "forward", ""),
                                             (T0 + MIN, schema.KIND_STEP, "step", "")]
    assert summarize_spans(rows)[(T0 + MIN, schema.KIND_PHASE, "forward", "")].count == 2


def test_samples_give_gauges_min_mean_max_and_counter_increases_that_add_up(recorded):
    run_dir, raw = recorded
    run = load.open_run(run_dir)
    counter = run.sql("SELECT sum(value_sum), min(value_min), max(value_max), sum(count) FROM rollups "
                      "WHERE rank = 0 AND kind = ? AND name = 'net.bytes_sent' AND device = 'eth0'", [schema.ROLLUP_COUNTER])[0]
    values = [s[3] for s in raw[0]["samples"] if s[1] == "net.bytes_sent"]
    assert counter == (values[-1] - values[0], values[0], values[-1], len(values))
    gauge = run.sql("SELECT sum(value_sum) / sum(count), min(value_min), max(value_max) FROM rollups "
                    "WHERE rank = 1 AND kind = ? AND name = 'cpu.process_pct'", [schema.ROLLUP_GAUGE])[0]
    values = [s[3] for s in raw[1]["samples"] if s[1] == "cpu.process_pct"]
    assert gauge == pytest.approx((sum(values) / len(values), min(values), max(values)))
    # a counter's increase carries across flushes: the first reading of a flush counts from the last of the one before
    last = {}
    summarize_samples([(T0, "io.read_bytes", "", 100.0)], last)
    (later,) = summarize_samples([(T0 + 2 * MIN, "io.read_bytes", "", 250.0), (T0 + 2 * MIN + 1, "io.read_bytes", "", float("nan"))],
                                 last).values()
    assert (later.sum, later.count) == (150.0, 1)


def test_a_span_late_for_its_interval_gets_a_row_of_its_own_and_readers_add_it(tmp_path):
    early = [(0, "step", schema.KIND_STEP, T0, T0 + 10, None, 1, None), (1, "step", schema.KIND_STEP, T0 + MIN, T0 + MIN + 10, None, 1, None)]
    late = [(0, schema.COMM_ALLREDUCE, schema.KIND_COMM, T0 + 1, T0 + 9, 64, None, None)]
    rdir = store.rank_dir(tmp_path, "h", 0)
    rdir.mkdir(parents=True)
    _record(rdir, [(early, []), (late, [])])
    fig = rollups.whole_run(load.open_run(tmp_path))
    assert fig["ranks"][0]["count"] == 2 and fig["comm"][schema.COMM_ALLREDUCE]["bytes"] == 64


def test_a_row_rollups_cannot_read_stops_them_with_one_warning(caplog):
    r = Rollups()
    with caplog.at_level(logging.WARNING, logger="tbdprof"):
        r.add(schema.SPANS, [(0, "step", schema.KIND_STEP, T0, None, None, None, None)])
        r.add(schema.SPANS, [(1, "step", schema.KIND_STEP, T0, T0 + 5, None, None, None)])
    assert r.failed and len(caplog.records) == 1 and r.take(final=True) == []


def test_a_store_without_rollups_says_so(tmp_path):
    from storebuilder import steps, write_rank

    write_rank(tmp_path, spans=steps(3))
    assert rollups.whole_run(load.open_run(tmp_path)) is None

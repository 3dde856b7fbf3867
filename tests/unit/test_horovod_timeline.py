"""Horovod timeline ingestion on a hand-written timeline in Horovod's exact layout."""

import pyarrow.parquet as pq

from tbdprof import schema, store
from tbdprof.horovod_timeline import SEGMENT, ingest, read_records, timeline_spans
from tbdprof.writer import rows_to_table

ORIGIN_US = 1_700_000_000_000_000
# As Horovod writes it: metadata lines, then records glued by "," after it
# overwrites the closing "]"; tensor pid 1, rank 1 ready before rank 0.
TIMELINE = (
    '[\n{"name": "process_name", "ph": "M", "pid": 0, "args": {"start_time_since_epoch_in_micros":%d}},\n'
    '{"name": "process_sort_index", "ph": "M", "pid": 0, "args": {"sort_index": 0}},\n'
    '{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "allreduce.fc.weight"}},\n'
    '{"name": "process_sort_index", "ph": "M", "pid": 1, "args": {"sort_index": 1}},\n'
    '{"ph": "B", "name": "NEGOTIATE_ALLREDUCE", "ts": 100, "pid": 1},'
    '{"ph": "X", "name": "1", "ts": 110, "pid": 1, "dur": 0},'
    '{"ph": "X", "name": "0", "ts": 150, "pid": 1, "dur": 0},'
    '{"ph": "E", "ts": 151, "pid": 1},'
    '{"ph": "B", "name": "ALLREDUCE", "ts": 160, "pid": 1},'
    '{"ph": "B", "name": "GLOO_ALLREDUCE", "ts": 161, "pid": 1},'
    '{"ph": "E", "ts": 190, "pid": 1},'
    '{"ph": "E", "ts": 200, "pid": 1, "args": {"dtype": "float32", "shape": "[10, 256]"}}]'
) % ORIGIN_US


def _by_name(rows):
    return {name: (start, end, nbytes) for name, start, end, nbytes in rows}


def test_spans_per_tensor_on_rank0_clock_with_readiness_and_bytes():
    records, dropped = read_records(TIMELINE)
    rows, tensors, open_spans = timeline_spans(records)
    assert (dropped, tensors, open_spans) == (0, 1, 0)
    spans = _by_name(rows)
    ns = lambda us: (ORIGIN_US + us) * 1000  # noqa: E731
    assert spans["NEGOTIATE_ALLREDUCE|allreduce.fc.weight"] == (ns(100), ns(151), None)
    # rank 0 was the late one: ready 50 us into the negotiation
    assert spans["READY_RANK_1|allreduce.fc.weight"] == (ns(100), ns(110), None)
    assert spans["READY_RANK_0|allreduce.fc.weight"] == (ns(100), ns(150), None)
    assert spans["GLOO_ALLREDUCE|allreduce.fc.weight"] == (ns(161), ns(190), None)
    assert spans["ALLREDUCE|allreduce.fc.weight"] == (ns(160), ns(200), 10 * 256 * 4)


def test_truncated_file_keeps_complete_records_and_reports_the_rest():
    cut = TIMELINE[: TIMELINE.index('{"ph": "E", "ts": 190') + 12]
    records, dropped = read_records(cut)
    rows, _, open_spans = timeline_spans(records)
    assert dropped == 12
    assert set(_by_name(rows)) == {f"{n}|allreduce.fc.weight" for n in ("NEGOTIATE_ALLREDUCE", "READY_RANK_1", "READY_RANK_0")}
    assert open_spans == 2  # ALLREDUCE and GLOO_ALLREDUCE never ended


def test_ingest_writes_a_spans_segment_with_steps_from_rank0(tmp_path):
    rdir = store.rank_dir(tmp_path, "node0", 0)
    rdir.mkdir(parents=True)
    step = schema.SpanRow(0, schema.KIND_STEP, schema.KIND_STEP, (ORIGIN_US + 90) * 1000, (ORIGIN_US + 300) * 1000, items=8)
    meta = schema.table_schema(schema.SPANS, tmp_path.name, 0, "node0")
    pq.write_table(rows_to_table(schema.SPANS, [step], meta), rdir / store.segment_name(schema.SPANS, 1))
    (tmp_path / "timeline.json").write_text(TIMELINE)

    got = ingest(tmp_path / "timeline.json", tmp_path, "node0")
    assert (got.spans, got.dropped, got.path) == (5, None, rdir / SEGMENT)
    table = pq.read_table(got.path)
    assert table.schema.metadata[schema.META_TABLE] == schema.SPANS.encode()
    assert set(table.column("kind").to_pylist()) == {schema.KIND_HOROVOD}
    assert set(table.column("step").to_pylist()) == {0}


def test_truncated_ingest_says_what_was_dropped(tmp_path):
    (tmp_path / "t.json").write_text(TIMELINE[:-30])
    got = ingest(tmp_path / "t.json", tmp_path, "h")
    assert got.spans == 4 and "trailing bytes" in got.dropped and "1 unfinished spans" in got.dropped

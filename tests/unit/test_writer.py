"""The writer thread: segments, atomic files, failure without harming the caller."""

import logging

import pyarrow.parquet as pq
import pytest

from tbdprof import schema
from tbdprof.writer import Buffers, SegmentWriter, rows_to_table


def _schemas():
    return {t: schema.table_schema(t, "run", 0, "h") for t in schema.TABLES}


def _span(i):
    return schema.SpanRow(i, "forward", schema.KIND_PHASE, 1000 * i, 1000 * i + 500)


def test_rows_to_table_matches_schema_and_metadata():
    rows = [_span(0), schema.SpanRow(1, "step", schema.KIND_STEP, 5, 9, items=4, units=96)]
    table = rows_to_table(schema.SPANS, rows, _schemas()[schema.SPANS])
    assert table.schema.names == schema.TABLES[schema.SPANS].names
    assert table.column("items").to_pylist() == [None, 4] and table.column("units").to_pylist() == [None, 96]
    assert table.to_pylist()[1] == rows[1]._asdict()
    assert table.schema.metadata[schema.META_SCHEMA_VERSION] == str(schema.SCHEMA_VERSION).encode()


def test_each_flush_writes_one_new_segment_per_nonempty_table(tmp_path):
    buf = Buffers()
    w = SegmentWriter(tmp_path, buf, _schemas(), interval_s=60)
    buf.queues[schema.SpanRow].extend(_span(i) for i in range(10))
    w.flush()
    buf.queues[schema.SpanRow].append(_span(10))
    buf.queues[schema.SampleRow].append(schema.SampleRow(1, "cpu.system_pct", "", 5.0))
    w.flush()
    w.flush()  # nothing buffered: no empty files
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["samples-000002.parquet", "spans-000001.parquet", "spans-000002.parquet"]
    assert pq.read_table(tmp_path / "spans-000001.parquet").num_rows == 10
    assert w.rows_written[schema.SPANS] == 11
    assert not any(n.endswith(".tmp") for n in names)


def test_thread_flushes_periodically_and_on_stop(tmp_path):
    buf = Buffers()
    w = SegmentWriter(tmp_path, buf, _schemas(), interval_s=0.05)
    w.start()
    buf.queues[schema.SpanRow].append(_span(1))
    for _ in range(100):
        if list(tmp_path.glob("spans-*.parquet")):
            break
        import time

        time.sleep(0.02)
    buf.queues[schema.SpanRow].append(_span(2))
    w.stop()
    total = sum(pq.read_table(p).num_rows for p in tmp_path.glob("spans-*.parquet"))
    assert total == 2
    assert not w.is_alive()


def test_unwritable_folder_stops_recording_with_one_warning(tmp_path, caplog):
    target = tmp_path / "gone"
    target.mkdir()
    buf = Buffers()
    w = SegmentWriter(target, buf, _schemas(), interval_s=60)
    target.rmdir()
    with caplog.at_level(logging.WARNING, logger="tbdprof"):
        buf.queues[schema.SpanRow].append(_span(1))
        w.flush()
        buf.queues[schema.SpanRow].append(_span(2))
        w.flush()
    warnings = [r for r in caplog.records if "recording stopped" in r.getMessage()]
    assert len(warnings) == 1
    assert w.failed and w.rows_dropped == 2
    assert len(buf.queues[schema.SpanRow]) == 0  # drained, so memory does not grow


def test_bad_rows_fail_the_writer_not_the_caller(tmp_path):
    buf = Buffers()
    w = SegmentWriter(tmp_path, buf, _schemas(), interval_s=60)
    buf.queues[schema.SpanRow].append(schema.SpanRow("not-an-int", "x", "phase", 1, 2))
    w.flush()
    assert w.failed
    with pytest.raises(Exception):
        rows_to_table(schema.SPANS, [schema.SpanRow("x", "x", "phase", 1, 2)], _schemas()[schema.SPANS])
    plain = (1, "x", "phase", 1, 2, None, None, None)  # the hot paths' rows: every column, no padding
    assert rows_to_table(schema.SPANS, [_span(0), plain], _schemas()[schema.SPANS]).to_pylist()[1]["kind"] == "phase"
    for bad in (plain[:7], list(plain)):
        with pytest.raises(TypeError):
            rows_to_table(schema.SPANS, [_span(0), bad], _schemas()[schema.SPANS])


def test_segments_are_compacted_into_range_files(tmp_path):
    buf = Buffers()
    w = SegmentWriter(tmp_path, buf, _schemas(), interval_s=60, compaction=(3, 2))
    for i in range(7):
        buf.queues[schema.SpanRow].append(_span(i))
        w.flush()
    names = sorted(p.name for p in tmp_path.glob("spans-*"))
    assert names == ["spans-000001-000006.parquet", "spans-000007.parquet"]  # two range files of 3 merged into one
    w.stop()  # the final flush compacts only when more than one segment is left
    starts = [r for p in sorted(tmp_path.glob("spans-*")) for r in pq.read_table(p).column("step").to_pylist()]
    assert starts == list(range(7))
    assert w.rows_written[schema.SPANS] == 7
    assert w.compaction[schema.ROLLUPS] == (3, 2, 6)  # rollups go on to one file an hour


def test_readers_skip_flushes_a_range_file_covers(tmp_path):
    from tbdprof.store import live_segments, parse_segment

    names = ["spans-000001.parquet", "spans-000002.parquet", "spans-000001-000002.parquet", "spans-000003.parquet",
             "samples-000001.parquet", ".spans-000004.parquet.tmp", "notes.txt", "spans-horovod-timeline.parquet",
             "memory-000001-000012.parquet", "memory-000013-000024.parquet", "memory-000001-000120.parquet",
             "memory-000121-000132.parquet"]  # a crash between a second-level merge and the deletes
    live = [p.name for p in live_segments([tmp_path / n for n in names])]
    assert live == ["spans-000001-000002.parquet", "spans-000003.parquet", "samples-000001.parquet",
                    "spans-horovod-timeline.parquet", "memory-000001-000120.parquet", "memory-000121-000132.parquet"]
    assert parse_segment("memory-000010-000020.parquet") == ("memory", 10, 20)
    assert parse_segment("spans-1.parquet") is None

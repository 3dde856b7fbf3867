"""schema.py is the single source of truth; docs/schema.md must document all of it."""

import re
from pathlib import Path

from tbdprof import schema

DOC = (Path(__file__).resolve().parents[2] / "docs" / "schema.md").read_text()


def _doc_columns(table):
    section = DOC.split(f"## Table `{table}`", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M)


def test_every_table_and_column_is_documented_in_order():
    for table, sch in schema.TABLES.items():
        assert _doc_columns(table)[: len(sch.names)] == sch.names, table


def test_every_metric_is_documented_with_its_unit():
    for m in schema.METRICS.values():
        row = re.search(rf"^\| `{re.escape(m.name)}` \| ([^|]+) \|", DOC, flags=re.M)
        assert row, m.name
        assert row.group(1).strip() == m.unit


def test_metric_scopes_and_names_are_consistent():
    for name, m in schema.METRICS.items():
        assert m.name == name
        assert m.scope in ("process", "host", "device")
        assert name.split(".")[0] in ("cpu", "mem", "net", "disk", "io", "gpu", "torch", "recorder")


def test_segment_footer_is_self_describing():
    md = schema.table_schema(schema.SPANS, "r1", 3, "node7").metadata
    assert md[schema.META_RANK] == b"3" and md[schema.META_HOST] == b"node7" and md[schema.META_RUN_ID] == b"r1"
    assert int(md[schema.META_SCHEMA_VERSION]) == schema.SCHEMA_VERSION


def test_no_partition_column_inside_segments():
    # host and rank come from the hive path; a column of the same name would clash
    for sch in schema.TABLES.values():
        assert "host" not in sch.names and "rank" not in sch.names

"""schema.py is the single source of truth; docs/schema.md must document all of it."""

import re
from pathlib import Path

import pyarrow as pa

from tbdprof import schema

DOC = (Path(__file__).resolve().parents[2] / "docs" / "schema.md").read_text()


def _doc_columns(table):
    """(column, type) of each row of the table's section: type as written, e.g. ``int64, null``."""
    section = DOC.split(f"## Table `{table}`", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \| ([^|]*?) \|", section, flags=re.M)


def _doc_type(field: pa.Field) -> str:
    t = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
    name = {pa.int64(): "int64", pa.float64(): "float64", pa.string(): "string", pa.list_(pa.int32()): "list<int32>"}[t]
    return name + (", null" if field.nullable else "")


def test_every_table_and_column_is_documented_in_order_with_its_type():
    for table, sch in schema.TABLES.items():
        assert _doc_columns(table)[: len(sch.names)] == [(f.name, _doc_type(f)) for f in sch], table


def test_each_table_is_its_row_type():
    # TABLES is derived from the row types: this fails if a table loses its row type, or a
    # nullable trailing column (one a producer may leave off) has no default, or a required one has
    assert list(schema.ROW_TYPES) == list(schema.TABLES)
    for table, row in schema.ROW_TYPES.items():
        fields = list(schema.TABLES[table])
        assert list(row._fields) == [f.name for f in fields], table
        first_optional = max((i + 1 for i, f in enumerate(fields) if not f.nullable), default=0)
        assert row._field_defaults == {f.name: None for f in fields[first_optional:]}, table
    assert schema.SpanRow(0, "forward", schema.KIND_PHASE, 1, 2) == (0, "forward", schema.KIND_PHASE, 1, 2, None, None, None)


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

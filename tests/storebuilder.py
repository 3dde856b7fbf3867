"""Small synthetic tbdprof stores for analysis tests, written with the recorder's own schema and writer helpers."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from tbdprof import schema, store
from tbdprof.writer import rows_to_table

MS = 1_000_000  # ns


def write_segment(run_dir: Path, table: str, rows: list[tuple], rank: int = 0, host: str = "h0", seq: int = 1,
                  run_id: str = "r", version: int | None = None) -> Path:
    """One Parquet segment of ``table`` (rows: its row type's fields in order, trailing ones may be left off);
    ``version`` overrides the footer's schema version."""
    meta = schema.table_schema(table, run_id, rank, host)
    if version is not None:
        meta = meta.with_metadata(meta.metadata | {schema.META_SCHEMA_VERSION: str(version).encode()})
    d = store.rank_dir(run_dir, host, rank)
    d.mkdir(parents=True, exist_ok=True)
    path = d / store.segment_name(table, seq)
    row_type = schema.ROW_TYPES[table]
    pq.write_table(rows_to_table(table, [row_type(*r) for r in rows], meta), path)
    return path


def write_rank(run_dir: Path, rank: int = 0, host: str = "h0", spans=(), samples=(), memory=(), world_size: int = 1,
               warmup_steps: int = 0, env: dict | None = None, metadata: dict | None = None) -> Path:
    """A rank folder: rank.json and one segment per non-empty table."""
    d = store.rank_dir(run_dir, host, rank)
    d.mkdir(parents=True, exist_ok=True)
    store.write_json_atomic(d / schema.RANK_FILE, {
        "rank": rank, "host": host, "world_size": world_size, "warmup_steps": warmup_steps, "status": "complete",
        "env": env or {"python": "3.11", "torch_threads": 1, "env": {"OMP_NUM_THREADS": "1"}},
        "metadata": {"unit": "samples", "batch_size": 4} | (metadata or {}),
    })
    for table, rows in ((schema.SPANS, spans), (schema.SAMPLES, samples), (schema.MEMORY, memory)):
        if rows:
            write_segment(run_dir, table, list(rows), rank, host)
    return d


def write_run(run_dir: Path, world_size: int, **fields) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    store.update_run_json(run_dir, run_id=run_dir.name, world_size=world_size, status="complete", **fields)
    return run_dir


def steps(n: int, step_ms: float = 100, items: int = 4, t0: int = 10**18, phases: dict | None = None) -> list[tuple]:
    """``n`` back-to-back step spans with optional phases {name: (start_ms, end_ms) within the step}."""
    rows = []
    for i in range(n):
        s = t0 + int(i * step_ms * MS)
        rows.append((i, "step", schema.KIND_STEP, s, s + int(step_ms * MS), None, items))
        for name, (a, b) in (phases or {}).items():
            rows.append((i, name, schema.KIND_PHASE, s + int(a * MS), s + int(b * MS), None, None))
    return rows


def gauge(metric: str, values, t0: int = 10**18, every_ms: float = 100, device: str = "") -> list[tuple]:
    return [(t0 + int(i * every_ms * MS), metric, device, float(v)) for i, v in enumerate(values)]

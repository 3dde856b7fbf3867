"""Ingest Horovod's own timeline (``HOROVOD_TIMELINE``) into a run's store.

Horovod's coordinator (rank 0) writes a Chrome trace: one "process" per
tensor, ``B``/``E`` pairs for NEGOTIATE_ALLREDUCE, the op (ALLREDUCE) and
the activities inside it (QUEUE, MEMCPY_IN_FUSION_BUFFER, ...), and ``X``
marks named by rank for when each rank reported the tensor ready. Times are
microseconds since the timeline started; the first record carries that start
on rank 0's wall clock, so the spans land on rank 0's clock, in rank 0's
partition, as kind ``hvd`` (see :mod:`tbdprof.schema`).

Horovod rewrites the closing ``]`` after every record, but a killed job can
leave a file cut mid-record: we keep every complete record and report the
rest (bytes after the last complete record, spans left open) as dropped.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from . import schema, store
from .writer import rows_to_table

SEGMENT = "spans-horovod-timeline" + schema.SEGMENT_SUFFIX
_DTYPE_BYTES = {"FLOAT16": 2, "BFLOAT16": 2, "FLOAT32": 4, "FLOAT64": 8, "INT8": 1, "UINT8": 1,
                "INT16": 2, "UINT16": 2, "INT32": 4, "INT64": 8, "BOOL": 1}


@dataclass
class Ingested:
    """What :func:`ingest` wrote and what it had to drop."""

    spans: int
    tensors: int
    dropped_bytes: int  # trailing bytes after the last complete record
    open_spans: int  # begun but never ended (cut off by the truncation)
    path: Path | None

    @property
    def dropped(self) -> str | None:
        """A one-line description of what was dropped, or None for a complete file."""
        if not (self.dropped_bytes or self.open_spans):
            return None
        return f"dropped {self.dropped_bytes} trailing bytes of a cut record and {self.open_spans} unfinished spans"


def read_records(text: str) -> tuple[list[dict], int]:
    """The complete JSON records of a timeline, and how many bytes after them were unreadable."""
    dec = json.JSONDecoder()
    pos = text.find("[") + 1
    records: list[dict] = []
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return records, 0
        try:
            rec, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError:
            return records, len(text) - pos
        records.append(rec)


def _nbytes(args: dict) -> int | None:
    dims = re.findall(r"\d+", args.get("shape", ""))
    size = _DTYPE_BYTES.get(args.get("dtype", "").upper().removeprefix("HOROVOD_"))
    if size is None or "shape" not in args:
        return None
    n = size
    for d in dims:
        n *= int(d)
    return n


def timeline_spans(records: list[dict]) -> tuple[list[tuple], int, int]:
    """The spans as ``(name, start_ns, end_ns, bytes)``, the tensor count and the spans left open."""
    origin_us = 0
    tensors: dict[int, str] = {}
    stacks: dict[int, list[tuple[str, int]]] = {}
    rows: list[tuple] = []
    for r in records:
        ph, pid, args = r.get("ph"), r.get("pid"), r.get("args") or {}
        if ph == "M":
            if "start_time_since_epoch_in_micros" in args:
                origin_us = int(args["start_time_since_epoch_in_micros"])
            elif r.get("name") == "process_name" and "name" in args:
                tensors[pid] = args["name"]
            continue
        ts_ns = (origin_us + int(r["ts"])) * 1000 if "ts" in r else None
        stack = stacks.setdefault(pid, [])
        tensor = tensors.get(pid, str(pid))
        if ph == "B":
            stack.append((r["name"], ts_ns))
        elif ph == "E" and stack:
            name, start = stack.pop()
            nbytes = _nbytes(args) if not stack else None
            rows.append((f"{name}{schema.HVD_SEP}{tensor}", start, ts_ns, nbytes))
        elif ph == "X" and stack and r.get("name", "").isdigit():
            rows.append((f"{schema.HVD_READY}{r['name']}{schema.HVD_SEP}{tensor}", stack[0][1], ts_ns, None))
    return rows, len(tensors), sum(len(s) for s in stacks.values())


def _step_index(rank_dir: Path):
    """Map a rank-0 timestamp to the step it falls in (-1 outside every step)."""
    steps = sorted(
        (row["start_ns"], row["end_ns"], row["step"])
        for seg in sorted(rank_dir.glob(f"{schema.SPANS}-*{schema.SEGMENT_SUFFIX}"))
        for row in pq.read_table(seg, columns=["step", "kind", "start_ns", "end_ns"]).to_pylist()
        if row["kind"] == schema.KIND_STEP
    )
    starts = [s[0] for s in steps]

    def step_of(ts: int) -> int:
        i = bisect.bisect_right(starts, ts) - 1
        return steps[i][2] if i >= 0 and ts <= steps[i][1] else -1

    return step_of


def ingest(timeline: str | Path, run_dir: str | Path, host: str, rank: int = 0) -> Ingested:
    """Write the spans of ``timeline`` into ``run_dir``'s partition for ``host``/``rank``.

    Steps come from that rank's ``step`` spans already in the store. Returns
    what was written and what was dropped; an empty timeline writes nothing.
    """
    records, dropped_bytes = read_records(Path(timeline).read_text(encoding="utf-8", errors="replace"))
    spans, tensors, open_spans = timeline_spans(records)
    rdir = store.rank_dir(run_dir, host, rank)
    path = None
    if spans:
        step_of = _step_index(rdir)
        rows = [schema.SpanRow(step_of(s), name, schema.KIND_HOROVOD, s, e, b) for name, s, e, b in spans]
        meta = schema.table_schema(schema.SPANS, Path(run_dir).name, rank, host)
        rdir.mkdir(parents=True, exist_ok=True)
        path = rdir / SEGMENT
        tmp = rdir / f".{SEGMENT}.tmp"
        pq.write_table(rows_to_table(schema.SPANS, rows, meta), tmp, compression="zstd")
        tmp.replace(path)
    return Ingested(len(spans), tensors, dropped_bytes, open_spans, path)

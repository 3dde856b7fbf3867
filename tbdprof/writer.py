"""The writer thread: drains the recorder's buffers into rolling Parquet segments.

Each flush writes one new zstd Parquet file per table that has rows, under a
hidden temporary name renamed into place, so a reader only ever sees whole
files and a killed process loses at most the last flush interval. If the disk
fills or the folder vanishes, recording stops with one warning and the rows
are discarded from then on: training is never blocked by the profiler.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from . import schema, store
from .rollup import Rollups

log = logging.getLogger("tbdprof")


# Timestamps grow steadily: delta encoding; floats: byte-stream split helps zstd.
# Compaction in levels: 12 flushes (a minute at 5 s) into a range file, 10 of those into one (ten minutes); the
# rollups, a few kB a minute, on to one file an hour. A reader of a large run opens few files per rank.
COMPACTION = (12, 10)
ROLLUP_COMPACTION = (*COMPACTION, 6)

PARQUET_OPTIONS = dict(
    compression="zstd",
    compression_level=3,
    use_dictionary=["name", "kind", "metric", "device"],
    column_encoding={"start_ns": "DELTA_BINARY_PACKED", "end_ns": "DELTA_BINARY_PACKED", "ts_ns": "DELTA_BINARY_PACKED", "value": "BYTE_STREAM_SPLIT"},
)


class Buffers:
    """One append-only deque per table, of that table's row type (:data:`tbdprof.schema.ROW_TYPES`).

    Every producer appends its rows to ``queues[RowType]``: the one way rows
    reach the store. ``deque.append`` and ``popleft`` are atomic, so the
    training thread, the sampling thread and comm-hook callbacks append
    without a lock while the writer drains.
    """

    def __init__(self) -> None:
        self.queues: dict[type, deque] = {row: deque() for row in schema.ROW_TYPES.values()}

    def drain(self, row_type: type) -> list[tuple]:
        """Take every row buffered for ``row_type``'s table, oldest first."""
        q = self.queues[row_type]
        return [q.popleft() for _ in range(len(q))]


def rows_to_table(table: str, rows: list[tuple], meta_schema: pa.Schema) -> pa.Table:
    """Column-wise conversion of ``table``'s rows to an Arrow table: instances of its row type, or plain
    tuples of all its columns (the hot paths' rows, :mod:`tbdprof.schema`)."""
    row_type = schema.ROW_TYPES[table]
    if not set(map(type, rows)) <= {row_type, tuple} or set(map(len, rows)) != {len(row_type._fields)}:
        raise TypeError(f"rows of table {table} must be {row_type.__name__}s or tuples of its {len(row_type._fields)} columns")
    return columns_to_table(table, zip(*rows), meta_schema)


def columns_to_table(table: str, columns: Iterable, meta_schema: pa.Schema) -> pa.Table:
    """An Arrow table from ``table``'s columns in order (sequences or numpy arrays), string labels dictionary-encoded."""
    arrays = []
    for field, col in zip(schema.TABLES[table], columns):
        if pa.types.is_dictionary(field.type):
            arrays.append(pa.array(col, type=pa.string()).dictionary_encode())
        else:
            arrays.append(pa.array(col, type=field.type))
    return pa.Table.from_arrays(arrays, schema=meta_schema)


class SegmentWriter(threading.Thread):
    """Every ``interval_s`` drain ``buffers`` into new segments in ``directory``."""

    def __init__(
        self,
        directory: Path,
        buffers: Buffers,
        schemas: dict[str, pa.Schema],
        interval_s: float = 5.0,
        before_flush: Iterable[Callable[[], None]] = (),
        compaction: tuple[int, ...] = COMPACTION,
    ):
        super().__init__(name="tbdprof-writer", daemon=True)
        self.directory = Path(directory)
        self.buffers = buffers
        self.schemas = schemas
        self.interval_s = interval_s
        self.before_flush = list(before_flush)
        self.failed: str | None = None
        self.rows_written = {t: 0 for t in schema.TABLES}
        self.rows_dropped = 0
        self.segments = 0
        self.cpu_s = 0.0  # CPU seconds of this thread (its own clock)
        self.final_cpu_s = 0.0  # CPU seconds of the final flush, on the thread that stops the writer
        # per table and level, the files waiting to be merged into one of the next level (level 0: flushes)
        self.compaction = {t: compaction + ROLLUP_COMPACTION[len(compaction):] if t == schema.ROLLUPS else compaction
                           for t in schema.TABLES}
        self._levels: dict[str, list[list[Path]]] = {t: [[] for _ in self.compaction[t]] for t in schema.TABLES}
        self.rollups = Rollups()
        self._seq = 0
        self._halt = threading.Event()
        self._lock = threading.Lock()  # one flush at a time (thread vs. final flush)

    def run(self) -> None:
        t0 = time.thread_time()
        while not self._halt.wait(self.interval_s):
            self.flush()
            self.cpu_s = time.thread_time() - t0

    def stop(self) -> None:
        """Stop the thread, write what is left and compact the last segments."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout=max(10.0, 2 * self.interval_s))
        t0 = time.thread_time()
        self.flush(final=True)
        self.final_cpu_s += time.thread_time() - t0

    def flush(self, final: bool = False) -> None:
        with self._lock:
            for hook in self.before_flush:
                try:
                    hook()
                except Exception as e:  # noqa: BLE001 - a bad hook must not stop writing
                    log.debug("tbdprof: pre-flush hook failed: %s", e)
            self._seq += 1
            for table, row_type in schema.ROW_TYPES.items():
                rows = self.buffers.drain(row_type)
                if table == schema.ROLLUPS:  # last: the intervals the spans and samples drained above closed
                    rows += self.rollups.take(final)
                else:
                    self.rollups.add(table, rows)
                if rows:
                    self._write(table, rows)
                levels = self._levels[table]
                for level, fan in enumerate(self.compaction[table]):
                    if len(levels[level]) >= fan or (final and level == 0 and len(levels[0]) > 1):
                        merged = self._compact(table, levels[level])
                        if merged is not None and level + 1 < len(levels):
                            levels[level + 1].append(merged)

    def _write(self, table: str, rows: list[tuple]) -> None:
        if self.failed:
            self.rows_dropped += len(rows)
            return
        path = self.directory / store.segment_name(table, self._seq)
        try:
            self._atomic_write(rows_to_table(table, rows, self.schemas[table]), path)
        except Exception as e:  # noqa: BLE001 - disk full, folder removed, read-only...
            self._fail(e)
            self.rows_dropped += len(rows)
            return
        self.rows_written[table] += len(rows)
        self.segments += 1
        self._levels[table][0].append(path)

    def _compact(self, table: str, paths: list[Path]) -> Path | None:
        """Merge consecutive segments (flushes, or range files) into one range file, then delete them; returns it.

        Fewer, larger files: smaller footprint (one footer, better compression)
        and faster reads. Readers skip the files a larger range covers (store.live_segments),
        so a crash between the two steps does not double-count.
        """
        if self.failed:
            return None
        first = store.parse_segment(paths[0].name)[1]
        last = store.parse_segment(paths[-1].name)[2]
        target = self.directory / store.segment_name(table, first, last)
        try:
            self._atomic_write(pa.concat_tables(pq.read_table(p) for p in paths), target)
        except Exception as e:  # noqa: BLE001 - keep the small segments: they are still valid
            log.debug("tbdprof: compaction of %s failed (%s)", table, e)
            paths.clear()
            return None
        for p in paths:
            p.unlink(missing_ok=True)
        self.segments -= len(paths) - 1
        paths.clear()
        return target

    def _atomic_write(self, data: pa.Table, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            pq.write_table(data, tmp, **PARQUET_OPTIONS)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def _fail(self, e: BaseException) -> None:
        self.failed = f"{e.__class__.__name__}: {e}"
        log.warning("tbdprof: recording stopped, cannot write %s (%s); training continues", self.directory, self.failed)

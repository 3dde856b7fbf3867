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
from collections import deque
from pathlib import Path
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from . import schema, store

log = logging.getLogger("tbdprof")


class Buffers:
    """One append-only deque of row tuples per table.

    ``deque.append`` and ``popleft`` are atomic, so the training thread, the
    sampling thread and comm-hook callbacks append without a lock while the
    writer drains.
    """

    def __init__(self) -> None:
        self.tables: dict[str, deque] = {name: deque() for name in schema.TABLES}

    def drain(self, table: str) -> list[tuple]:
        q = self.tables[table]
        return [q.popleft() for _ in range(len(q))]


def rows_to_table(table: str, rows: list[tuple], meta_schema: pa.Schema) -> pa.Table:
    """Column-wise conversion of row tuples (in schema column order) to an Arrow table."""
    fields = schema.TABLES[table]
    columns = list(zip(*rows))
    arrays = []
    for field, col in zip(fields, columns):
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
        self._seq = 0
        self._halt = threading.Event()
        self._lock = threading.Lock()  # one flush at a time (thread vs. final flush)

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self.flush()

    def stop(self) -> None:
        """Stop the thread and write what is left."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout=max(10.0, 2 * self.interval_s))
        self.flush()

    def flush(self) -> None:
        with self._lock:
            for hook in self.before_flush:
                try:
                    hook()
                except Exception as e:  # noqa: BLE001 - a bad hook must not stop writing
                    log.debug("tbdprof: pre-flush hook failed: %s", e)
            self._seq += 1
            for table in schema.TABLES:
                rows = self.buffers.drain(table)
                if rows:
                    self._write(table, rows)

    def _write(self, table: str, rows: list[tuple]) -> None:
        if self.failed:
            self.rows_dropped += len(rows)
            return
        name = store.segment_name(table, self._seq)
        path = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        try:
            data = rows_to_table(table, rows, self.schemas[table])
            pq.write_table(data, tmp, compression="zstd", compression_level=3)
            os.replace(tmp, path)
        except Exception as e:  # noqa: BLE001 - disk full, folder removed, read-only...
            self.failed = f"{e.__class__.__name__}: {e}"
            self.rows_dropped += len(rows)
            log.warning("tbdprof: recording stopped, cannot write %s (%s); training continues", self.directory, self.failed)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            return
        self.rows_written[table] += len(rows)
        self.segments += 1

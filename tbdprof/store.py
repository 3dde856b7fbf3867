"""The on-disk layout of a run, shared by the recorder, the launchers and analysis.

```
<run_dir>/run.json                                  run-level metadata
<run_dir>/host=<host>/rank=<rank>/rank.json         per-rank metadata
<run_dir>/host=<host>/rank=<rank>/<table>-<seq>.parquet
```
Pure Python: importing it pulls in neither torch nor pyarrow.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from . import schema

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_host(host: str) -> str:
    """A host name usable as a hive partition value (no '/', '=', spaces)."""
    return _UNSAFE.sub("_", host) or "unknown"


def rank_dir(run_dir: str | os.PathLike, host: str, rank: int) -> Path:
    return Path(run_dir) / f"host={safe_host(host)}" / f"rank={int(rank)}"


def segment_name(table: str, first: int, last: int | None = None) -> str:
    """``spans-000007.parquet`` for one flush, ``spans-000001-000012.parquet`` for a compacted range."""
    if last is None or last == first:
        return f"{table}-{first:06d}{schema.SEGMENT_SUFFIX}"
    return f"{table}-{first:06d}-{last:06d}{schema.SEGMENT_SUFFIX}"


_SEGMENT = re.compile(r"^([a-z_]+)-(\d{6})(?:-(\d{6}))?" + re.escape(schema.SEGMENT_SUFFIX) + "$")


def parse_segment(name: str) -> tuple[str, int, int] | None:
    """(table, first seq, last seq) of a segment file name, or None if it is not one."""
    m = _SEGMENT.match(name)
    if not m:
        return None
    first = int(m.group(2))
    return m.group(1), first, int(m.group(3) or first)


def live_segments(paths: list[Path]) -> list[Path]:
    """The segment files to read, in the order given.

    A flush or range file that a larger range file of its table covers is dropped (compaction
    writes the range file, then deletes the files it merged; a crash in
    between must not count their rows twice). Files with a non-numeric name
    (``spans-horovod-timeline.parquet``: data ingested from another tool) are
    kept; hidden temporary files are not.
    """
    parsed = [(p, parse_segment(p.name)) for p in paths if p.name.endswith(schema.SEGMENT_SUFFIX) and not p.name.startswith(".")]
    ranges = {x for _, x in parsed if x and x[2] > x[1]}
    out = []
    for p, x in parsed:
        if x and any(t == x[0] and a <= x[1] and x[2] <= b and (a, b) != x[1:] for t, a, b in ranges):
            continue
        out.append(p)
    return out


def write_json_atomic(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write JSON so that a reader sees the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def update_run_json(run_dir: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``run.json`` (created when missing) and return the result."""
    path = Path(run_dir) / schema.RUN_FILE
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = read_json(path)
        except (OSError, ValueError):
            data = {}
    data.update(fields)
    data.setdefault("schema_version", schema.SCHEMA_VERSION)
    write_json_atomic(path, data)
    return data


def is_run_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` looks like a run: a run.json or at least one rank folder."""
    p = Path(path)
    if not p.is_dir():
        return False
    return (p / schema.RUN_FILE).is_file() or any(p.glob("host=*/rank=*"))

"""The on-disk data set format shared by all workloads, and its reader.

A data set is a folder::

    meta.json           {"format": "tbdprof-shards/1", "fields": {name: {dtype, shape}},
                         "samples": N, "shard_size": S, ...}
    shard-00000.bin     S fixed-size records, each the fields' bytes in order
    shard-00001.bin     ...

Records are read with ``seek`` + ``read`` (no mmap), so the data loader's
reads show up in the process I/O counters the profiler samples, as a real
input pipeline's would. Variable-length items (token sequences, utterances)
are padded to the field's shape and carry their length in a field of their own.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from tbdprof.errors import UserError

FORMAT = "tbdprof-shards/1"
META = "meta.json"


class DataFormatError(UserError):
    """A --data folder that is not a data set of the expected layout."""


def _record_layout(fields: dict[str, dict]) -> list[tuple[str, np.dtype, tuple, int]]:
    layout = []
    for name, spec in fields.items():
        dtype = np.dtype(spec["dtype"])
        shape = tuple(spec["shape"])
        layout.append((name, dtype, shape, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize))
    return layout


def write_shards(
    root: Path,
    fields: dict[str, dict],
    samples: int,
    make: Callable[[int], dict[str, np.ndarray]],
    shard_size: int = 512,
    extra: dict | None = None,
) -> None:
    """Write ``samples`` records produced by ``make(i)`` into ``root`` (must not exist)."""
    root.mkdir(parents=True)
    layout = _record_layout(fields)
    for first in range(0, samples, shard_size):
        with open(root / f"shard-{first // shard_size:05d}.bin", "wb") as f:
            for i in range(first, min(samples, first + shard_size)):
                rec = make(i)
                for name, dtype, shape, _ in layout:
                    arr = np.asarray(rec[name], dtype=dtype)
                    if arr.shape != shape:
                        raise ValueError(f"field {name}: shape {arr.shape}, expected {shape}")
                    f.write(arr.tobytes())
    meta = {"format": FORMAT, "fields": fields, "samples": samples, "shard_size": shard_size, **(extra or {})}
    (root / META).write_text(json.dumps(meta, indent=2))


def read_meta(root: Path, fields: dict[str, dict] | None = None) -> dict:
    """The data set's meta.json, checked against the expected ``fields``."""
    path = Path(root) / META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataFormatError(f"{root}: not a tbdprof data set (no {META})") from None
    except (OSError, ValueError) as e:
        raise DataFormatError(f"{path}: unreadable ({e.__class__.__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataFormatError(f"{path}: format is not {FORMAT}")
    if fields is not None:
        have = {k: (v.get("dtype"), list(v.get("shape", []))) for k, v in meta.get("fields", {}).items()}
        want = {k: (v["dtype"], list(v["shape"])) for k, v in fields.items()}
        if have != want:
            raise DataFormatError(f"{root}: fields {have} do not match this workload's {want}")
    n_shards = -(-int(meta["samples"]) // int(meta["shard_size"]))
    missing = [i for i in range(n_shards) if not (Path(root) / f"shard-{i:05d}.bin").is_file()]
    if missing:
        raise DataFormatError(f"{root}: shard-{missing[0]:05d}.bin is missing")
    return meta


def prepare(root: Path, writer: Callable[[Path], None], timeout_s: float = 600.0, is_writer: bool = True) -> Path:
    """Make sure the data set at ``root`` exists; one process per host writes it.

    The writer builds it in a temporary folder and renames it into place, so
    readers (and crashed writers) never see half a data set.
    """
    root = Path(root)
    if (root / META).is_file():
        return root
    if is_writer:
        tmp = root.with_name(f".{root.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        writer(tmp)
        try:
            os.rename(tmp, root)
        except OSError:  # another host/process won the race
            shutil.rmtree(tmp, ignore_errors=True)
        return root
    deadline = time.monotonic() + timeout_s
    while not (root / META).is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"data set {root} did not appear within {timeout_s:.0f}s")
        time.sleep(0.2)
    return root


class ShardDataset(torch.utils.data.Dataset):
    """Reads one record per item with seek+read; ``transform`` turns it into tensors."""

    def __init__(self, root: Path, fields: dict[str, dict] | None = None, transform: Callable | None = None):
        self.root = Path(root)
        self.meta = read_meta(self.root, fields)
        self.layout = _record_layout(self.meta["fields"])
        self.record = sum(size for *_, size in self.layout)
        self.n = int(self.meta["samples"])
        self.shard_size = int(self.meta["shard_size"])
        self.transform = transform
        self._files: dict[int, object] = {}
        self._pid = None

    def __len__(self) -> int:
        return self.n

    def _file(self, shard: int):
        if self._pid != os.getpid():  # handles are per worker process
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.root / f"shard-{shard:05d}.bin", "rb", buffering=0)
        return f

    def raw(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        f = self._file(i // self.shard_size)
        f.seek((i % self.shard_size) * self.record)
        buf = f.read(self.record)
        out, pos = {}, 0
        for name, dtype, shape, size in self.layout:
            out[name] = np.frombuffer(buf, dtype=dtype, count=size // dtype.itemsize, offset=pos).reshape(shape)
            pos += size
        return out

    def __getitem__(self, i: int):
        rec = self.raw(i)
        return self.transform(rec, i) if self.transform else rec

    def __iter__(self) -> Iterator:  # pragma: no cover - map-style dataset
        return (self[i] for i in range(self.n))


def default_root(workload: str, preset: str, seed: int) -> Path:
    """Where generated data sets are cached: ``$TBDPROF_DATA`` or ``~/.cache/tbdprof/data``."""
    base = os.environ.get("TBDPROF_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "tbdprof", "data")
    return Path(base) / f"{workload}-{preset}-seed{seed}-v1"

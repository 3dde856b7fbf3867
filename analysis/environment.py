"""The environment table: what each rank ran with, differences highlighted."""

from __future__ import annotations

import re

from .load import Run

# Settings that name the rank, the run or a port: expected to differ, never highlighted or compared.
INCIDENTAL = re.compile(r"^host$|RANK|PROCID|LOCALID|NODEID|_PID$|^TBDPROF_RUN_|_PORT$|JOBID|JOB_ID")

# (label, path into rank.json)
FIELDS = (
    ("host", ("host",)),
    ("launcher", ("launcher",)),
    ("python", ("env", "python")),
    ("torch", ("env", "torch")),
    ("numpy", ("env", "numpy")),
    ("cuda", ("env", "cuda")),
    ("nccl", ("env", "nccl")),
    ("cudnn", ("env", "cudnn")),
    ("horovod", ("env", "horovod")),
    ("mpi4py", ("env", "mpi4py")),
    ("mpi library", ("env", "mpi_library")),
    ("pyarrow", ("env", "pyarrow")),
    ("gpus", ("env", "gpus")),
    ("dist backend", ("env", "dist_backend")),
    ("torch threads", ("env", "torch_threads")),
    ("torch interop threads", ("env", "torch_interop_threads")),
    ("OMP_NUM_THREADS", ("env", "env", "OMP_NUM_THREADS")),
    ("MKL_NUM_THREADS", ("env", "env", "MKL_NUM_THREADS")),
    ("cpu model", ("env", "cpu_model")),
    ("logical cpus", ("env", "cpu_logical")),
    ("physical cpus", ("env", "cpu_physical")),
    ("cpu affinity", ("env", "cpu_affinity")),
    ("memory", ("env", "mem_total_bytes")),
    ("platform", ("env", "platform")),
    ("engine", ("metadata", "engine")),
    ("batch size / rank", ("metadata", "batch_size")),
    ("loader workers", ("metadata", "num_workers")),
    ("device", ("metadata", "device")),
    ("dtype", ("metadata", "dtype")),
    ("mixed precision", ("metadata", "amp")),
)


def _get(d: dict, path: tuple[str, ...]):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def environment_table(run: Run) -> dict:
    """Rows of (setting, value per rank, differs?): the settings above, then every captured
    environment variable (CUDA_*, NCCL_*, OMP_*...); settings no rank recorded are left out."""
    ranks = sorted(run.ranks)
    named = {path[-1] for _, path in FIELDS if path[:2] == ("env", "env")}
    env_vars = sorted({k for r in ranks for k in (_get(run.ranks[r], ("env", "env")) or {})} - named)
    rows = []
    for label, path in [*FIELDS, *((v, ("env", "env", v)) for v in env_vars)]:
        values = [_get(run.ranks[r], path) for r in ranks]
        if all(v is None for v in values):
            continue
        shown = ["-" if v is None else (", ".join(map(str, v)) if isinstance(v, list) else str(v)) for v in values]
        differs = len(set(shown)) > 1 and not INCIDENTAL.search(label)
        rows.append({"key": label, "values": shown, "differs": differs})
    return {"ranks": ranks, "rows": rows, "differences": [r["key"] for r in rows if r["differs"]]}

"""The environment table: what each rank ran with, differences highlighted."""

from __future__ import annotations

from .load import Run

# (label, path into rank.json)
FIELDS = (
    ("host", ("host",)),
    ("launcher", ("launcher",)),
    ("python", ("env", "python")),
    ("torch", ("env", "torch")),
    ("numpy", ("env", "numpy")),
    ("cuda", ("env", "cuda")),
    ("nccl", ("env", "nccl")),
    ("gpus", ("env", "gpus")),
    ("dist backend", ("env", "dist_backend")),
    ("torch threads", ("env", "torch_threads")),
    ("OMP_NUM_THREADS", ("env", "env", "OMP_NUM_THREADS")),
    ("MKL_NUM_THREADS", ("env", "env", "MKL_NUM_THREADS")),
    ("cpu model", ("env", "cpu_model")),
    ("logical cpus", ("env", "cpu_logical")),
    ("cpu affinity", ("env", "cpu_affinity")),
    ("memory", ("env", "mem_total_bytes")),
    ("platform", ("env", "platform")),
    ("batch size / rank", ("metadata", "batch_size")),
    ("loader workers", ("metadata", "num_workers")),
    ("device", ("metadata", "device")),
    ("dtype", ("metadata", "dtype")),
)


def _get(d: dict, path: tuple[str, ...]):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def environment_table(run: Run) -> dict:
    """Rows of (setting, value per rank, differs?); settings no rank recorded are left out."""
    ranks = sorted(run.ranks)
    rows = []
    for label, path in FIELDS:
        values = [_get(run.ranks[r], path) for r in ranks]
        if all(v is None for v in values):
            continue
        shown = ["-" if v is None else (", ".join(map(str, v)) if isinstance(v, list) else str(v)) for v in values]
        differs = len(set(shown)) > 1 and label != "host"
        rows.append({"key": label, "values": shown, "differs": differs})
    return {"ranks": ranks, "rows": rows, "differences": [r["key"] for r in rows if r["differs"]]}

"""The TBD memory breakdown: weights, gradients, optimizer state, activations, other, peak."""

from __future__ import annotations

from tbdprof import schema

from . import rollups
from .load import Run


def memory_breakdown(run: Run) -> dict:
    """Per rank, the median of each category over steady-state steps and the peak (in scale mode, with memory
    rollups, the mean over every measured step).

    The run-level figures are those of the rank with the highest peak.
    """
    if not run.has(schema.MEMORY):
        return {"per_rank": {}, "memory_bytes": {}}
    cats = ", ".join(f"median({c})" for c in schema.MEMORY_CATEGORIES)
    rows = rollups.memory_rows(run) if run.memory_rollups else run.sql(
        f"SELECT rank, any_value(device), {cats}, max(peak), median(total), count(*) FROM steady_memory GROUP BY rank ORDER BY rank"
    ) or run.sql(
        f"SELECT rank, any_value(device), {cats}, max(peak), median(total), count(*) FROM memory GROUP BY rank ORDER BY rank"
    )
    per_rank = {}
    for rank, device, *vals in rows:
        d = dict(zip(schema.MEMORY_CATEGORIES, (int(v) for v in vals[: len(schema.MEMORY_CATEGORIES)])))
        d["peak"] = int(vals[-3])
        d["total"] = int(vals[-2])
        d["device"] = device
        per_rank[str(rank)] = d
    top = max(per_rank.values(), key=lambda d: d["peak"]) if per_rank else {}
    return {"per_rank": per_rank, "memory_bytes": {k: top[k] for k in (*schema.MEMORY_CATEGORIES, "peak")} if top else {}}

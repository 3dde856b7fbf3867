"""Deep windows in a run (tbdprof/deep.py): which steps each rank recorded with torch.profiler.

Each rank's ``deep.json`` lists its windows. Always-on figures leave the
window steps out: the ``spans`` view holds every span but those of window
steps (the ``deep_window`` marks stay), and ``spans_all`` holds everything,
for the figures about the windows themselves (their cost, their phases).
"""

from __future__ import annotations

from pathlib import Path

from tbdprof import schema, store


def read_deep(rank_dir: Path) -> dict | None:
    """A rank's ``deep.json``, or None when it has none (or it cannot be read)."""
    path = Path(rank_dir) / schema.DEEP_FILE
    if not path.is_file():
        return None
    try:
        return store.read_json(path)
    except (OSError, ValueError):
        return None


def windows(rank_meta: dict) -> list[dict]:
    """The recorded windows of one rank (``first``, ``last``, ``excluded``...), in step order."""
    deep = rank_meta.get("deep") or {}
    out = []
    for w in deep.get("windows") or []:
        if isinstance(w, dict) and isinstance(w.get("first"), int) and isinstance(w.get("last"), int) and "error" not in w:
            out.append(w)
    return sorted(out, key=lambda w: w["first"])


def excluded_ranges(rank_meta: dict) -> list[tuple[int, int]]:
    """(first, last) step ranges always-on figures leave out: the window and the step that carried its stop."""
    return [_excluded(w) for w in windows(rank_meta)]


def _excluded(w: dict) -> tuple[int, int]:
    ex = w.get("excluded")
    first, last = (ex[0], ex[1]) if isinstance(ex, list) and len(ex) == 2 else (w["first"], w["last"])
    return int(first), int(last)


def define_views(con, ranks: dict[int, dict]) -> None:
    """Rename the ``spans`` view to ``spans_all`` and define ``spans`` without window steps."""
    conds = []
    for rank, meta in sorted(ranks.items()):
        ranges = excluded_ranges(meta)
        if ranges:
            steps = " OR ".join(f"step BETWEEN {a} AND {b}" for a, b in ranges)
            conds.append(f"(rank = {int(rank)} AND ({steps}))")
    con.execute("ALTER VIEW spans RENAME TO spans_all")
    if not conds:
        con.execute("CREATE VIEW spans AS SELECT * FROM spans_all")
        return
    keep = f"(kind = '{schema.KIND_MARK}' AND name = '{schema.MARK_DEEP_WINDOW}')"
    con.execute(f"CREATE VIEW spans AS SELECT * FROM spans_all WHERE NOT ({' OR '.join(conds)}) OR {keep}")


NEIGHBOURS = 10  # steps on each side of a window that its cost is measured against


def window_cost(run) -> dict:
    """What the windows cost the training: the mean step of window steps (the step carrying the profiler's stop
    included) against the median of up to :data:`NEIGHBOURS` steps on each side outside any window, after
    warm-up; with the profiler's start and stop calls and the writer's CPU per window (``deep.json``)."""
    rows, calls = [], {"start_call_s": [], "stop_call_s": [], "process_cpu_s": []}
    for rank, meta in sorted(run.ranks.items()):
        for i, w in enumerate(windows(meta)):
            first, last = _excluded(w)
            rows.append(f"({int(rank)}, {i}, {first}, {last})")
            for k, v in calls.items():
                if isinstance(w.get(k), (int, float)):
                    v.append(w[k])
    out = {"windows": len(rows), "window_step_ms": None, "neighbour_step_ms": None, "extra_ms": None,
           "extra_fraction": None, **{k: (sum(v) / len(v) if v else None) for k, v in calls.items()}}
    if not rows:
        return out
    # inside: the window's own steps; around: steady steps (after warm-up, outside every window) near it
    inside, around = run.sql(
        f"WITH w(rank, id, a, b) AS (VALUES {', '.join(rows)}), "
        "x AS (SELECT true AS inside, s.end_ns - s.start_ns AS d FROM w JOIN spans_all s ON s.rank = w.rank "
        "AND s.kind = ? AND s.step BETWEEN w.a AND w.b "
        "UNION ALL SELECT false, s.end_ns - s.start_ns FROM w JOIN steady_steps s ON s.rank = w.rank "
        "AND s.step BETWEEN w.a - ? AND w.b + ?) "
        "SELECT avg(d) FILTER (WHERE inside), median(d) FILTER (WHERE NOT inside) FROM x",
        [schema.KIND_STEP, NEIGHBOURS, NEIGHBOURS])[0]
    if inside is not None:
        out["window_step_ms"] = inside / 1e6
    if around is not None:
        out["neighbour_step_ms"] = around / 1e6
    if inside is not None and around:
        out["extra_ms"] = (inside - around) / 1e6
        out["extra_fraction"] = (inside - around) / around
    return out


def window_bytes(run, window_steps: int) -> dict:
    """Bytes the windows wrote: the gzip'd Kineto traces (``deep.json``) and the ``ops`` (and ``kernels``) segments."""
    traces = sum(w.get("trace_bytes") or 0 for m in run.ranks.values() for w in windows(m))
    tables = 0
    for table in (schema.OPS, schema.KERNELS):
        for p in run.files.get(table, []):
            try:
                tables += Path(p).stat().st_size
            except OSError:
                pass
    total = traces + tables
    return {"traces": traces, "rows": tables, "total": total,
            "per_window_step": total / window_steps if window_steps else None}

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
    rows = []
    for w in windows(rank_meta):
        ex = w.get("excluded")
        first, last = (ex[0], ex[1]) if isinstance(ex, list) and len(ex) == 2 else (w["first"], w["last"])
        rows.append((int(first), int(last)))
    return rows


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

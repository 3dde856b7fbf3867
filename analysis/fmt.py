"""Number formatting shared by the terminal summary, the HTML report and ``compare``."""

from __future__ import annotations


def fmt_bytes(n) -> str:
    """``1.5 MiB``; ``-`` for None."""
    if n is None:
        return "-"
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} TiB"


def fmt_rate(n) -> str:
    """Bytes per second, ``12.0 MiB/s``."""
    return "-" if n is None else fmt_bytes(n) + "/s"


def fmt_s(x) -> str:
    """Seconds shown in milliseconds."""
    return "-" if x is None else f"{x * 1e3:.1f} ms"


def fmt_pct(x, digits: int = 1) -> str:
    """A fraction (0..1) as a percentage."""
    return "-" if x is None else f"{x * 100:.{digits}f}%"


def fmt_num(x, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def stopped_ranks_note(summary: dict) -> str | None:
    """'rank 1 stopped at 12.3 s (status running)' for each rank that did not finish cleanly."""
    parts = [f"rank {r['rank']} stopped at {r['last_seen_s']:.1f} s (status {r['status']})"
             if r.get("last_seen_s") is not None else f"rank {r['rank']} (status {r['status']})"
             for r in summary["ranks"] if r["rank"] in summary["incomplete_ranks"]]
    return "ranks that did not finish cleanly: " + "; ".join(parts) if parts else None

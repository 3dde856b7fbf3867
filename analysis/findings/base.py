"""The finding record every rule returns, and its severities."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Most severe first; the order findings are listed in.
SEVERITIES = ("critical", "warning", "info")


@dataclass
class Finding:
    """One diagnosed problem: what, how bad, who, when, the figures that prove it, and what to do.

    ``evidence`` maps figure names to values in the units their suffix says
    (``_s`` seconds, ``_bytes``, ``_fraction`` 0..1, ``_pct`` percent,
    ``_per_s`` rates); ``time_range_s`` is (start, end) in seconds since the
    run's first timestamp on the aligned clock. ``score`` (the share of step
    time at stake, when known) orders findings of equal severity.
    """

    kind: str
    severity: str
    title: str
    ranks: list[int]
    evidence: dict
    recommendation: str
    hosts: list[str] = field(default_factory=list)
    time_range_s: tuple[float, float] | None = None
    score: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["time_range_s"] = list(self.time_range_s) if self.time_range_s else None
        return d

    def sort_key(self) -> tuple:
        return SEVERITIES.index(self.severity), -self.score, self.kind


def graded(value: float, warning: float, critical: float) -> str | None:
    """``critical``, ``warning`` or None as ``value`` reaches the thresholds (higher is worse)."""
    if value is None or value < warning:
        return None
    return "critical" if value >= critical else "warning"


def ranks_text(ranks) -> str:
    """``rank 3``, ``ranks 0, 1``, or for runs of consecutive ranks ``ranks 0-511, 513-1023``."""
    ranks = sorted(ranks)
    runs: list[list[int]] = []
    for r in ranks:
        if runs and r == runs[-1][1] + 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    parts = [f"{a}" if a == b else f"{a}, {b}" if b == a + 1 else f"{a}-{b}" for a, b in runs]
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(parts)

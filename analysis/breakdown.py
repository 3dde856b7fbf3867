"""Where a step's time goes: phases and communication, per rank."""

from __future__ import annotations

from tbdprof import schema

from .load import Run


def phase_breakdown(run: Run) -> dict:
    """Per rank: seconds per step in each phase, the fraction of step time, and ``other``.

    Phases are the training thread's (non-overlapping) ``phase`` spans;
    ``other`` is step time no phase covers. Communication spans run on other
    threads and overlap backward, so they are reported beside the phases
    (time and bytes per step), not inside the fractions.
    """
    warm = run.warmup_steps
    step_rows = run.sql(
        "SELECT rank, sum(end_ns - start_ns), count(*) FROM spans WHERE kind = 'step' AND step >= ? GROUP BY rank",
        [warm],
    )
    phase_rows = run.sql(
        "SELECT p.rank, p.name, sum(p.end_ns - p.start_ns) FROM spans p "
        "WHERE p.kind = 'phase' AND p.step >= ? GROUP BY p.rank, p.name",
        [warm],
    )
    comm_rows = run.sql(
        "SELECT rank, name, sum(end_ns - start_ns), sum(bytes), count(*) FROM spans "
        "WHERE kind = 'comm' AND step >= ? GROUP BY rank, name",
        [warm],
    )
    per_rank: dict[str, dict] = {}
    totals: dict[int, tuple[int, int]] = {r: (t, n) for r, t, n in step_rows}
    for rank, (total_ns, n) in sorted(totals.items()):
        phases = {name: ns for r, name, ns in phase_rows if r == rank}
        other = max(0, total_ns - sum(phases.values()))
        fractions = {name: ns / total_ns for name, ns in phases.items()} if total_ns else {}
        fractions["other"] = other / total_ns if total_ns else 0.0
        comm = {
            name: {"s_per_step": ns / 1e9 / n, "bytes_per_step": (b or 0) / n, "calls_per_step": c / n}
            for r, name, ns, b, c in comm_rows
            if r == rank
        }
        per_rank[str(rank)] = {
            "steps": n,
            "step_s": total_ns / 1e9 / n,
            "phase_s_per_step": {name: ns / 1e9 / n for name, ns in phases.items()} | {"other": other / 1e9 / n},
            "phase_fraction": _ordered(fractions),
            "comm": comm,
        }
    return {"per_rank": per_rank, "phase_fraction": _mean_fractions(per_rank)}


def _ordered(fractions: dict[str, float]) -> dict[str, float]:
    std = [p for p in schema.STANDARD_PHASES if p in fractions]
    rest = sorted(k for k in fractions if k not in schema.STANDARD_PHASES and k != "other")
    return {k: fractions[k] for k in [*std, *rest, "other"] if k in fractions}


def _mean_fractions(per_rank: dict[str, dict]) -> dict[str, float]:
    if not per_rank:
        return {}
    names: dict[str, float] = {}
    for r in per_rank.values():
        for k, v in r["phase_fraction"].items():
            names[k] = names.get(k, 0.0) + v / len(per_rank)
    return _ordered(names)

"""Where a step's time goes: phases and communication (exposed vs overlapped), per rank.

Interval arithmetic runs in DuckDB: each set of spans is first merged into
disjoint intervals per rank (gaps-and-islands over ``start_ns``), then two
such sets are intersected with a range join, so concurrent communication
buckets are never counted twice.
"""

from __future__ import annotations

from tbdprof import schema

from .load import Run, sql_list


# Phases during which communication counts as hidden behind work on the rank.
NOT_COMPUTE = (schema.PHASE_DATA, schema.PHASE_COMM)
_COMPUTE = f"kind = 'phase' AND name NOT IN {sql_list(NOT_COMPUTE)}"
_BACKWARD = f"kind = 'phase' AND name = '{schema.PHASE_BACKWARD}'"
_ANY_PHASE = "kind = 'phase'"


def union_sql(where: str) -> str:
    """SQL for the union of the spans matching ``where`` as disjoint (rank, s, e) intervals."""
    return (
        "(SELECT rank, min(start_ns) AS s, max(end_ns) AS e FROM ("
        "SELECT rank, start_ns, end_ns, sum(CASE WHEN start_ns <= prev THEN 0 ELSE 1 END) "
        "OVER (PARTITION BY rank ORDER BY start_ns, end_ns ROWS UNBOUNDED PRECEDING) AS g FROM ("
        "SELECT rank, start_ns, end_ns, max(end_ns) OVER (PARTITION BY rank ORDER BY start_ns, end_ns "
        f"ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev FROM spans WHERE {where})) GROUP BY rank, g)"
    )


def covered_ns(run: Run, where_a: str, where_b: str, params: list | None = None) -> dict[int, int]:
    """Per rank, nanoseconds of the union of spans ``where_a`` that the union of ``where_b`` covers."""
    rows = run.sql(
        f"SELECT a.rank, sum(least(a.e, b.e) - greatest(a.s, b.s)) FROM {union_sql(where_a)} a "
        f"JOIN {union_sql(where_b)} b ON a.rank = b.rank AND a.s < b.e AND b.s < a.e GROUP BY a.rank",
        params,
    )
    return {r: int(ns) for r, ns in rows}


def comm_overlap(run: Run) -> dict[int, dict[str, int]]:
    """Per rank, steady-state communication time in ns: total, overlapped, hidden, exposed, outside phases.

    ``total`` is the union of the ``comm`` spans; ``overlapped`` the part
    inside a backward phase; ``hidden`` the part inside any compute phase
    (every phase except data wait and explicit comm waits); ``exposed`` =
    total - hidden; ``outside_phases`` the part no phase at all covers (the
    share of ``other`` step time that is communication).
    """
    comm = "kind = 'comm' AND step >= ?"
    warm = [run.warmup_steps]
    totals = {r: int(ns) for r, ns in run.sql(f"SELECT rank, sum(e - s) FROM {union_sql(comm)} GROUP BY rank", warm)}
    backward = covered_ns(run, comm, _BACKWARD, warm)
    hidden = covered_ns(run, comm, _COMPUTE, warm)
    phased = covered_ns(run, comm, _ANY_PHASE, warm)
    return {
        r: {"total": t, "overlapped": backward.get(r, 0), "hidden": hidden.get(r, 0),
            "exposed": t - hidden.get(r, 0), "outside_phases": t - phased.get(r, 0)}
        for r, t in totals.items()
    }


def phase_breakdown(run: Run) -> dict:
    """Per rank: seconds per step in each phase, the fraction of step time, and ``other``.

    Phases are the training thread's (non-overlapping) ``phase`` spans;
    ``other`` is step time no phase covers. Communication spans run on other
    threads and overlap backward, so they are reported beside the phases
    (time and bytes per step, and :func:`comm_overlap` as ``comm_s_per_step``
    and ``comm_fraction``), not inside ``phase_fraction``. ``stack`` splits the
    step into parts that add up to it: the phases, exposed communication
    outside every phase, and ``idle`` (the rest of ``other``).
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
    overlap = comm_overlap(run)
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
        ov = overlap.get(rank, dict.fromkeys(("total", "overlapped", "hidden", "exposed", "outside_phases"), 0))
        gap_comm = min(other, ov["outside_phases"])
        stack = {name: ns for name, ns in phases.items()} | {"comm_exposed": gap_comm, "idle": other - gap_comm}
        per_rank[str(rank)] = {
            "steps": n,
            "step_s": total_ns / 1e9 / n,
            "phase_s_per_step": _ordered({name: ns / 1e9 / n for name, ns in phases.items()} | {"other": other / 1e9 / n}),
            "phase_fraction": _ordered(fractions),
            "comm": comm,
            "comm_s_per_step": {k: ov[k] / 1e9 / n for k in ("total", "overlapped", "hidden", "exposed")},
            "comm_fraction": {k: ov[k] / total_ns if total_ns else 0.0 for k in ("total", "overlapped", "exposed")},
            "stack_s_per_step": {k: v / 1e9 / n for k, v in _ordered(stack).items()},
        }
    return {"per_rank": per_rank, "phase_fraction": _mean(per_rank, "phase_fraction"),
            "comm_fraction": _mean(per_rank, "comm_fraction"), "stack_s_per_step": _mean(per_rank, "stack_s_per_step")}


def _ordered(fractions: dict[str, float]) -> dict[str, float]:
    std = [p for p in schema.STANDARD_PHASES if p in fractions]
    tail = ("comm_exposed", "idle", "other")
    rest = sorted(k for k in fractions if k not in schema.STANDARD_PHASES and k not in tail)
    return {k: fractions[k] for k in [*std, *rest, *tail] if k in fractions}


def _mean(per_rank: dict[str, dict], key: str) -> dict[str, float]:
    """The mean over ranks of each entry of ``per_rank[r][key]``."""
    if not per_rank:
        return {}
    names: dict[str, float] = {}
    for r in per_rank.values():
        for k, v in r[key].items():
            names[k] = names.get(k, 0.0) + v / len(per_rank)
    return _ordered(names)

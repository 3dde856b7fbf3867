"""Where a step's time goes: phases and communication (exposed vs overlapped), per rank.

Interval arithmetic runs in DuckDB, here only: :func:`coverage_ns` is the one
union of intervals (the breakdown, bandwidth and scaling read it). The
steady-state communication spans of each
rank are merged into islands (gaps and islands over the spans sorted by
start), so concurrent buckets count once; each island is then intersected
with the phases of the same rank in the steps it touches (an equality join
on rank and step, never a range join) and the overlaps summed. Only the base
spans are sorted, so a 64-rank hour costs seconds. Phases of one rank are the
training thread's and do not overlap each other (the recorder's model of a
step), which is what makes the sum of overlaps the measure of the intersection.
"""

from __future__ import annotations

from dataclasses import dataclass

from tbdprof import schema

from . import rollups
from .load import Run


@dataclass(frozen=True)
class Phases:
    """A set of phases by name: ``only`` these (every phase when None), less ``but``."""

    only: tuple[str, ...] | None = None
    but: tuple[str, ...] = ()

    def sql(self, key: str) -> tuple[str, dict]:
        """A condition on a phase span's ``name``, with its ``$`` parameters named after ``key``."""
        conds, params = [], {}
        if self.only is not None:
            conds.append(f"list_contains(${key}_only, name)")
            params[f"{key}_only"] = list(self.only)
        if self.but:
            conds.append(f"NOT list_contains(${key}_but, name)")
            params[f"{key}_but"] = list(self.but)
        return " AND ".join(conds) or "true", params


# Phases during which communication counts as hidden behind work on the rank.
NOT_COMPUTE = (schema.PHASE_DATA, schema.PHASE_COMM)
ANY_PHASE = Phases()
COMPUTE = Phases(but=NOT_COMPUTE)
BACKWARD = Phases(only=(schema.PHASE_BACKWARD,))


def coverage_ns(run: Run, collective: str | None = None, inside: dict[str, Phases] | None = None) -> dict[int, dict[str, int]]:
    """Per rank: ``total``, the measure of the union of the steady-state communication spans (of
    ``collective``, or all), and for each ``inside`` label the measure of that union inside those phases.

    Results are cached per run: asking again for a collective's ``total``
    alone reuses any earlier result for that collective.
    """
    inside = inside or {}
    cache = run.cached("coverage", dict)
    key = (collective, tuple(sorted(inside.items())))
    if key in cache:
        return cache[key]
    if not inside:
        for (c, _), result in cache.items():
            if c == collective:
                return {r: {"total": v["total"]} for r, v in result.items()}
    cache[key] = _coverage_ns(run, collective, inside)
    return cache[key]


def _coverage_ns(run: Run, collective: str | None, inside: dict[str, Phases]) -> dict[int, dict[str, int]]:
    params: dict = {} if collective is None else {"collective": collective}
    islands = (
        "WITH b AS (SELECT rank, step, start_ns, end_ns FROM steady_comm WHERE end_ns > start_ns"
        + ("" if collective is None else " AND name = $collective") + "), "
        "m AS (SELECT *, max(end_ns) OVER (PARTITION BY rank ORDER BY start_ns, end_ns "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end FROM b), "
        "g AS (SELECT *, sum(CASE WHEN prev_end IS NULL OR start_ns > prev_end THEN 1 ELSE 0 END) "
        "OVER (PARTITION BY rank ORDER BY start_ns, end_ns ROWS UNBOUNDED PRECEDING) AS island FROM m), "
        "i AS (SELECT rank, island, min(start_ns) AS s, max(end_ns) AS e, min(step) AS lo, max(step) AS hi FROM g GROUP BY ALL)"
    )
    labels = list(inside)
    query = f"{islands}, tot AS (SELECT rank, sum(e - s) AS total FROM i GROUP BY rank)"
    if labels:
        conds = []
        for j, k in enumerate(labels):
            cond, p = inside[k].sql(f"f{j}")
            conds.append(cond)
            params |= p
        flags = ", ".join(f"({c}) AS f{j}" for j, c in enumerate(conds))
        overlap = "greatest(0, least(x.e, p.end_ns) - greatest(x.s, p.start_ns))"
        sums = ", ".join(f"sum({overlap}) FILTER (WHERE f{j}) AS f{j}" for j in range(len(labels)))
        # an island touches the phases of the steps it spans, and of the next (a collective may end there)
        query += (
            ", x AS (SELECT rank, s, e, unnest(range(lo, hi + 2)) AS step FROM i), "
            f"p AS (SELECT rank, step, start_ns, end_ns, {flags} FROM steady_phases "
            f"WHERE {' OR '.join(f'({c})' for c in conds)}), "
            f"ov AS (SELECT x.rank, {sums} FROM x JOIN p ON p.rank = x.rank AND p.step = x.step GROUP BY x.rank) "
            f"SELECT tot.rank, tot.total, {', '.join(f'ov.f{j}' for j in range(len(labels)))} FROM tot LEFT JOIN ov USING (rank)"
        )
    else:
        query += " SELECT rank, total FROM tot"
    out = {rank: dict(zip(["total", *labels], (int(v or 0) for v in vals))) for rank, *vals in run.sql(query, params)}
    return {r: v for r, v in out.items() if v["total"] > 0}


def comm_overlap(run: Run) -> dict[int, dict[str, int]]:
    """Per rank, steady-state communication time in ns: total, overlapped, hidden, exposed, outside phases.

    ``total`` is the union of the ``comm`` spans; ``overlapped`` the part
    inside a backward phase; ``hidden`` the part inside any compute phase
    (every phase except data wait and explicit comm waits); ``exposed`` =
    total - hidden; ``outside_phases`` the part no phase at all covers (the
    share of ``other`` step time that is communication).
    """
    cover = coverage_ns(run, inside={"overlapped": BACKWARD, "hidden": COMPUTE, "phased": ANY_PHASE})
    return {
        r: {"total": c["total"], "overlapped": c["overlapped"], "hidden": c["hidden"],
            "exposed": c["total"] - c["hidden"], "outside_phases": c["total"] - c["phased"]}
        for r, c in cover.items()
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
    step_rows, phase_rows, comm_rows = _sums(run)
    overlap = comm_overlap(run)
    if run.zoom:  # scale mode: the overlap measured in the zoom window's steps, scaled to the whole run's
        zoom_steps = dict(run.sql("SELECT rank, count(*) FROM steady_steps GROUP BY rank"))
        whole = {r: n for r, _, n in step_rows}
        overlap = {r: {k: v * whole.get(r, 0) / zoom_steps[r] for k, v in ov.items()}
                   for r, ov in overlap.items() if zoom_steps.get(r)}
    per_rank: dict[str, dict] = {}
    totals: dict[int, tuple[int, int]] = {r: (t, n) for r, t, n in step_rows}
    phases_of: dict[int, dict[str, int]] = {}
    for r, name, ns in phase_rows:
        phases_of.setdefault(r, {})[name] = ns
    comm_of: dict[int, list[tuple]] = {}
    for r, *row in comm_rows:
        comm_of.setdefault(r, []).append(row)
    for rank, (total_ns, n) in sorted(totals.items()):
        phases = phases_of.get(rank, {})
        other = max(0, total_ns - sum(phases.values()))
        fractions = {name: ns / total_ns for name, ns in phases.items()} if total_ns else {}
        fractions["other"] = other / total_ns if total_ns else 0.0
        comm = {
            name: {"s_per_step": ns / 1e9 / n, "bytes_per_step": (b or 0) / n, "calls_per_step": c / n}
            for name, ns, b, c in comm_of.get(rank, [])
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


def _sums(run: Run) -> tuple[list, list, list]:
    """Per rank (steps' total ns, steps); per rank and phase, total ns; per rank and collective (total ns, bytes,
    calls): steady-state spans, or in scale mode the rollups of the whole run."""
    if not run.zoom:
        return (run.sql("SELECT rank, sum(end_ns - start_ns), count(*) FROM steady_steps GROUP BY rank"),
                run.sql("SELECT rank, name, sum(end_ns - start_ns) FROM steady_phases GROUP BY rank, name"),
                run.sql("SELECT rank, name, sum(end_ns - start_ns), sum(bytes), count(*) FROM steady_comm GROUP BY rank, name"))
    steps = [(r, m.sum_ns, m.count) for (r, _), m in rollups.merged(run, schema.KIND_STEP).items() if m.count]
    phases = [(r, name, m.sum_ns) for (r, name), m in rollups.merged(run, schema.KIND_PHASE).items()]
    comm = [(r, name, m.sum_ns, m.bytes, m.count) for (r, name), m in rollups.merged(run, schema.KIND_COMM).items()]
    return steps, phases, comm


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

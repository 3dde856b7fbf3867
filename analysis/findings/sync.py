"""Straggler and imbalance: who the others wait for.

Both read :attr:`Context.sync`: per step, when each rank handed over its last
gradient bucket (its arrival). A straggler arrives late step after step; an
imbalanced run has a wide arrival spread without one consistent late rank,
explained by uneven work (items or units per step differing across ranks).
Stragglers are also found without comm spans, from :attr:`Context.composition`:
the rank whose time goes elsewhere (forward, data wait, outside any phase)
while the others wait correspondingly longer in a blocking phase.
"""

from __future__ import annotations

from statistics import median

from tbdprof import schema

from .base import Finding, graded, ranks_text
from .context import BLOCKING, OUTSIDE_PHASES, PARTS, PHASES, Context

LATE_FRACTION = 0.25  # lateness beyond the others', as a share of the median step
LATE_MIN_S = 0.002  # and at least this, whatever the step time
LATE_CRITICAL = 0.5
LAST_SHARE = 0.5  # the late ranks arrive last in at least this share of steps
SPREAD_WARNING = 0.15  # imbalance: median arrival spread / step time
SPREAD_CRITICAL = 0.35
WORK_CV = 0.05  # work per step differs across ranks at least this much (coefficient of variation)
WORK_CORR = 0.5  # and explains the lateness at least this well (correlation)
IOWAIT_PCT = 10.0  # a late rank's data phase on a host in iowait this much is I/O


def _medians_of_the_others(values: dict) -> dict:
    """Per key, the median of the other keys' values (one sort, not one per key: a thousand ranks)."""
    order = sorted(values, key=values.get)
    xs = [values[k] for k in order]
    n = len(xs) - 1  # values left once one is taken out
    out = {}
    for i, k in enumerate(order):
        def at(j):  # the j-th smallest of the others
            return xs[j] if j < i else xs[j + 1]
        out[k] = (at((n - 1) // 2) + at(n // 2)) / 2
    return out


def late_ranks(ctx: Context) -> dict[int, float]:
    """Ranks that consistently reach the collectives late, with how much later than the others (s)."""
    s = ctx.sync
    if not s:
        return {}
    lat = {r: v["lateness_s"] for r, v in s["per_rank"].items()}
    excess = {r: lat[r] - m for r, m in _medians_of_the_others(lat).items()}
    late = {r: e for r, e in excess.items() if e >= max(LATE_FRACTION * s["step_s"], LATE_MIN_S)}
    if not late or len(late) > len(lat) / 2 or sum(s["per_rank"][r]["last_share"] for r in late) < LAST_SHARE:
        return {}
    return late


ARRIVAL = "collective arrival times"
COMPOSITION = "per-rank phase composition"


def composition_late_ranks(ctx: Context) -> dict[int, float]:
    """Ranks the others consistently wait for, from the per-rank phase composition (no comm spans needed):
    lateness beyond the threshold, at most half the ranks, the latest in most steps."""
    c = ctx.composition
    if not c:
        return {}
    per = c["per_rank"]
    late = {r: v["late_s"] for r, v in per.items() if v["late_s"] >= max(LATE_FRACTION * c["step_s"], LATE_MIN_S)}
    if not late or len(late) > len(per) / 2 or sum(per[r]["last_share"] for r in late) < LAST_SHARE:
        return {}
    return late


def straggler(ctx: Context) -> list[Finding]:
    """Ranks (or hosts) the others wait for, and the phase where they lose the time.

    Two methods: collective arrival times (comm spans) and the per-rank phase
    composition (phases only). Arrival times are the direct measurement and
    win when both find late ranks; the composition alone speaks when the run
    recorded no collectives, or when arrival times saw nothing.
    """
    by_arrival, by_phases = late_ranks(ctx), composition_late_ranks(ctx)
    if not by_arrival and not by_phases:
        return []
    late = by_arrival or by_phases
    used = [ARRIVAL] * bool(by_arrival) + [COMPOSITION] * (not by_arrival or set(by_phases) == set(by_arrival))
    comp = ctx.composition if COMPOSITION in used else {}
    step_s = ctx.sync["step_s"] if by_arrival else comp["step_s"]
    worst = max(late.values())
    if comp:
        part, part_excess, wait_phase = _slow_part(comp, late)
        phase = part if part in PHASES or part == schema.PHASE_COMM else None
    else:
        phase, part_excess = _slow_phase(ctx, late)
        part, wait_phase = phase, None
    hosts = sorted({ctx.per_rank[r]["host"] for r in late})
    whole_hosts = [h for h in hosts if set(ctx.hosts[h]["ranks"]) <= set(late)] if len(ctx.hosts) > 1 else []
    cause = _cause(ctx, part, hosts)
    who = f"host {', '.join(whole_hosts)} ({ranks_text(late)})" if whole_hosts else ranks_text(late)
    evidence = {"evidence_used": used, "late_by_s": {r: late[r] for r in sorted(late)}}
    if by_arrival:
        s = ctx.sync
        others = [v["tail_s"] for r, v in s["per_rank"].items() if r not in late]
        evidence |= {
            "last_share": {r: s["per_rank"][r]["last_share"] for r in sorted(late)},
            "step_s": step_s, "late_fraction": worst / step_s,
            "others_wait_s_per_step": median(others) if others else None,
            "straggler_wait_s_per_step": {r: s["per_rank"][r]["tail_s"] for r in sorted(late)},
        }
    else:
        per = comp["per_rank"]
        evidence |= {
            "last_share": {r: per[r]["last_share"] for r in sorted(late)},
            "step_s": step_s, "late_fraction": worst / step_s,
            "others_wait_s_per_step": median(per[r]["others_wait_s"] for r in late),
        }
    evidence |= {"slow_phase": phase, "slow_phase_excess_s": part_excess, "cause": cause}
    if comp:
        per = comp["per_rank"]
        others = [r for r in per if r not in late]
        evidence |= {
            "slow_part": part, "others_wait_phase": wait_phase,
            "composition_late_by_s": {r: per[r]["late_s"] for r in sorted(late) if r in per},
            "straggler_share": _mean_share(per, late), "others_share": _mean_share(per, others),
        }
    evidence |= {"whole_hosts": whole_hosts, "steps": ctx.sync["steps"] if by_arrival else comp["steps"]}
    it = "it" if len(late) == 1 else "them"
    if by_arrival:
        head = (f"{who} reach{'es' * (len(late) == 1)} the collectives {worst * 1e3:.1f} ms after the others "
                f"({worst / step_s:.0%} of the step); the others wait for {it}")
    else:
        waited = evidence["others_share"].get(wait_phase) if wait_phase else None
        head = (f"{who} {'is' if len(late) == 1 else 'are'} {worst * 1e3:.1f} ms per step ({worst / step_s:.0%} of the step) "
                f"behind the others, who wait for {it} in {wait_phase}" + (f" ({waited:.0%} of their step)" if waited else ""))
    where = ("outside the recorded phases" if part == OUTSIDE_PHASES else f"in {part.replace('_', ' ')}" if part
             else "in no recorded phase")
    title = f"{head}. Time lost {where}" + (f" ({cause})" if cause != where else "") + f"; evidence: {' and '.join(used)}"
    advice = _advice(cause, who)
    ops = operator_level(ctx, max(late, key=late.get), phase)
    if ops:
        evidence["operator_level"] = ops
        title += operator_text(ops)
        advice += f" Operator by operator: tbdprof ops {ctx.run.path} --rank {ops['rank']}."
    return [Finding(
        kind="straggler", severity=graded(worst / step_s, LATE_FRACTION, LATE_CRITICAL), ranks=sorted(late), hosts=hosts,
        title=title, evidence=evidence, recommendation=advice, time_range_s=ctx.window_s,
        score=worst / step_s,
    )]


def operator_level(ctx: Context, rank: int, phase: str | None) -> dict | None:
    """What ``rank`` does differently at operator level in the run's deep windows (:func:`_operator_level`),
    once per run, rank and phase (the straggler and slowdown findings both ask)."""
    return ctx.run.cached(("operator_level", rank, phase), lambda: _operator_level(ctx, rank, phase))


def operator_text(ops: dict) -> str:
    """``. In its deep windows, layer X takes A ms per step vs B on the others (Nx)``: a title's tail."""
    top = ops["layer"] or ops["operator"]
    return (f". In its deep windows, {top['what']} takes {top['rank_ms']:.2f} ms per step vs {top['others_ms']:.2f} "
            "on the others" + (f" ({top['ratio']:.1f}x)" if top["ratio"] else " (only there)"))


def _operator_level(ctx: Context, rank: int, phase: str | None) -> dict | None:
    """What ``rank`` does differently at operator level in the run's deep windows (in ``phase`` when it is one
    the operators can be placed in), or None without windows: the layer and the operator it spends most more on."""
    from ..ops import OpsError, ops_summary

    if not ctx.run.has(schema.OPS):
        return None
    try:
        diff = ops_summary(ctx.run, rank=rank, phase=phase if phase in (schema.PHASE_FORWARD, schema.PHASE_BACKWARD,
                                                                        schema.PHASE_OPTIMIZER) else None)["difference"]
    except OpsError:  # this rank recorded no window, or none in that phase
        return None
    if not diff or not (diff["layers"] or diff["operators"]):
        return None

    def first(rows, key, label):
        if not rows:
            return None
        r = rows[0]
        return {"what": f"{label} {r[key]}", "rank_ms": r["rank_ms"], "others_ms": r["others_ms"], "ratio": r["ratio"]}

    return {"rank": rank, "phase": phase, "layer": first(diff["layers"], "module", "layer"),
            "operator": first(diff["operators"], "name", "operator")}


def _slow_part(comp: dict, late: dict[int, float]) -> tuple[str | None, float, str | None]:
    """The part of the step where the late ranks spend most beyond the others (median excess, the others'
    wait phase left out), how much, and the blocking phase where the others wait."""
    per = comp["per_rank"]
    waits = [per[r]["wait_phase"] for r in late if r in per]
    wait_phase = max(set(waits), key=waits.count) if waits else None
    skip = set(BLOCKING[BLOCKING.index(wait_phase):]) if wait_phase in BLOCKING else set()
    excess = {p: median(per[r]["excess_s"][p] for r in late if r in per) for p in PARTS if p not in skip}
    part = max(excess, key=excess.get)
    return (part, excess[part], wait_phase) if excess[part] > 0 else (None, 0.0, wait_phase)


def _mean_share(per: dict, ranks) -> dict[str, float]:
    """The mean share of step time of each part over ``ranks`` (parts under 0.5% left out)."""
    ranks = [r for r in ranks if r in per]
    if not ranks:
        return {}
    shares = {p: sum(per[r]["share"][p] for r in ranks) / len(ranks) for p in PARTS}
    return {p: round(v, 4) for p, v in shares.items() if v >= 0.005}


def _slow_phase(ctx: Context, late: dict[int, float]) -> tuple[str | None, float]:
    """The phase in which the late ranks spend most longer than the others (backward without its comm tail)."""
    def phases(r):
        p = dict(ctx.per_rank[r]["phase_s"])
        p[schema.PHASE_BACKWARD] -= min(p[schema.PHASE_BACKWARD], ctx.per_rank[r]["tail_s"] or 0)
        return p

    mine = [phases(r) for r in late]
    theirs = [phases(r) for r in ctx.per_rank if r not in late]
    excess = {ph: median(p[ph] for p in mine) - median(p[ph] for p in theirs) for ph in PHASES}
    phase = max(excess, key=excess.get)
    return (phase, excess[phase]) if excess[phase] > 0 else (None, 0.0)


def _cause(ctx: Context, part: str | None, hosts: list[str]) -> str:
    if part == schema.PHASE_DATA:
        iowait = max((ctx.gauge("cpu.iowait_pct", h) or 0) for h in hosts)
        return "I/O on its host" if iowait >= IOWAIT_PCT else "data loading"
    return "compute" if part and part != OUTSIDE_PHASES else "outside the recorded phases"


def _advice(cause: str, who: str) -> str:
    if cause == "compute":
        return (f"Find out why {who} computes slower: compare its CPU/GPU model, clocks and thermal throttling, "
                "thread settings and other processes on its host with the others (tbdprof compare, the report's "
                "environment table); fix or exclude the node, or give it less work.")
    if cause == "I/O on its host":
        return (f"The storage {who} reads from is slow (high iowait): stage the data set on local disk or in memory "
                "on that host, or check the disk and the network file system.")
    if cause == "data loading":
        return (f"The data loader of {who} is slower than the others': give it more workers or prefetching, and "
                "check its host's CPU load and storage.")
    return f"{who} loses time outside the phases tbdprof times: time the rest of its loop with prof.phase()."


def imbalance(ctx: Context) -> list[Finding]:
    """Uneven work across ranks: wide arrival spread, no consistent straggler, explained by work per step."""
    s = ctx.sync
    severity = graded(s.get("spread_fraction"), SPREAD_WARNING, SPREAD_CRITICAL)
    if (not severity or late_ranks(ctx) or composition_late_ranks(ctx) or (s["work_cv"] or 0) < WORK_CV or (s["work_lateness_corr"] or 0) < WORK_CORR):
        return []
    evidence = {
        "arrival_spread_s": s["spread_s"], "arrival_spread_fraction": s["spread_fraction"], "step_s": s["step_s"],
        "work_cv_across_ranks": s["work_cv"], "work_lateness_corr": s["work_lateness_corr"],
        "last_share": {r: v["last_share"] for r, v in s["per_rank"].items()},
        "step_time_cv": s["step_cv"], "steps": s["steps"],
    }
    return [Finding(
        kind="imbalance", severity=severity, ranks=sorted(s["per_rank"]),
        title=(f"uneven work across ranks: each step the fastest waits {s['spread_fraction']:.0%} of the step "
               f"for the slowest, a different rank each time (work per step varies {s['work_cv']:.0%} across ranks)"),
        evidence=evidence, time_range_s=ctx.window_s, score=s["spread_fraction"],
        recommendation=("Balance the work per step across ranks: batch by a token/frame budget instead of a sample "
                        "count, bucket lengths globally so all ranks draw similar lengths in a step, or pack "
                        "sequences; with variable work, larger global batches average it out."),
    )]

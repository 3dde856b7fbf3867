"""The large-job view: past ``LARGE_RANKS`` ranks, per-rank tables become a distribution over ranks
(min / p50 / p90 / max) plus the outliers, the slowest ranks and hosts, each with its cause.

Built from the figures :func:`.report.summarize` already has (per-rank step
times and breakdown, memory, utilization, I/O), so it reads no data itself,
except the straggler rule (:mod:`.findings.sync`), whose cause and slow phase
it gives the ranks and hosts the rule names. For the other outliers the cause
is the part of the step where they spend most beyond the median rank.
"""

from __future__ import annotations

from statistics import median

from tbdprof import schema

from .load import Run

LARGE_RANKS = 16  # more ranks than this: distributions and outliers instead of one row per rank
TOP_RANKS = 10
TOP_HOSTS = 10
CAUSE_MIN = 0.05  # a part of the step is a cause when it is this share of the median step beyond the median rank
_CAUSES = {schema.PHASE_DATA: "data loading", schema.PHASE_H2D: "host-to-device copies", schema.PHASE_FORWARD: "compute",
           schema.PHASE_BACKWARD: "compute", schema.PHASE_OPTIMIZER: "compute", schema.PHASE_COMM: "communication",
           "comm_exposed": "exposed communication", "other": "outside the recorded phases"}


def is_large(summary: dict) -> bool:
    """Whether the run has more ranks than ``LARGE_RANKS``."""
    return summary["world_size"] > LARGE_RANKS


def quantiles(values) -> dict[str, float] | None:
    """``min``, ``p50``, ``p90``, ``max`` of ``values`` (Nones left out; linear interpolation), None when empty."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None

    def q(p: float) -> float:
        i = p * (len(xs) - 1)
        lo = int(i)
        return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (i - lo)

    return {"min": xs[0], "p50": q(0.5), "p90": q(0.9), "max": xs[-1]}


def _figures(summary: dict) -> dict[str, dict[str, float | None]]:
    """Per figure (label -> unit kind), its value per rank: the rows of the distribution table."""
    steps, brk = summary["per_rank_steps"], summary["breakdown"]
    ranks = [str(r["rank"]) for r in summary["ranks"]]
    io, util, mem = summary["io"]["per_rank"], summary["utilization"]["per_rank"], summary["memory"]
    rows: dict[str, dict[str, float | None]] = {"step time (median)": {r: steps.get(r, {}).get("median_s") for r in ranks}}
    for p in summary["phase_fraction"]:
        rows[f"{p} / step"] = {r: brk[r]["phase_s_per_step"].get(p) if r in brk else None for r in ranks}
    rows["comm / step"] = {r: brk[r]["comm_s_per_step"]["total"] if r in brk else None for r in ranks}
    rows["exposed comm / step"] = {r: brk[r]["comm_s_per_step"]["exposed"] if r in brk else None for r in ranks}
    rows["memory peak"] = {r: mem.get(r, {}).get("peak") for r in ranks}
    rows["CPU (100% = 1 core)"] = {r: util.get(r, {}).get("cpu.process_pct", {}).get("avg") for r in ranks}
    rows["read (syscalls) / s"] = {r: io.get(r, {}).get("read_chars", {}).get("per_s") for r in ranks}
    return rows


FIGURE_UNITS = {"memory peak": "bytes", "CPU (100% = 1 core)": "pct", "read (syscalls) / s": "rate"}  # the rest: seconds


def _slow_part(parts: dict[str, float], typical: dict[str, float], step_s: float) -> tuple[str | None, float]:
    """The part of the step (phase, exposed comm, other) most beyond ``typical``, and by how much; None below CAUSE_MIN."""
    excess = {p: v - typical.get(p, 0.0) for p, v in parts.items()}
    if not excess:
        return None, 0.0
    part = max(excess, key=excess.get)
    return (part, excess[part]) if excess[part] >= CAUSE_MIN * step_s else (None, 0.0)


def _cause_text(part: str | None, excess_s: float, finding_cause: str | None = None) -> str:
    if finding_cause:
        return f"{finding_cause} ({part.replace('_', ' ')}, +{excess_s * 1e3:.1f} ms/step)" if part else finding_cause
    if not part:
        return "-"
    return f"{_CAUSES.get(part, part)} ({part.replace('_', ' ')}, +{excess_s * 1e3:.1f} ms/step)"


def _straggler(run: Run) -> dict:
    """The straggler rule's late ranks, whole hosts, cause and slow phase ({} when it finds none)."""
    from .findings.context import Context
    from .findings.sync import straggler

    found = straggler(Context(run))
    if not found:
        return {}
    ev = found[0].evidence
    return {"late_by_s": {int(r): s for r, s in ev["late_by_s"].items()}, "whole_hosts": ev["whole_hosts"],
            "cause": ev["cause"], "slow_phase": ev.get("slow_phase")}


def rank_outliers(run: Run, summary: dict) -> dict | None:
    """The large-job view of ``summary`` (None at ``LARGE_RANKS`` ranks or fewer): ``distribution`` (figure ->
    {min, p50, p90, max} over ranks), ``slowest_ranks`` and ``slowest_hosts`` (slowest first: median step,
    its excess over the median rank or host, the part of the step it loses time in and the cause)."""
    if not is_large(summary) or not summary["per_rank_steps"]:
        return None
    steps, brk = summary["per_rank_steps"], summary["breakdown"]
    host_of = {str(r["rank"]): r["host"] for r in summary["ranks"]}
    med = {r: s["median_s"] for r, s in steps.items() if s.get("median_s") is not None}
    typical_step = median(med.values())
    stack = {r: b["stack_s_per_step"] for r, b in brk.items()}
    typical = {p: median(s.get(p, 0.0) for s in stack.values()) for p in {p for s in stack.values() for p in s}} if stack else {}
    strag = _straggler(run)
    late = strag.get("late_by_s", {})
    order = sorted(med, key=lambda r: (int(r) not in late, -late.get(int(r), 0.0), -med[r]))
    ranks = []
    for r in order[:TOP_RANKS]:
        part, excess = _slow_part(stack.get(r, {}), typical, typical_step)
        # the straggler finding's cause is this rank's when the rank's own slow part is the finding's slow phase
        # (one finding can name ranks slow in different places: a slow rank and a slow host)
        named = int(r) in late and part is not None and part == strag.get("slow_phase")
        ranks.append({"rank": int(r), "host": host_of.get(r), "median_step_s": med[r], "over_median": med[r] / typical_step - 1,
                      "late_by_s": late.get(int(r)), "slow_part": part, "cause": _cause_text(part, excess, strag.get("cause") if named else None)})
    by_host: dict[str, list[str]] = {}
    for r in med:
        by_host.setdefault(host_of.get(r) or "-", []).append(r)
    host_med = {h: median(med[r] for r in rs) for h, rs in by_host.items()}
    typical_host = median(host_med.values())
    hosts = []
    for h in sorted(host_med, key=lambda h: (h not in strag.get("whole_hosts", []), -host_med[h]))[:TOP_HOSTS]:
        rs = [r for r in by_host[h] if r in stack]
        parts = {p: median(stack[r].get(p, 0.0) for r in rs) for p in typical} if rs else {}
        part, excess = _slow_part(parts, typical, typical_step)
        hosts.append({"host": h, "ranks": len(by_host[h]), "median_step_s": host_med[h], "over_median": host_med[h] / typical_host - 1,
                      "slowest_rank": int(max(by_host[h], key=med.get)), "slow_part": part,
                      "cause": _cause_text(part, excess, strag.get("cause") if h in strag.get("whole_hosts", [])
                                           and part is not None and part == strag.get("slow_phase") else None)})
    return {"threshold_ranks": LARGE_RANKS, "ranks": len(med),
            "distribution": {k: q for k, v in _figures(summary).items() if (q := quantiles(v.values()))},
            "slowest_ranks": ranks, "slowest_hosts": hosts}

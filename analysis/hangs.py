"""The hang as the report shows it: summary.json's ``hangs`` key, the HTML's Hang section and timeline marks.

Nothing here judges the run a second way: the states come from
:func:`.findings.hang.rank_states` and the title, culprits and stack excerpt
from the ``hang`` finding (:func:`.findings.hang.hang`), the same ones
``tbdprof diagnose`` prints. This module only places them on the report's
time axis: seconds since the run's first timestamp on the aligned clock (the
``hangs`` view is shifted onto rank 0's clock like the spans, analysis/load.py).
"""

from __future__ import annotations

from tbdprof import schema

from .findings.context import Context
from .findings.hang import WAITING, hang, launcher_exits, rank_states
from .load import Run
from .outliers import LARGE_RANKS

SHOWN = ("hung", "failed", "dead", "resumed")  # the states that make a run's hang worth a section


def _s(ns: int | None, t0: int) -> float | None:
    return None if ns is None else (ns - t0) / 1e9


def place_label(state: str, ev: dict, exit_: str | None = None) -> str:
    """Where the rank is, in a few words: ``waits in allreduce bucket 0 (5.3 KiB)``,
    ``stuck in __getitem__ (data.py:42 in __getitem__)``, ``died (SIGKILL)``."""
    if state == "dead":
        return f"died ({exit_})" if exit_ else "died: its recording ends"
    loc = f" ({ev['location']})" if ev.get("location") else ""
    if state == "failed":
        return f"failed in {ev.get('waiting_in') or ev.get('place') or 'training'}{loc}"
    place = ev.get("place")
    if place == "data_loading":
        return f"stuck in {ev.get('waiting_in') or 'data loading'}{loc}"
    if place in WAITING:
        return f"waits in {ev['collective']}" if ev.get("collective") else f"waits in {ev.get('waiting_in') or place}{loc}"
    return f"stuck in {ev.get('phase') or ev.get('waiting_in') or 'its own code'}{loc}"


def _episode(h: dict, seen: int | None, t0: int) -> dict:
    """One hang of a rank (it may have several, each resumed but the last): from its last progress to the resume,
    else to the end of its recording."""
    until = h["resumed_ns"] or max(t for t in (seen, h["ts_ns"]) if t)
    return {"step": h["step"], "no_progress_since_s": _s(h["since_ns"], t0), "at_s": _s(h["ts_ns"], t0),
            "until_s": _s(until, t0), "no_progress_for_s": (until - h["since_ns"]) / 1e9, "resumed": h["resumed_ns"] is not None,
            "label": place_label("hung", h), **{k: h.get(k) for k in ("place", "waiting_in", "location", "phase", "collective")}}


def _finding(run: Run):
    ctx = Context(run)
    try:
        found = hang(ctx)
    finally:
        run.sql("RESET preserve_insertion_order")  # Context sets it for its temp tables; the report's queries keep the default
    return found[0] if found else None


def hang_summary(run: Run) -> dict | None:
    """summary.json's ``hangs`` (docs/report.md); None when no rank hung, failed or died."""
    if run.t0_ns is None:
        return None
    if not run.has(schema.HANGS) and all(m.get("status") == "complete" for m in run.ranks.values()) and \
            not launcher_exits(run):
        return None  # nothing rank_states could call a hang or a death: spare its scan of a large run
    states = rank_states(run)
    if not any(e["state"] in SHOWN for e in states.values()):
        return None
    finding = _finding(run)
    t0 = run.t0_ns
    starts = {r: a for r, (a, _, _) in run.span_extent.items()}
    end_ns = max([e["last_seen_ns"] for e in states.values() if e.get("last_seen_ns")] +
                 [e[k]["ts_ns"] for e in states.values() for k in ("hang", "error", "resumed") if e.get(k)], default=None)
    culprits = set(finding.evidence.get("culprit_ranks", finding.ranks)) if finding else set()
    per_rank = {}
    for r, e in sorted(states.items()):
        state = e["state"]
        ev = e.get("hang") or e.get("error") or e.get("resumed") or {}
        seen = e.get("last_seen_ns")
        row = {"state": state, "culprit": r in culprits, "step": ev.get("step", e.get("steps_done")), "steps_done": e.get("steps_done"),
               "first_s": _s(starts.get(r), t0), "last_seen_s": _s(seen, t0), "exit": e.get("exit"),
               "no_progress_since_s": None, "at_s": None, "until_s": None, "no_progress_for_s": None, "resumed": False,
               "threshold_s": ev.get("threshold_s"),
               **{k: ev.get(k) for k in ("place", "waiting_in", "location", "phase", "collective")},
               "label": place_label(state, ev, e.get("exit")) if state in SHOWN else None,
               "episodes": [_episode(h, seen, t0) for h in e.get("episodes", [])]}
        if state == "hung":  # never resumed: the band runs to the end of its recording
            until = max(t for t in (seen, e["hang"]["ts_ns"]) if t)
            row.update(no_progress_since_s=_s(ev["since_ns"], t0), at_s=_s(ev["ts_ns"], t0), until_s=_s(until, t0),
                       no_progress_for_s=(until - ev["since_ns"]) / 1e9)
        elif state == "resumed":  # rank_states keeps the resume's time in ts_ns
            row.update(no_progress_since_s=_s(ev["since_ns"], t0), until_s=_s(ev["ts_ns"], t0), resumed=True,
                       no_progress_for_s=(ev["ts_ns"] - ev["since_ns"]) / 1e9)
        elif state == "failed":  # an error row when the recorder saw the exception; else only the rank's status says so
            at = ev.get("ts_ns") or seen
            row.update(no_progress_since_s=_s(ev.get("since_ns"), t0), at_s=_s(at, t0), until_s=_s(at, t0))
        elif state == "dead":  # no sign of life from its last one to the end of the others' recordings
            until = max(t for t in (seen, end_ns) if t) if seen else None
            row.update(no_progress_since_s=_s(seen, t0), until_s=_s(until, t0),
                       no_progress_for_s=(until - seen) / 1e9 if seen else None)
        per_rank[str(r)] = row
    excerpt = (finding.evidence.get("stack_excerpt") or {}) if finding else {}
    return {
        "title": finding.title if finding else None,
        "severity": finding.severity if finding else None,
        "step": finding.evidence.get("step") if finding else None,
        "culprit_ranks": sorted(culprits),
        "dead_ranks": sorted(r for r, e in states.items() if e["state"] == "dead"),
        "hung_ranks": sorted(r for r, e in states.items() if e["state"] == "hung"),
        "failed_ranks": sorted(r for r, e in states.items() if e["state"] == "failed"),
        "resumed": not any(e["state"] in ("hung", "dead", "failed") for e in states.values()),
        "time_range_s": list(finding.time_range_s) if finding and finding.time_range_s else None,
        "end_s": _s(end_ns, t0),
        "per_rank": per_rank,
        "stack_excerpt": {str(r): text for r, text in excerpt.items()},
    }


def print_hangs(con, hangs: dict | None) -> None:
    """The terminal's first lines for a run that hung: the finding's title, then one line per rank (past
    ``LARGE_RANKS`` ranks one per culprit and one per group of ranks in the same state, step and place)."""
    if not hangs:
        return
    from rich.markup import escape

    if hangs.get("title"):
        style = "yellow" if hangs.get("severity") == "info" else "bold red"
        con.print(f"[{style}]HANG:[/] {escape(hangs['title'])}")
    per_rank = hangs["per_rank"]
    if len(per_rank) > LARGE_RANKS:  # one line per culprit, then one per kind of state the others are in
        from .findings.base import ranks_text

        shown = {r: h for r, h in per_rank.items() if h.get("culprit")}
        groups: dict[tuple, list[int]] = {}
        for r, h in per_rank.items():
            if r not in shown:
                groups.setdefault((h["state"], h.get("step"), h.get("label") or ""), []).append(int(r))
        _print_rank_lines(con, dict(list(shown.items())[:LARGE_RANKS]))
        for (state, step, label), ranks in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            con.print(f"  {ranks_text(ranks)}: {state} at step {step}" + (f", {label}" if label else ""), markup=False)
        return
    _print_rank_lines(con, per_rank)


def _print_rank_lines(con, per_rank: dict) -> None:
    for r, h in per_rank.items():
        since = h.get("no_progress_since_s")
        when = f"no progress since {since:.1f} s" if since is not None else \
            f"last seen {h['last_seen_s']:.1f} s" if h.get("last_seen_s") is not None else ""
        took = f" for {h['no_progress_for_s']:.1f} s" if since is not None and h.get("no_progress_for_s") is not None else ""
        tail = ", resumed" if h.get("resumed") else ""
        mark = " (culprit)" if h.get("culprit") else ""
        con.print(f"  rank {r}: {h['state']}{mark} at step {h.get('step')}" + (f", {h['label']}" if h.get("label") else "")
                  + (f"; {when}{took}{tail}" if when else ""), markup=False)

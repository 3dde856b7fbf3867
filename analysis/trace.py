"""``tbdprof trace RUN_DIR [--steps K] [--timeout S]``: a deep window on demand from the live ranks of a job.

No server: the command writes ``deep_request.json`` into the run folder
(request id, steps, first step) and waits for every live rank's
``deep.json`` to list a window with ``trigger: on_demand`` and that request
id (tbdprof/deep.py). Each rank's progress watch stats the file every
``status_every_s`` (2 s by default).

**The agreement rule.** The first step is chosen once, here, and written in
the request, so every rank opens the window at the same absolute step: the
most advanced rank's step (its ``status.json``'s steps done, advanced by the
status's age at its median step time) plus a margin of
``max(3, ceil((2 x status period + 1 s) / median step))`` steps, which covers
the status's age, the rank's polling delay and the step in progress. It
assumes the ranks of a synchronous job are within a step of each other, so
the slower ranks are no closer to the chosen step than the fastest. A rank
that sees the request after that step has begun says ``missed`` in its
``deep.json``; the command then asks again (a new request id) with twice the
margin, until ``--timeout``.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import time
from pathlib import Path

from tbdprof import clock, schema, store
from tbdprof.errors import UserError

from . import live, windows

DEFAULT_STEPS = 5
DEFAULT_TIMEOUT_S = 120.0
MIN_MARGIN = 3  # steps between the most advanced rank and the window, at least
DEFAULT_MARGIN = 10  # when no rank has finished a step yet (no step time known)
SLACK_S = 1.0
POLL_S = 0.25
LIVE_STATES = ("running", "HANG")
MAX_STEPS = 100  # tbdprof.deep.REQUEST_MAX_STEPS (not imported: analysis reads files, not the recorder)


class TraceError(UserError):
    """Not a live run, a bad --steps, or no rank answered in time."""


def _live(run_dir: Path) -> dict[int, tuple[Path, dict]]:
    """Live ranks: rank -> (rank folder, its status.json)."""
    rows = live.rank_status(run_dir)  # RunError (a UserError) for a missing folder or one that is not a run
    states = {r["rank"]: r["state"] for r in rows}
    out = {}
    for rdir in run_dir.glob("host=*/rank=*"):
        try:
            rank = int(rdir.name.split("=", 1)[1])
            st = store.read_json(rdir / schema.STATUS_FILE)
        except (ValueError, OSError):
            continue
        if states.get(rank) in LIVE_STATES:
            out[rank] = (rdir, st)
    if not out:
        seen = ", ".join(f"rank {r} {s}" for r, s in sorted(states.items())) or "no rank folders"
        raise TraceError(f"{run_dir}: not a live run ({seen})")
    return out


def choose_first(statuses: list[dict], now_ns: int, scale: float = 1.0) -> tuple[int, int]:
    """(first step, margin in steps) of the window, from the live ranks' status.json (see the module docstring)."""
    step_times = sorted(s["step_s"] for s in statuses if isinstance(s.get("step_s"), (int, float)) and s["step_s"] > 0)
    step_s = step_times[len(step_times) // 2] if step_times else None
    poll = max((s.get("status_every_s") or 2.0) for s in statuses)
    top = 0.0
    for s in statuses:
        done = s.get("steps_done") if isinstance(s.get("steps_done"), int) else 0
        age = max(0.0, (now_ns - s["updated_ns"]) / 1e9) if isinstance(s.get("updated_ns"), int) else 0.0
        top = max(top, done + (age / step_s if step_s else 0.0))
    margin = max(MIN_MARGIN, math.ceil((2 * poll + SLACK_S) / step_s)) if step_s else DEFAULT_MARGIN
    margin = math.ceil(margin * scale)
    return math.ceil(top) + margin, margin


def _answer(rdir: Path, rid: str) -> tuple[str, dict | None]:
    """("window", w) when the rank recorded it; (state, None) for a request it saw ("pending", "missed"...);
    ("unseen", None) before it saw it."""
    deep = windows.read_deep(rdir) or {}
    for w in deep.get("windows") or []:
        if isinstance(w, dict) and w.get("request") == rid:
            return ("error" if "error" in w else "window"), w
    for e in deep.get("requests") or []:
        if isinstance(e, dict) and e.get("id") == rid:
            return str(e.get("state")), None
    return "unseen", None


def _request(run_dir: Path, steps: int, first: int) -> str:
    rid = secrets.token_hex(4)
    store.write_json_atomic(run_dir / schema.DEEP_REQUEST_FILE, {
        "id": rid, "steps": steps, "first": first, "written_ns": clock.now_ns(), "by": f"tbdprof trace (pid {os.getpid()})"})
    return rid


def _withdraw(run_dir: Path, rid: str) -> None:
    path = run_dir / schema.DEEP_REQUEST_FILE
    try:
        if store.read_json(path).get("id") == rid:
            path.unlink()
    except (OSError, ValueError):
        pass


def trace(run_dir: str | Path, steps: int = DEFAULT_STEPS, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Ask the live ranks for a deep window of ``steps`` steps; wait for all; what each recorded."""
    run_dir = Path(run_dir)
    if not 1 <= steps <= MAX_STEPS:
        raise TraceError(f"--steps must be between 1 and {MAX_STEPS}, got {steps}")
    if timeout_s <= 0:
        raise TraceError(f"--timeout must be positive, got {timeout_s}")
    deadline = time.monotonic() + timeout_s
    ranks = _live(run_dir)
    scale, asked = 1.0, []
    while True:
        first, margin = choose_first([st for _, st in ranks.values()], clock.now_ns(), scale)
        rid = _request(run_dir, steps, first)
        asked.append({"id": rid, "first": first, "margin": margin})
        got: dict[int, dict] = {}
        missed = False
        try:
            while time.monotonic() < deadline:
                states = {}
                for rank, (rdir, _) in ranks.items():
                    if rank in got:
                        continue
                    state, w = _answer(rdir, rid)
                    states[rank] = state
                    if state == "window":
                        got[rank] = w
                    elif state == "error":
                        raise TraceError(f"rank {rank} could not record the window of steps {w['first']}-{w['last']}: {w['error']}")
                    elif state in ("unavailable", "failed"):
                        raise TraceError(f"rank {rank} has deep windows off ({schema.DEEP_FILE} says why); no window recorded")
                    elif state == "run ended":
                        raise TraceError(f"rank {rank} ended before step {first}; no window recorded")
                    elif state in ("missed", "superseded"):
                        missed = True
                if len(got) == len(ranks) or missed:
                    break
                time.sleep(POLL_S)
        finally:
            _withdraw(run_dir, rid)
        if len(got) == len(ranks):
            break
        if missed and time.monotonic() < deadline:
            scale *= 2  # a rank saw it too late: ask again further ahead
            ranks = _live(run_dir)
            continue
        answered = sorted(got)
        silent = sorted(set(ranks) - set(got))
        raise TraceError(
            f"no window within {timeout_s:g} s: rank{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))} "
            f"did not record steps {first}-{first + steps - 1}"
            + (f" (rank{'s' if len(answered) > 1 else ''} {', '.join(map(str, answered))} did)" if answered else
               " (no rank answered: a recorder older than on-demand windows, or TBDPROF_DEEP_REQUESTS=0?)"))
    per_rank = {}
    for rank, w in sorted(got.items()):
        rdir = ranks[rank][0]
        per_rank[rank] = {"first": w["first"], "last": w["last"], "trigger": w.get("trigger"), "ops": w.get("ops"),
                          "trace": str((rdir / w["trace"]).relative_to(run_dir)) if w.get("trace") else None,
                          "trace_bytes": w.get("trace_bytes"), **({"note": w["note"]} if w.get("note") else {})}
    return {"run_dir": str(run_dir), "request": rid, "steps": steps, "first": first, "attempts": asked,
            "per_rank": per_rank}


def trace_command(run_dir: str | Path, steps: int = DEFAULT_STEPS, timeout_s: float = DEFAULT_TIMEOUT_S,
                  json_out: bool = False, file=None) -> int:
    out = file or sys.stdout
    res = trace(run_dir, steps, timeout_s)
    if json_out:
        print(json.dumps(res, indent=2), file=out)
        return 0
    pr = res["per_rank"]
    tries = len(res["attempts"])
    print(f"tbdprof trace  {Path(run_dir).name}  request {res['request']}: {res['steps']} steps from step {res['first']} "
          f"on {len(pr)} rank{'s' if len(pr) > 1 else ''}" + (f" ({tries} requests: the first came too late)" if tries > 1 else ""),
          file=out)
    for rank, w in pr.items():
        print(f"rank {rank:>3}  steps {w['first']}-{w['last']}  {w['trigger']}  {w['ops'] or 0} ops  "
              f"{w['trace'] or w.get('note') or 'no trace file'}", file=out)
    spans = {(w["first"], w["last"]) for w in pr.values()}
    if len(spans) > 1:
        print("note: the ranks' windows differ (a rank's window was cut short by the end of its run)", file=out)
    print(f"operators and layers: tbdprof ops {run_dir}", file=out)
    return 0

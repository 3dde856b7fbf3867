"""Hangs and dead ranks: where every rank was when training stopped moving.

Evidence, per rank: its progress events (table ``hangs``: ``hang`` with the
training thread's place, the call it waits in, the script's frame and the
collectives in flight; ``resume``; ``error``: the exception training raised,
e.g. a collective whose peer is gone), its ``status.json`` (last update),
its ``rank.json`` status (a rank still ``running`` that stopped updating was
killed: SIGKILL, the OOM killer, a segfault) and how its launcher saw it end:
the exit codes in ``run.json`` where tbdprof launched the ranks, torchrun's
failures in ``exits-*.json`` under ``tbdprof profile`` (:mod:`tbdprof.exits`).

The rank to blame (the *culprit*) is the one not waiting in a collective
(stuck in data loading, in its own code), or the one waiting in a different
collective than the others (a skipped collective: the others deadlock in
allreduce while it waits in a barrier), or a rank that died.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

from tbdprof import schema, store

from .base import Finding, ranks_text
from .context import Context

WAITING = ("collective", "backward")  # places where a rank waits for the others
STALE_MARGIN_S = 1.0  # a status older than 3 updates + this, while the others went on, is a dead rank


def _clock(ns: int | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ns / 1e9)) if ns else "?"


def _signal_name(code) -> str | None:
    if not isinstance(code, int) or code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def launcher_exits(run) -> dict[int, dict]:
    """Per rank the launcher saw fail: ``signal`` (a name, or None for a plain exit code), ``exit_code``, ``by``
    (the launcher) and, from torchrun, ``seen_ns`` (when it noticed, whole seconds of its host's clock)."""
    out: dict[int, dict] = {}
    codes = run.meta.get("exit_codes")  # one per process of the plan: one per rank under the local launcher only
    for rank, code in enumerate(codes if run.meta.get("launcher") == "local" and isinstance(codes, list) else []):
        if isinstance(code, int) and code != 0:
            out[rank] = {"exit_code": code, "signal": _signal_name(code), "by": "tbdprof's local launcher"}
    for path in sorted(run.path.glob(f"{schema.EXITS_PREFIX}*.json")):
        try:
            data = store.read_json(path)
            ranks = {int(r): v for r, v in data.get("ranks", {}).items() if isinstance(v, dict)}
        except (OSError, ValueError, AttributeError):
            continue
        for rank, v in ranks.items():
            code = v.get("exit_code")
            out[rank] = {"exit_code": code, "signal": _signal_name(code), "by": data.get("launcher") or "the launcher",
                         "seen_ns": v.get("seen_ns") if isinstance(v.get("seen_ns"), int) else None}
    return out


def _status_files(run) -> dict[int, dict]:
    out = {}
    for rank, meta in run.ranks.items():
        path = store.rank_dir(run.path, meta.get("host", ""), rank) / schema.STATUS_FILE
        try:
            data = store.read_json(path)
        except (OSError, ValueError):
            continue
        offset = ((meta.get("clock") or {}).get("start") or {}).get("offset_ns") or 0
        if isinstance(data.get("updated_ns"), int):
            data["updated_ns"] += int(offset)  # onto rank 0's clock, as the views are
        out[rank] = data
    return out


def rank_states(run) -> dict[int, dict]:
    """Per rank: ``state`` (hung, failed, dead, resumed, running, complete, terminated...) and its evidence."""
    rows = run.sql("SELECT rank, step, event, ts_ns, since_ns, threshold_s, place, waiting_in, location, phase, "
                   "collective, stacks FROM hangs ORDER BY rank, ts_ns") if run.has(schema.HANGS) else []
    last_seen = dict(run.sql("SELECT rank, max(ts_ns) FROM samples GROUP BY rank"))
    for rank, (_, end, _) in run.span_extent.items():
        last_seen[rank] = max(end, last_seen.get(rank) or end)
    steps = {r: step for r, (_, _, step) in run.span_extent.items() if step is not None}
    status = _status_files(run)
    exits = launcher_exits(run)
    out: dict[int, dict] = {}
    for rank, meta in run.ranks.items():
        st = status.get(rank, {})
        seen = max([t for t in (last_seen.get(rank), st.get("updated_ns")) if t], default=None)
        done = max((steps.get(rank) + 1) if steps.get(rank) is not None else 0, st.get("steps_done") or 0)
        ex = exits.get(rank, {})
        out[rank] = {"state": meta.get("status", "unknown"), "host": meta.get("host"), "last_seen_ns": seen,
                     "steps_done": done, "status_every_s": st.get("status_every_s"), "exit": ex.get("signal"),
                     "exit_code": ex.get("exit_code"), "exit_by": ex.get("by"), "exit_seen_ns": ex.get("seen_ns"),
                     "episodes": []}
    for rank, step, event, ts, since, thr, place, waiting, loc, phase, coll, stacks in rows:
        e = out.setdefault(rank, {"state": "unknown", "episodes": []})
        if event == schema.HANG_RESUME:
            e["resumed"] = {**e.pop("hang", {}), "step": step, "since_ns": since, "ts_ns": ts}
            if e["episodes"] and e["episodes"][-1]["resumed_ns"] is None:
                e["episodes"][-1]["resumed_ns"] = ts
            continue
        key = "hang" if event == schema.HANG_HANG else "error"
        e[key] = {"step": step, "ts_ns": ts, "since_ns": since, "threshold_s": thr, "place": place,
                  "waiting_in": waiting, "location": loc, "phase": phase, "collective": coll, "stacks": stacks or ""}
        if key == "hang":
            e["episodes"].append({**e[key], "resumed_ns": None})
    latest = max((e["last_seen_ns"] for e in out.values() if e.get("last_seen_ns")), default=None)
    for rank, e in out.items():
        if "hang" in e:
            e["state"] = "hung"
        elif "error" in e:
            e["state"] = "failed"
        elif e["state"] == "running":  # it never closed its recording: killed, or still running
            every = e.get("status_every_s") or 2.0
            stale = latest is not None and e.get("last_seen_ns") is not None and \
                (latest - e["last_seen_ns"]) / 1e9 > 3 * every + STALE_MARGIN_S
            if e.get("exit_code") or stale:
                e["state"] = "dead"
        if "resumed" in e and e["state"] not in ("hung", "failed", "dead"):
            e["state"] = "resumed"
    return out


def _call(h: dict) -> str:
    """The collective a waiting rank is in; DDP's backward waits for allreduce."""
    w = h.get("waiting_in")
    return "allreduce" if h.get("place") == "backward" or w in ("all_reduce", "allreduce", "synchronize") else str(w)


def _worker_text(h: dict) -> str:
    stacks = h.get("stacks") or ""
    return "its DataLoader worker's" if stacks.startswith("DataLoader worker") else "its"


def _culprit_text(r: int, e: dict, on_host: bool) -> str:
    """What the culprit rank does; ``on_host``: name its host too (a job over several hosts)."""
    who = f"rank {r} on {e['host']}" if on_host and e.get("host") else f"rank {r}"
    if e["state"] == "dead":
        return f"{who} died ({_death(e)}; last seen {_clock(e.get('last_seen_ns'))})"
    h = e["hang"]
    where = f" ({h['location']})" if h.get("location") else ""
    if h.get("place") == "data_loading":
        call = h.get("waiting_in") or "data loading"
        return f"{who} stuck in {_worker_text(h)} `{call}`{where}" if call != "DataLoader" else \
            f"{who} stuck waiting for its DataLoader{where}"
    if h.get("place") in WAITING:
        return f"{who} waits in {h.get('waiting_in')}{where}"
    return f"{who} stuck in {h.get('phase') or 'its own code'}{where}"


def _death(e: dict) -> str:
    """How a dead rank ended, as far as it can be known: its own recording never says (it ran no code after)."""
    by = e.get("exit_by")
    if e.get("exit"):
        seen = f" at {_clock(e['exit_seen_ns'])}" if e.get("exit_seen_ns") else ""
        return f"{e['exit']}, seen by {by}{seen}"
    if e.get("exit_code"):
        return f"exit code {e['exit_code']}, seen by {by}, without closing its recording"
    return ("signal not known: it never closed its recording and no launcher record of its exit was found "
            "(tbdprof's launchers and torchrun under tbdprof profile write one)")


def _waiting_text(e: dict) -> str:
    h = e.get("hang") or {}
    coll = h.get("collective")
    if h.get("place") == "backward":
        return f"wait in backward for {coll}" if coll else "wait in backward (DDP's allreduce)"
    if coll:
        return f"wait in {coll}"
    return f"wait in {h.get('waiting_in') or h.get('place')}"


def hang(ctx: Context) -> list[Finding]:
    """Training stopped moving (a hang) or stopped (a dead rank): who, where, since when."""
    run = ctx.run
    states = rank_states(run)
    t0 = run.t0_ns or 0
    hung = {r: e for r, e in states.items() if e["state"] == "hung"}
    dead = {r: e for r, e in states.items() if e["state"] == "dead"}
    failed = {r: e for r, e in states.items() if e["state"] == "failed"}
    if not hung and not dead:
        return _stalls(states, t0)
    culprits = set(dead) | {r for r, e in hung.items() if e["hang"].get("place") not in WAITING}
    if not culprits and len(hung) > 1:
        calls = {r: _call(e["hang"]) for r, e in hung.items()}
        count = Counter(calls.values())
        if len(count) > 1:  # the most common call is the others' (a tie: allreduce, which a skipping rank left)
            common = max(count, key=lambda c: (count[c], c == "allreduce"))
            culprits = {r for r, c in calls.items() if c != common}
    if not culprits and hung:
        behind = min(e["hang"]["step"] for e in hung.values())
        if any(e["hang"]["step"] != behind for e in hung.values()):
            culprits = {r for r, e in hung.items() if e["hang"]["step"] == behind}
    # the step the stuck ranks are in; a dead rank's count lags by up to one status update (a terminated
    # rank's closes the step it was in, so that count is not used)
    step = max([e["hang"]["step"] for e in hung.values()] + [e["error"]["step"] for e in failed.values()]
               + [e.get("steps_done") or 0 for e in dead.values()])
    on_host = len({e.get("host") for e in states.values()}) > 1
    parts = [_culprit_text(r, states[r], on_host) for r in sorted(culprits)]
    groups: dict[str, list[int]] = {}
    for r, e in sorted(hung.items()):
        if r not in culprits:
            groups.setdefault(_waiting_text(e), []).append(r)
    for text, rs in groups.items():
        since = min(hung[r]["hang"]["since_ns"] for r in rs)
        verb = text.replace("wait in", "waits in", 1) if len(rs) == 1 else text
        parts.append(f"{ranks_text(rs)} {verb} since {_clock(since)}")
    for r, e in sorted(failed.items()):
        err = e["error"]
        last = (err["stacks"].strip().splitlines() or [""])[-1]
        parts.append(f"rank {r} failed in {err.get('waiting_in')} ({err.get('location')}) at {_clock(err['ts_ns'])}: {last[:160]}")
    # without a hung or failed rank the step is a dead rank's last count: a lower bound
    lead = f"hang at step {step}" if hung else f"training stopped at step {step}" if failed else \
        f"training stopped after at least {step} steps"
    times = [e["hang"]["since_ns"] for e in hung.values()] + [e["last_seen_ns"] for e in dead.values() if e.get("last_seen_ns")]
    ends = [e["hang"]["ts_ns"] for e in hung.values()] + [e["error"]["ts_ns"] for e in failed.values()] + times
    per_rank = {r: _evidence(e, t0) for r, e in sorted(states.items())}
    evidence = {"step": step, "culprit_ranks": sorted(culprits), "dead_ranks": sorted(dead), "hung_ranks": sorted(hung),
                "failed_ranks": sorted(failed), "per_rank": per_rank,
                "stack_excerpt": {r: _excerpt(states[r]) for r in sorted(culprits or hung) if _excerpt(states[r])}}
    return [Finding(
        kind="hang", severity="critical", title=f"{lead}: " + "; ".join(parts),
        ranks=sorted(culprits or hung or dead), hosts=sorted({states[r].get("host") for r in (culprits or hung) if states[r].get("host")}),
        evidence=evidence, recommendation=_advice(states, culprits), score=1.0,
        time_range_s=((min(times) - t0) / 1e9, (max(ends) - t0) / 1e9) if times else ctx.window_s)]


def _evidence(e: dict, t0: int) -> dict:
    ev = e.get("hang") or e.get("error") or e.get("resumed") or {}
    out = {"state": e["state"], "host": e.get("host"), "steps_done": e.get("steps_done"), "exit": e.get("exit"),
           "exit_code": e.get("exit_code"), "exit_by": e.get("exit_by"),
           "last_seen_s": (e["last_seen_ns"] - t0) / 1e9 if e.get("last_seen_ns") else None}
    for k in ("place", "waiting_in", "location", "phase", "collective"):
        out[k] = ev.get(k)
    if ev.get("since_ns"):
        out["no_progress_since_s"] = (ev["since_ns"] - t0) / 1e9
    if e.get("hang"):
        out["no_progress_for_s"] = (e["hang"]["ts_ns"] - e["hang"]["since_ns"]) / 1e9
        out["threshold_s"] = e["hang"].get("threshold_s")
    return {k: v for k, v in out.items() if v is not None}


def _excerpt(e: dict, lines: int = 8) -> str | None:
    """The part of the stacks that names the place: the stuck loader worker's, else the training thread's tail."""
    stacks = (e.get("hang") or {}).get("stacks") or ""
    if not stacks:
        return None
    if stacks.startswith("DataLoader worker") and "Current thread" in stacks:
        block = "Current thread" + stacks.split("Current thread", 1)[1].split("\n\n", 1)[0]
        return "\n".join(block.splitlines()[: lines + 1])
    for block in stacks.split("Thread "):
        if "(training thread)" in block:
            return "\n".join(block.rstrip().splitlines()[-lines:])
    return None


def _advice(states: dict, culprits: set) -> str:
    tips = []
    for r in sorted(culprits):
        e = states[r]
        if e["state"] == "dead":
            tips.append(f"rank {r} died without closing: look at its host's kernel log (dmesg: OOM killer, segfault) "
                        "and the launcher's output; the others then wait for it (or fail in their collective)")
        elif (e.get("hang") or {}).get("place") == "data_loading":
            tips.append(f"rank {r}'s data loading does not return: fix the dataset code at the frame named "
                        "(a blocking read, a lock, a remote file system); DataLoader(timeout=...) turns it into an error")
        else:
            tips.append(f"rank {r} is not where the others are: make every rank call the same collectives in the same "
                        "order (a collective inside `if rank == ...`, uneven batches per rank: DDP's join())")
    if not tips:
        tips.append("every rank waits in the same collective: look for a rank or host missing from the job, the network, "
                    "or a collective timeout too long to report it (init_process_group(timeout=...))")
    return "; ".join(tips) + ". Full stacks of every thread: the rank's `hangs` table (column stacks)."


def _stalls(states: dict, t0: int) -> list[Finding]:
    """Hangs that resumed: the rank made no progress for longer than the threshold, then went on."""
    out = []
    for r, e in sorted(states.items()):
        res = e.get("resumed")
        if not res:
            continue
        secs = (res["ts_ns"] - res["since_ns"]) / 1e9
        where = f" in {res['waiting_in']}" if res.get("waiting_in") else ""
        loc = f" ({res['location']})" if res.get("location") else ""
        n = len(e.get("episodes", []))
        more = f" ({n} such pauses; the first at step {e['episodes'][0]['step']})" if n > 1 else ""
        out.append(Finding(
            kind="hang", severity="info", ranks=[r], score=0.0,
            title=f"rank {r} made no progress for about {secs:.0f} s at step {res['step']}{where}{loc}, then resumed{more}",
            evidence={"step": res["step"], "episodes": n, "per_rank": {r: _evidence({**e, "state": "resumed", "hang": None}, t0)}},
            recommendation="A pause this long is a hang while it lasts: see what the rank did (its hangs table has the stacks).",
            time_range_s=((res["since_ns"] - t0) / 1e9, (res["ts_ns"] - t0) / 1e9)))
    return out

"""``tbdprof status RUN_DIR``: where every rank of a (running) job is, from the files alone.

Reads each rank's ``status.json`` (rewritten by its recorder every few
seconds: step, phase, collective, seconds since progress, the hang flag) and
``rank.json``; no server, no DuckDB. A rank still ``running`` whose status
stopped changing for more than 3 updates + 1 s is flagged ``STALE`` (killed,
or its host is gone); on this host, a rank whose process no longer exists is
``DEAD``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from tbdprof import clock, schema, store

from .load import run_folder

STALE_UPDATES = 3
STALE_MARGIN_S = 1.0


def _alive(pid) -> bool | None:
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def rank_status(run_dir: str | Path) -> list[dict]:
    """One dict per rank folder: rank, host, state, step, phase, since_progress_s, hang, where."""
    path = run_folder(run_dir)
    now = clock.now_ns()
    here = store.safe_host(socket.gethostname())
    out = []
    for rdir in sorted(path.glob("host=*/rank=*"), key=lambda p: int(p.name.split("=", 1)[1]) if p.name.split("=", 1)[1].isdigit() else -1):
        try:
            rank = int(rdir.name.split("=", 1)[1])
        except ValueError:
            continue
        host = rdir.parent.name.split("=", 1)[1]
        try:
            meta = store.read_json(rdir / schema.RANK_FILE)
        except (OSError, ValueError):
            meta = {}
        try:
            st = store.read_json(rdir / schema.STATUS_FILE)
        except (OSError, ValueError):
            st = {}
        state = meta.get("status") or st.get("state") or "unknown"
        age = (now - st["updated_ns"]) / 1e9 if isinstance(st.get("updated_ns"), int) else None
        since = st.get("since_progress_s")
        if state == "running" and age is not None and since is not None:
            since += max(0.0, age)  # as of now, not as of the last update
        flag = state
        if state == "running":
            every = st.get("status_every_s") or 2.0
            if host == here and _alive(st.get("pid", meta.get("pid"))) is False:
                flag = "DEAD"
            elif age is not None and age > STALE_UPDATES * every + STALE_MARGIN_S:
                flag = "STALE"
            elif st.get("hang") or (since is not None and st.get("threshold_s") and since > st["threshold_s"]):
                flag = "HANG"
        elif st.get("hang"):
            flag = f"{state} (hung)"
        info = st.get("hang_info") or {}
        where = ", ".join(x for x in (info.get("waiting_in"), info.get("location"), st.get("collective")) if x)
        step = info.get("step", st.get("step", meta.get("steps")))  # a hung rank: the step it is stuck in
        out.append({"rank": rank, "host": host, "state": flag, "step": step if isinstance(step, int) and step >= 0 else None,
                    "phase": st.get("phase"), "collective": st.get("collective"),
                    "since_progress_s": since, "threshold_s": st.get("threshold_s"), "status_age_s": age,
                    "hang": flag == "HANG" or bool(st.get("hang")), "where": where or None})
    return out


def status_command(run_dir: str | Path, json_out: bool = False, file=None) -> int:
    rows = rank_status(run_dir)
    out = file or sys.stdout
    if json_out:
        print(json.dumps(rows, indent=2), file=out)
        return 0
    print(f"tbdprof status  {Path(run_dir).name}  ({len(rows)} ranks, {time.strftime('%H:%M:%S')})", file=out)
    width = max([10, *(len(r["state"]) for r in rows)])
    head = f"{'rank':>4}  {'host':<12} {'state':<{width}} {'step':>6}  {'phase':<10} {'no progress':>11}  where"
    print(head, file=out)
    for r in rows:
        since = f"{r['since_progress_s']:.1f} s" if r["since_progress_s"] is not None else "-"
        print(f"{r['rank']:>4}  {r['host'][:12]:<12} {r['state']:<{width}} {str(r['step'] if r['step'] is not None else '-'):>6}  "
              f"{(r['phase'] or '-'):<10} {since:>11}  {r['where'] or ''}", file=out)
    hung = [r["rank"] for r in rows if r["hang"]]
    gone = [r["rank"] for r in rows if r["state"] in ("DEAD", "STALE")]
    if hung or gone:
        parts = []
        if hung:
            parts.append(f"no progress beyond the threshold on rank{'s' if len(hung) > 1 else ''} {', '.join(map(str, hung))}")
        if gone:
            parts.append(f"rank{'s' if len(gone) > 1 else ''} {', '.join(map(str, gone))} stopped reporting")
        print("HANG: " + "; ".join(parts) + f" (tbdprof diagnose {run_dir} names the place)", file=out)
    return 0

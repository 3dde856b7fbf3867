"""The pieces of the embedded local launcher: N ranks on this machine, no cluster needed.

:class:`~tbdprof.launch.launchers.Local` plans the ranks with :func:`rank_env`
(the variables torchrun sets: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT...,
plus TBDPROF_RUN_DIR so every rank writes into one run folder) and
:func:`tbdprof.launch.execute.execute` runs that plan, for ``tbdprof run`` and
``tbdprof launch --launcher local`` alike. If one rank fails, the others are
stopped (:func:`wait_all`: SIGTERM, then SIGKILL): no half-finished ranks are
left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from tbdprof.errors import UserError

TERM_GRACE_S = 15.0


class LaunchError(UserError):
    """Bad launch input: one line on stderr, exit code 2."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_run_dir(out: str | os.PathLike, run_id: str | None, prefix: str) -> Path:
    """A fresh run folder under ``out``; refuses an existing non-empty one."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LaunchError(f"--out {out}: exists and is not a folder")
    run_id = run_id or f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = out / run_id
    if run_dir.exists() and any(run_dir.iterdir()):
        raise LaunchError(f"run folder {run_dir} already exists: pick another --run-id")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LaunchError(f"cannot create {run_dir}: {e.strerror}") from None
    return run_dir


def default_threads(nproc: int) -> str:
    """OMP threads per rank so that N ranks do not oversubscribe the cores."""
    return str(max(1, (os.cpu_count() or 1) // nproc))


def rank_env(base: dict, rank: int, nproc: int, port: int, run_dir: Path) -> dict:
    env = dict(base)
    env.update(
        RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nproc),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        TBDPROF_RUN_DIR=str(run_dir), TBDPROF_RUN_ID=run_dir.name, TBDPROF_LAUNCHER="local",
    )
    env.setdefault("OMP_NUM_THREADS", default_threads(nproc))
    return env


def stop_all(procs: list[subprocess.Popen], grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM the ranks still running, then SIGKILL what is left after ``grace_s``."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class _Terminated(Exception):
    """The launcher itself got SIGTERM (a scheduler cancelling the job)."""


def _on_sigterm(signum, frame):
    raise _Terminated


def wait_all(procs: list[subprocess.Popen]) -> tuple[list[int], int | None]:
    """Wait for every rank; the first failure stops the rest. Returns the exit codes and the index of
    the process seen failing first (None when none failed before the others ended).

    SIGINT or SIGTERM to the launcher stops the ranks the same way (SIGTERM,
    so their profilers flush, then SIGKILL), instead of leaving them orphaned.
    """
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                return codes, None
            first = next((i for i, c in enumerate(codes) if c not in (None, 0)), None)
            if first is not None:
                stop_all(procs)
                return [p.returncode for p in procs], first
            time.sleep(0.1)
    except (KeyboardInterrupt, _Terminated):
        stop_all(procs)
        return [p.returncode for p in procs], None
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def exit_code(codes: list[int], first: int | None = None) -> int:
    """One exit code for a job from its processes' codes: that of the process that failed first
    (``first``, as :func:`wait_all` saw it), not of the ranks stopped after it."""
    failed = [c for c in codes if c]
    if not failed:
        return 0
    # Bad input (exit 2) is reported as such; signals come back negative.
    if all(c == 2 for c in failed):
        return 2
    code = codes[first] if first is not None and codes[first] else failed[0]
    return code if code > 0 else 128 - code

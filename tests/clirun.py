"""Running the tbdprof CLI as a user would, for tests in every folder.

(A module of its own, not conftest.py: several folders have a conftest, and
``from conftest import ...`` would pick whichever was imported first.)
"""

import json
import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args, cwd=None, env=None, timeout=600, check=True):
    """Run `python -m tbdprof ARGS` in a subprocess; returns the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "tbdprof", *map(str, args)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tbdprof {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def rank_statuses(run: Path) -> dict[int, dict]:
    """Each rank's live ``status.json`` in a run folder, by rank (files being rewritten are skipped)."""
    out = {}
    for p in Path(run).glob("host=*/rank=*/status.json"):
        try:
            out[int(p.parent.name.split("=")[1])] = json.loads(p.read_text())
        except (OSError, ValueError):
            pass
    return out


def kill_procs(procs) -> None:
    """SIGKILL these psutil processes (those already gone are skipped) and reap them."""
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def kill_tree(proc) -> None:
    """SIGKILL a job and every process under it (torchrun starts its ranks in sessions of their own, so
    killing the job's process group is not enough); then reap it."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    kill_procs(tree)
    proc.wait(timeout=30)

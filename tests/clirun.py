"""Running the tbdprof CLI as a user would, for tests in every folder.

(A module of its own, not conftest.py: several folders have a conftest, and
``from conftest import ...`` would pick whichever was imported first.)
"""

import os
import subprocess
import sys


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


def kill_tree(proc) -> None:
    """SIGKILL a job and every process under it (torchrun starts its ranks in sessions of their own, so
    killing the job's process group is not enough); then reap it."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=30)
    proc.wait(timeout=30)

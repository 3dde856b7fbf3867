"""Shared test helpers: running the tbdprof CLI as a user would."""

import os
import subprocess
import sys

import pytest


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


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    """One generated-data cache for the whole session (TBDPROF_DATA)."""
    path = tmp_path_factory.mktemp("data")
    os.environ["TBDPROF_DATA"] = str(path)
    return path

"""Session fixtures: one real 2-rank run (made once), and a headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def real_run(tmp_path_factory) -> Path:
    """A 2-rank resnet50 run (8 steps, 2 warm-up) under a path with spaces and non-ASCII letters."""
    out = tmp_path_factory.mktemp("runs") / "runs dir ü"
    tbdprof = Path(sys.executable).with_name("tbdprof")
    cmd = [str(tbdprof), "run", "resnet50", "--nproc", "2", "--steps", "8", "--warmup", "2", "--out", str(out),
           "--run-id", "real ☃", "--no-report"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out / "real ☃"


@pytest.fixture
def run_copy(real_run, tmp_path) -> Path:
    """A private copy of the real run, free to damage."""
    dst = tmp_path / "copy of run"
    shutil.copytree(real_run, dst)
    return dst


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed by ensure_chromium.sh when missing; the test is skipped when that is impossible."""
    proc = subprocess.run(["sh", str(HERE / "ensure_chromium.sh")], capture_output=True, text=True, timeout=900,
                          env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"})
    if proc.returncode != 0:
        pytest.skip("chromium unavailable: " + proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "chromium unavailable")
    return proc.stdout.strip().splitlines()[-1]

"""Session fixtures: one real 2-rank run (made once), and a headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clirun import kill_tree

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


PLANT = HERE.parent / "distributed" / "scripts_hang" / "plant_hang.py"
HANG_S = 3.0


@pytest.fixture(scope="session")
def hang_run(tmp_path_factory) -> Path:
    """A real hang, made once: `tbdprof profile -- torchrun` of 2 DDP (gloo) ranks, rank 1's DataLoader worker
    sleeping forever in `__getitem__` at step 6 (tests/distributed/scripts_hang/plant_hang.py), rank 0 waiting in
    its allreduce; killed once both ranks flagged the hang (threshold 3 s)."""
    import json
    import time

    from tbdprof.launch.local import free_port

    out = tmp_path_factory.mktemp("hang")
    cmd = [sys.executable, "-m", "tbdprof", "profile", "--out", str(out), "--run-id", "run", "--flush-s", "0.5", "--",
           str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2", "--master-port", str(free_port()),
           str(PLANT), "--mode", "getitem", "--rank", "1", "--at", "6"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "TBDPROF_HANG_S": str(HANG_S), "TBDPROF_STATUS_S": "0.5"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run = out / "run"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            flags = []
            for p in run.glob("host=*/rank=*/status.json"):
                try:
                    flags.append(bool(json.loads(p.read_text()).get("hang")))
                except (OSError, ValueError):
                    flags.append(False)
            if len(flags) == 2 and all(flags):
                break
            assert proc.poll() is None, "the planted job ended by itself"
            time.sleep(0.2)
        else:
            raise AssertionError("no hang flagged on both ranks")
        time.sleep(1.0)  # a little recording after the hang: the band runs past the tick
    finally:
        kill_tree(proc)
    return run

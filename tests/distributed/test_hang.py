"""Hangs and dead ranks (issue 22): planted faults under `tbdprof profile -- torchrun` (DDP over gloo) and
`tbdprof run`, diagnosed with the right rank, place and time; `tbdprof status` flags a live hang.

Thresholds are seconds (TBDPROF_HANG_S=3, status every 0.5 s); every planted job is killed in a finally.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clirun import kill_tree
from tbdprof.launch.local import free_port

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "scripts_hang" / "plant_hang.py"
BIN = Path(sys.executable).parent
HANG_S = 3.0
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TBDPROF_HANG_S": str(HANG_S), "TBDPROF_STATUS_S": "0.5"}


def _line(marker: str) -> int:
    return next(i for i, line in enumerate(SCRIPT.read_text().splitlines(), 1) if marker in line)


def _start(out: Path, *args, manual=False):
    cmd = [sys.executable, "-m", "tbdprof", "profile", "--out", str(out), "--run-id", "run", "--flush-s", "0.5", "--",
           str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", str(free_port()), str(SCRIPT), *args]
    if manual:
        cmd.append("--manual")
    return subprocess.Popen(cmd, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _statuses(run: Path) -> dict[int, dict]:
    out = {}
    for p in run.glob("host=*/rank=*/status.json"):
        try:
            out[int(p.parent.name.split("=")[1])] = json.loads(p.read_text())
        except (OSError, ValueError):
            pass
    return out


def _wait_hung(run: Path, ranks=(0, 1), timeout=90) -> dict[int, dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = _statuses(run)
        if all(st.get(r, {}).get("hang") for r in ranks):
            return st
        time.sleep(0.2)
    raise AssertionError(f"no hang flagged on ranks {ranks}: {_statuses(run)}")


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "tbdprof", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _hang_finding(run: Path) -> dict:
    proc = _cli("diagnose", run, "--json")
    assert proc.returncode == 0, proc.stderr
    found = [f for f in json.loads(proc.stdout) if f["kind"] == "hang"]
    assert len(found) == 1, proc.stdout
    return found[0]


def _check_detection_time(st: dict) -> None:
    """The hang was flagged within the threshold plus one status period (and a second of slack)."""
    info = st["hang_info"]
    delay = (info["ts_ns"] - info["since_ns"]) / 1e9
    assert HANG_S <= delay <= HANG_S + 0.5 + 1.5, delay


def test_rank_stuck_in_its_dataloader_workers_getitem(tmp_path):
    proc = _start(tmp_path, "--mode", "getitem", "--rank", "1", "--at", "6")
    run = tmp_path / "run"
    try:
        st = _wait_hung(run)
        _check_detection_time(st[1])
        live = _cli("status", run)
        assert live.returncode == 0, live.stderr
        assert "HANG" in live.stdout and "__getitem__" in live.stdout, live.stdout
        rows = {r["rank"]: r for r in json.loads(_cli("status", run, "--json").stdout)}
        assert rows[0]["state"] == rows[1]["state"] == "HANG" and rows[1]["since_progress_s"] >= HANG_S, rows
    finally:
        kill_tree(proc)
    f = _hang_finding(run)
    assert f["severity"] == "critical" and f["ranks"] == [1], f
    line = _line("# the planted hang")
    assert f"rank 1 stuck in its DataLoader worker's `__getitem__` (plant_hang.py:{line} in __getitem__)" in f["title"], f["title"]
    assert "rank 0 waits in backward for allreduce bucket" in f["title"], f["title"]
    assert f["title"].startswith("hang at step 6:"), f["title"]
    ev = f["evidence"]["per_rank"]
    assert ev["1"]["place"] == "data_loading" and ev["0"]["place"] == "backward", ev
    assert "__getitem__" in f["evidence"]["stack_excerpt"]["1"]
    # the time: the last progress was the end of step 5, before the hang was seen, inside the recording
    assert 0 <= f["time_range_s"][0] < f["time_range_s"][1]


def test_rank_killed_mid_run_others_fail_in_their_collective(tmp_path):
    proc = _start(tmp_path, "--mode", "kill", "--rank", "1", "--at", "6")
    run = tmp_path / "run"
    try:
        proc.wait(timeout=120)  # torchrun tears the job down after the death
    finally:
        kill_tree(proc)
    f = _hang_finding(run)
    assert f["severity"] == "critical" and 1 in f["ranks"], f
    assert f["evidence"]["dead_ranks"] == [1], f["evidence"]
    assert "rank 1 died" in f["title"] and "step 6" in f["title"], f["title"]
    r0 = f["evidence"]["per_rank"]["0"]
    # gloo notices the closed connection at once: rank 0 fails in DDP's backward (its allreduce)
    assert r0["state"] in ("failed", "hung", "terminated"), r0
    if r0["state"] == "failed":
        assert "rank 0 failed in" in f["title"], f["title"]


@pytest.mark.parametrize("manual", [False, True], ids=["ddp", "script_all_reduce"])
def test_rank_skips_a_collective_the_others_deadlock_in_allreduce(tmp_path, manual):
    proc = _start(tmp_path, "--mode", "skip", "--rank", "1", "--at", "5", manual=manual)
    run = tmp_path / "run"
    try:
        st = _wait_hung(run)
        _check_detection_time(st[0])
    finally:
        kill_tree(proc)
    f = _hang_finding(run)
    assert f["ranks"] == [1], f
    line = _line("# the planted deadlock")
    assert f"rank 1 waits in barrier (plant_hang.py:{line} in <module>)" in f["title"], f["title"]
    other = "rank 0 waits in all_reduce" if manual else "rank 0 waits in backward for allreduce bucket"
    assert other in f["title"], f["title"]


def test_one_slow_step_is_not_a_hang(tmp_path):
    proc = _start(tmp_path, "--mode", "slow", "--rank", "1", "--at", "6", "--slow-s", "1.5", "--steps", "16")
    run = tmp_path / "run"
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        kill_tree(proc)
    assert proc.returncode == 0, out[-3000:]
    st = _statuses(run)
    assert sorted(st) == [0, 1] and all(s["hangs"] == 0 and s["state"] == "complete" for s in st.values()), st
    found = json.loads(_cli("diagnose", run, "--json").stdout)
    assert not [f for f in found if f["kind"] == "hang"], found
    live = _cli("status", run)
    assert live.returncode == 0 and "HANG" not in live.stdout, live.stdout


def test_tbdprof_run_rank_stuck_in_forward(tmp_path, data_cache):
    """Under `tbdprof run`: rank 1 stalls inside its forward (the runner's own --slow-rank), rank 0 waits for
    its gradients in DDP's allreduce; the finding names rank 1 in forward and the launcher records the job."""
    cmd = [sys.executable, "-m", "tbdprof", "run", "resnet50", "--preset", "tiny", "--nproc", "2", "--steps", "40",
           "--out", str(tmp_path), "--run-id", "run", "--flush-s", "0.5", "--no-report",
           "--slow-rank", "1", "--slow-ms", "600000", "--slow-mode", "sleep"]
    proc = subprocess.Popen(cmd, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    run = tmp_path / "run"
    try:
        st = _wait_hung(run)
        _check_detection_time(st[1])
        live = _cli("status", run)
        assert live.returncode == 0 and "HANG" in live.stdout, live.stdout
    finally:
        kill_tree(proc)
    f = _hang_finding(run)
    assert f["severity"] == "critical" and f["ranks"] == [1], f
    ev = f["evidence"]["per_rank"]
    assert ev["1"]["phase"] == "forward" and "in _stall" in ev["1"]["location"], ev  # the runner's planted stall
    assert "time.sleep" in f["evidence"]["stack_excerpt"]["1"], f["evidence"]["stack_excerpt"]["1"]
    assert ev["0"]["place"] == "backward" and ev["0"]["collective"].startswith("allreduce bucket"), ev
    assert "rank 1 stuck in forward (train.py:" in f["title"] and "rank 0 waits in backward for allreduce" in f["title"], f["title"]

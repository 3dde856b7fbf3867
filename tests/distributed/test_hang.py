"""Hangs and dead ranks (issue 22): the four planted faults (a rank stuck in its dataset's `__getitem__`, a rank
SIGKILLed mid-run, a rank that skips a collective, one slow step that is no hang) under `tbdprof profile -- torchrun`
(a DDP script that knows nothing of tbdprof, tests/distributed/scripts_hang/plant_hang.py) and under `tbdprof run`
(the runner's --fault), plus a Horovod deadlock; each diagnosed with the right rank, place and time, and
`tbdprof status` flags a live hang.

Thresholds are seconds (TBDPROF_HANG_S=3, status every 0.5 s); every planted job is killed in a finally.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clirun import kill_tree, rank_statuses
from tbdprof.launch.local import free_port
from tbdprof.workloads import engines, train

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "scripts_hang" / "plant_hang.py"
RUNNER = Path(train.__file__)
BIN = Path(sys.executable).parent
HANG_S = 3.0
AT = 6  # the step every planted fault strikes at
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TBDPROF_HANG_S": str(HANG_S), "TBDPROF_STATUS_S": "0.5"}
FAULTS = {"getitem": "hang-getitem", "kill": "kill", "skip": "skip-collective", "slow": "slow-step"}  # plant_hang's -> runner's
needs_horovod = pytest.mark.skipif(importlib.util.find_spec("horovod") is None, reason="Horovod is not installed: run `make horovod`")


def _line(path: Path, marker: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if marker in line)


def _getitem_at(frontend: str) -> str:
    """Where the planted `__getitem__` sleeps: the script's dataset, or the runner's wrapper of the workload's."""
    path = SCRIPT if frontend == "profile" else RUNNER
    return f"{path.name}:{_line(path, '# the planted hang')} in __getitem__"


def _popen(cmd):
    return subprocess.Popen(cmd, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _start(frontend: str, out: Path, mode: str, *extra: str):
    """The planted job: ``mode`` (plant_hang's --mode) on rank 1 at step AT, under ``frontend``."""
    if frontend == "profile":
        return _popen([sys.executable, "-m", "tbdprof", "profile", "--out", str(out), "--run-id", "run", "--flush-s", "0.5", "--",
                       str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", str(free_port()), str(SCRIPT),
                       "--mode", mode, "--rank", "1", "--at", str(AT), *extra])
    return _popen([sys.executable, "-m", "tbdprof", "run", "resnet50", "--preset", "tiny", "--nproc", "2", "--steps", "16",
                   "--out", str(out), "--run-id", "run", "--flush-s", "0.5", "--no-report",
                   *(["--fault", FAULTS[mode], "--fault-rank", "1", "--fault-step", str(AT)] if mode else []), *extra])


def _wait_hung(run: Path, proc, ranks=(0, 1), timeout=90) -> dict[int, dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = rank_statuses(run)
        if all(st.get(r, {}).get("hang") for r in ranks):
            return st
        assert proc.poll() is None, f"the planted job ended by itself:\n{proc.stdout.read()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no hang flagged on ranks {ranks}: {rank_statuses(run)}")


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


def _hung_job(frontend: str, out: Path, mode: str, *extra: str) -> tuple[Path, dict, dict]:
    """Plant ``mode``, wait until both ranks flag the hang, read `tbdprof status` while it lasts, kill the job;
    returns the run, the live status rows by rank and the hang finding."""
    proc = _start(frontend, out, mode, *extra)
    run = out / "run"
    try:
        st = _wait_hung(run, proc)
        _check_detection_time(st[1] if mode == "getitem" else st[0])
        live = _cli("status", run)
        assert live.returncode == 0 and "HANG" in live.stdout, live.stdout
        rows = {r["rank"]: r for r in json.loads(_cli("status", run, "--json").stdout)}
    finally:
        kill_tree(proc)
    return run, rows, _hang_finding(run)


FRONTENDS = pytest.mark.parametrize("frontend", ["profile", "run"])


@FRONTENDS
def test_rank_stuck_in_its_dataloader_workers_getitem(tmp_path, frontend, data_cache):
    run, rows, f = _hung_job(frontend, tmp_path, "getitem")
    assert rows[0]["state"] == rows[1]["state"] == "HANG" and rows[1]["since_progress_s"] >= HANG_S, rows
    assert rows[1]["step"] == AT and "__getitem__" in rows[1]["where"], rows  # the step it waits for the batch of
    assert f["severity"] == "critical" and f["ranks"] == [1], f
    assert f"rank 1 stuck in its DataLoader worker's `__getitem__` ({_getitem_at(frontend)})" in f["title"], f["title"]
    # the script's model has no buffers: rank 0 waits in backward; the ResNet's BatchNorm buffers are broadcast in forward
    other = "rank 0 waits in backward for allreduce bucket" if frontend == "profile" else "rank 0 waits in broadcast (DDP's buffers)"
    assert other in f["title"], f["title"]
    assert f["title"].startswith(f"hang at step {AT}:"), f["title"]
    ev = f["evidence"]["per_rank"]
    assert ev["1"]["place"] == "data_loading" and ev["0"]["place"] == ("backward" if frontend == "profile" else "collective"), ev
    assert "__getitem__" in f["evidence"]["stack_excerpt"]["1"]
    # the time: the last progress was the end of step AT - 1, before the hang was seen, inside the recording
    assert 0 <= f["time_range_s"][0] < f["time_range_s"][1]


@FRONTENDS
def test_rank_killed_mid_run_is_named_with_its_signal(tmp_path, frontend, data_cache):
    proc = _start(frontend, tmp_path, "kill")
    run = tmp_path / "run"
    try:
        code = proc.wait(timeout=120)  # the launcher (torchrun, or tbdprof's) tears the job down after the death
    finally:
        kill_tree(proc)
    if frontend == "run":  # the job's code is the dead rank's (128 + SIGKILL), not that of the ranks stopped after it
        assert code == 137, code
    f = _hang_finding(run)
    assert f["severity"] == "critical" and 1 in f["ranks"], f
    assert f["evidence"]["dead_ranks"] == [1], f["evidence"]
    by = "torchrun" if frontend == "profile" else "tbdprof's local launcher"
    assert f"rank 1 died (SIGKILL, seen by {by}" in f["title"] and f"step {AT}" in f["title"], f["title"]
    r1 = f["evidence"]["per_rank"]["1"]
    assert (r1["exit"], r1["exit_code"], r1["exit_by"]) == ("SIGKILL", -9, by), r1
    r0 = f["evidence"]["per_rank"]["0"]
    # rank 0 waits in (or fails out of) DDP's allreduce until its launcher stops it with SIGTERM: never dead itself
    assert r0["state"] in ("failed", "hung", "terminated"), r0
    if r0["state"] == "failed":
        assert "rank 0 failed in" in f["title"], f["title"]


@pytest.mark.parametrize("frontend,manual", [("profile", False), ("profile", True), ("run", False)],
                         ids=["profile-ddp", "profile-script_all_reduce", "run-ddp"])
def test_rank_skips_a_collective_the_others_deadlock_in_allreduce(tmp_path, frontend, manual, data_cache):
    _, _, f = _hung_job(frontend, tmp_path, "skip", *(["--manual"] if manual else []))
    assert f["ranks"] == [1], f
    where = f"plant_hang.py:{_line(SCRIPT, '# the planted deadlock')} in <module>" if frontend == "profile" else \
        f"engines.py:{_line(Path(engines.__file__), 'dist.barrier()')} in barrier"
    assert f"rank 1 waits in barrier ({where})" in f["title"], f["title"]
    other = "rank 0 waits in all_reduce" if manual else "rank 0 waits in backward for allreduce bucket"
    assert other in f["title"], f["title"]
    assert f["title"].startswith(f"hang at step {AT}:"), f["title"]


@FRONTENDS
def test_one_slow_step_is_not_a_hang(tmp_path, frontend, data_cache):
    slow = ["--slow-s", "1.5", "--steps", "16"] if frontend == "profile" else ["--slow-ms", "1500"]
    proc = _start(frontend, tmp_path, "slow", *slow)
    run = tmp_path / "run"
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        kill_tree(proc)
    assert proc.returncode == 0, out[-3000:]
    st = rank_statuses(run)
    assert sorted(st) == [0, 1] and all(s["hangs"] == 0 and s["state"] == "complete" for s in st.values()), st
    steps = json.loads((next(run.glob("host=*/rank=1")) / "timing.json").read_text())["step_times_s"] if frontend == "run" else None
    if steps:
        assert steps[AT] >= 1.5 > max(steps[AT + 1:]), steps  # the slow step was planted, and only one
    found = json.loads(_cli("diagnose", run, "--json").stdout)
    assert not [f for f in found if f["kind"] == "hang"], found
    live = _cli("status", run)
    assert live.returncode == 0 and "HANG" not in live.stdout, live.stdout


def test_tbdprof_run_rank_stuck_in_forward(tmp_path, data_cache):
    """Under `tbdprof run`: rank 1 stalls inside its forward (the runner's own --slow-rank), rank 0 waits for
    its gradients in DDP's allreduce; the finding names rank 1 in forward and the launcher records the job."""
    run, _, f = _hung_job("run", tmp_path, "", "--slow-rank", "1", "--slow-ms", "600000", "--slow-mode", "sleep")
    assert f["severity"] == "critical" and f["ranks"] == [1], f
    ev = f["evidence"]["per_rank"]
    assert ev["1"]["phase"] == "forward" and "in _stall" in ev["1"]["location"], ev  # the runner's planted stall
    assert "time.sleep" in f["evidence"]["stack_excerpt"]["1"], f["evidence"]["stack_excerpt"]["1"]
    assert ev["0"]["place"] == "backward" and ev["0"]["collective"].startswith("allreduce bucket"), ev
    assert "rank 1 stuck in forward (train.py:" in f["title"] and "rank 0 waits in backward for allreduce" in f["title"], f["title"]


@needs_horovod
def test_horovod_rank_skips_an_allreduce(tmp_path, data_cache):
    """Horovod over gloo (tbdprof run --engine horovod): rank 1 waits in hvd.barrier instead of the step's gradient
    allreduce; rank 0 waits in the DistributedOptimizer's synchronize for tensors rank 1 never sends."""
    _, rows, f = _hung_job("run", tmp_path, "skip", "--engine", "horovod")
    assert rows[1]["where"].startswith("barrier") and rows[0]["where"].startswith("synchronize"), rows
    assert f["ranks"] == [1], f
    where = f"engines.py:{_line(Path(engines.__file__), 'self.hvd.barrier()')} in barrier"
    assert f["title"].startswith(f"hang at step {AT}: rank 1 waits in barrier ({where})"), f["title"]
    ev = f["evidence"]["per_rank"]["0"]
    assert ev["place"] == "collective" and ev["waiting_in"] == "synchronize" and ev["phase"] == "optimizer", ev
    assert "rank 0 waits in allreduce of " in f["title"], f["title"]  # the tensors it submitted, from the recorder's probe


def test_a_command_that_is_itself_the_rank_killed_by_a_signal(tmp_path):
    """`tbdprof profile -- python train.py` (no launcher): the command is the rank, so tbdprof profile saw the
    signal end it and says so for the rank, which could not."""
    env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    proc = subprocess.run([sys.executable, "-m", "tbdprof", "profile", "--out", str(tmp_path), "--run-id", "run", "--flush-s",
                           "0.5", "--", sys.executable, str(SCRIPT), "--mode", "kill", "--rank", "0", "--at", "30", "--steps", "40"],
                          env={**os.environ, **ENV, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 128 + 9, proc.stderr[-2000:]
    f = _hang_finding(tmp_path / "run")
    assert f["evidence"]["dead_ranks"] == [0] and f["ranks"] == [0], f
    assert f["title"].startswith("training stopped after at least ") and \
        "rank 0 died (SIGKILL, seen by tbdprof profile at " in f["title"], f["title"]
    assert f["evidence"]["per_rank"]["0"]["steps_done"] <= 30, f["evidence"]  # a lower bound: its last status

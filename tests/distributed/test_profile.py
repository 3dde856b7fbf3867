"""`tbdprof profile -- COMMAND` on unmodified training scripts (tests/distributed/scripts/):
plain python, torchrun, mpirun and horovodrun ranks; a script with its own
Profiler; bad input (no such command, a crash at start, no optimizer); signals."""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tbdprof import schema
from tbdprof.launch.local import free_port

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).parent / "scripts"
BIN = Path(sys.executable).parent
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
PHASES = ("data_wait", "forward", "backward", "optimizer")


def profile(out: Path, *command, run_id="run", env=None, timeout=240):
    """`tbdprof profile --out OUT --run-id ID -- COMMAND`; returns (process, run folder)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tbdprof", "profile", "--out", str(out), "--run-id", run_id, "--sample-hz", "20", "--", *map(str, command)],
        env={**os.environ, **ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )
    return proc, out / run_id


def report(run_dir: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tbdprof", "report", str(run_dir), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def tbdprof_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tbdprof:")]


def script_steps(stdout: str) -> dict[int, int]:
    """{rank: steps} from the scripts' "rank R steps N" lines."""
    return {int(r): int(n) for r, n in re.findall(r"rank (\d+) steps (\d+)", stdout)}


def check_trained(proc, run_dir: Path, world: int, launcher: str, comm: bool) -> dict:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    steps = script_steps(proc.stdout)
    assert sorted(steps) == list(range(world)), proc.stdout
    run = json.loads((run_dir / schema.RUN_FILE).read_text())
    assert (run["launcher"], run["status"], run["exit_code"]) == ("profile", "complete", 0)
    s = report(run_dir)
    assert s["steps"] > 0 and s["world_size"] == world and not s["missing_ranks"]
    assert all(s["phase_fraction"].get(p, 0) > 0 for p in PHASES), s["phase_fraction"]
    assert s["memory_bytes"]["weights"] > 0 and s["memory_bytes"]["gradients"] > 0
    for r in s["ranks"]:
        assert r["steps_recorded"] == steps[r["rank"]], (r, steps)
        assert (r["launcher"], r["status"]) == (launcher, "complete")
    if comm:
        assert all(b["comm_s_per_step"]["total"] > 0 for b in s["breakdown"].values()), s["breakdown"]
    assert not list(run_dir.glob(".monitor-*")), "the monitor's staging folder is left behind"
    return s


def test_plain_python_with_loader_workers(tmp_path):
    proc, run_dir = profile(tmp_path, sys.executable, SCRIPTS / "train.py", "--steps", "6", "--workers", "1")
    check_trained(proc, run_dir, 1, "none", comm=False)
    assert len(list(run_dir.glob("host=*/rank=*"))) == 1  # the DataLoader worker is not a rank
    lines = tbdprof_lines(proc.stderr)
    assert len(lines) == 2 and "profiling into" in lines[0] and "exit code 0" in lines[1], proc.stderr


def test_steps_a_grad_scaler_skips_stay_steps_of_their_own(tmp_path):
    """bf16 autocast with a GradScaler whose inf gradients skip two optimizer steps: eight iterations, eight steps."""
    proc, run_dir = profile(tmp_path, sys.executable, SCRIPTS / "train_amp.py", "--steps", "8", "--inf-at", "2", "3")
    assert proc.returncode == 0, proc.stderr
    assert "applied 6" in proc.stdout, proc.stdout  # the scaler did skip two
    meta = json.loads(next(run_dir.glob("host=*/rank=0/rank.json")).read_text())
    assert meta["steps"] == script_steps(proc.stdout)[0] == 8
    assert "2 of them skipped by the GradScaler" in meta[schema.COVERAGE_FILE_KEY][schema.COVERAGE_STEPS]["how"]
    s = report(run_dir)
    assert sum(v for k, v in s["phase_fraction"].items() if k != "other") <= 1.0 + 1e-9, s["phase_fraction"]


def test_torchrun_ddp(tmp_path):
    proc, run_dir = profile(tmp_path, BIN / "torchrun", "--nproc-per-node", "2", "--master-port", free_port(),
                            SCRIPTS / "train.py", "--steps", "6")
    check_trained(proc, run_dir, 2, "torchrun", comm=True)


def test_torch_multiprocessing_spawn_ranks(tmp_path):
    proc, run_dir = profile(tmp_path, sys.executable, SCRIPTS / "train_spawn.py", "--steps", "6",
                            "--init", f"file://{tmp_path}/pg")
    check_trained(proc, run_dir, 2, "torch.distributed", comm=True)
    # the spawning parent and the ranks' DataLoader workers are not ranks
    assert sorted(p.name for p in run_dir.glob("host=*/rank=*")) == ["rank=0", "rank=1"]
    metas = [json.loads(p.read_text()) for p in sorted(run_dir.glob("host=*/rank=*/rank.json"))]
    assert [(m["rank"], m["world_size"], m["local_rank"], m["local_world_size"]) for m in metas] == [(0, 2, 0, 2), (1, 2, 1, 2)]


@pytest.mark.skipif(shutil.which("mpirun", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}") is None, reason="no mpirun on PATH")
def test_mpirun_ddp(tmp_path):
    mpirun = shutil.which("mpirun", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc, run_dir = profile(tmp_path, mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2", "-x", "MASTER_PORT",
                            sys.executable, SCRIPTS / "train.py", "--steps", "5", env={"MASTER_PORT": str(free_port())})
    check_trained(proc, run_dir, 2, "openmpi", comm=True)


def _horovod_skip() -> str | None:
    if importlib.util.find_spec("horovod") is None:
        return "Horovod is not installed"
    probe = subprocess.run([sys.executable, "-c", "import horovod.torch"], capture_output=True, text=True, timeout=120)
    return None if probe.returncode == 0 else f"import horovod.torch fails: {probe.stderr.strip().splitlines()[-1:]}"


def test_horovodrun(tmp_path):
    why = _horovod_skip()
    if why:
        pytest.skip(why)
    proc, run_dir = profile(tmp_path, BIN / "horovodrun", "-np", "2", "-H", "localhost:2", "--gloo",
                            sys.executable, SCRIPTS / "train_horovod.py", "--steps", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = report(run_dir)
    assert s["world_size"] == 2 and s["steps"] > 0
    assert all(s["phase_fraction"].get(p, 0) > 0 for p in ("forward", "backward", "optimizer")), s["phase_fraction"]
    assert {r["rank"]: r["steps_recorded"] for r in s["ranks"]} == script_steps(proc.stdout)
    assert {r["launcher"] for r in s["ranks"]} == {"horovod"}
    assert all(b["comm_s_per_step"]["total"] > 0 for b in s["breakdown"].values()), s["breakdown"]


def test_explicit_profiler_wins(tmp_path):
    proc, run_dir = profile(tmp_path, sys.executable, SCRIPTS / "train_explicit.py")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(next(run_dir.glob("host=*/rank=0/rank.json")).read_text())
    assert meta["metadata"] == {"explicit": True} and meta["steps"] == 4
    s = report(run_dir)
    assert "my_forward" in s["phase_fraction"] and "forward" not in s["phase_fraction"], s["phase_fraction"]
    assert s["ranks"][0]["steps_recorded"] == 4


def test_command_not_found(tmp_path):
    proc, run_dir = profile(tmp_path, "no-such-command-tbdprof", "--flag")
    assert proc.returncode == 127
    assert proc.stderr.strip().splitlines() == ["tbdprof: no-such-command-tbdprof: command not found"]
    assert not run_dir.exists()


def test_crash_at_start_keeps_system_timelines(tmp_path):
    proc, run_dir = profile(tmp_path, sys.executable, SCRIPTS / "crash.py")
    assert proc.returncode == 1 and "RuntimeError: crash at start" in proc.stderr
    run = json.loads((run_dir / schema.RUN_FILE).read_text())
    assert (run["status"], run["exit_code"]) == ("failed", 1)
    meta = json.loads(next(run_dir.glob("host=*/rank=0/rank.json")).read_text())
    assert meta["metadata"]["monitor"] is True
    s = report(run_dir)  # a failed rank without an error row of its own: the hang summary must cope
    assert s["steps"] == 0 and s["utilization"]["per_rank"]["0"]["cpu.process_pct"]["avg"] > 0, s["utilization"]
    assert s["coverage"]["steps"]["state"] == "missing" and "recorded nothing itself" in s["coverage"]["steps"]["how"]


def test_no_optimizer_means_no_steps(tmp_path):
    proc, run_dir = profile(tmp_path, sys.executable, SCRIPTS / "no_optimizer.py")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(next(run_dir.glob("host=*/rank=0/rank.json")).read_text())["steps"] == 0
    text = subprocess.run([sys.executable, "-m", "tbdprof", "report", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "no training steps were" in text.stdout, text.stdout


def test_sigterm_is_forwarded(tmp_path):
    child = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(42)); print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-m", "tbdprof", "profile", "--out", str(tmp_path), "--run-id", "sig", "--",
                             sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 42
    finally:
        proc.kill()
        proc.wait()
    assert json.loads((tmp_path / "sig" / schema.RUN_FILE).read_text())["exit_code"] == 42

"""A real SLURM cluster on the testbed (slurmctld on node0, slurmd on both hosts): the generated
sbatch script in both modes, submitted with --wait, and `tbdprof profile` once per srun task."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from tbdprof import store
from tbdprof.analysis.load import open_run
from tbdprof.analysis.report import summarize
from tbdprof.launch.local import free_port

from .cluster import launch

pytestmark = pytest.mark.slow
TRAIN = Path(__file__).parents[1] / "distributed" / "scripts" / "train.py"


@pytest.fixture(scope="module")
def slurm(hosts2) -> dict[str, str]:
    return hosts2.slurm()


def _ranks(run_dir: Path) -> list[tuple]:
    metas = [json.loads(p.read_text()) for p in sorted(run_dir.glob("host=*/rank=*/rank.json"))]
    return sorted((m["rank"], m["host"], m["launcher"], m["status"]) for m in metas)


@pytest.mark.parametrize("mode, launcher", [("srun", "slurm"), ("torchrun", "torchrun")])
def test_sbatch_script_submitted_and_waited_for(hosts2, slurm, tmp_path, mode, launcher):
    run_dir = launch(hosts2, tmp_path, mode, "slurm", "node0:1,node1:1", "--steps", "4", "--slurm-mode", mode, "--wait",
                     env=slurm)
    meta = store.read_json(run_dir / "run.json")
    assert (meta["launcher"], meta["status"], meta["exit_codes"]) == ("slurm", "complete", [0])
    assert "--wait" in meta["command"][0] and (run_dir / "job.sbatch").is_file()
    (log,) = run_dir.glob("slurm-*.out")  # the job's own output, where the script sent it
    assert re.fullmatch(r"slurm-\d+\.out", log.name)
    # the ranks ran on the two hosts SLURM allocated, under the launcher they detected
    assert _ranks(run_dir) == [(0, "node0", launcher, "complete"), (1, "node1", launcher, "complete")]
    summary = summarize(open_run(run_dir))
    assert summary["complete"] and summary["hosts"] == ["node0", "node1"]
    assert all(b["comm_s_per_step"]["total"] > 0 for b in summary["breakdown"].values())


def test_profile_once_per_srun_task(hosts2, slurm, tmp_path):
    argv = ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", sys.executable, "-m", "tbdprof", "profile",
            "--out", str(tmp_path), "--run-id", "p", "--", sys.executable, str(TRAIN), "--steps", "5"]
    env = os.environ | slurm | {"OMP_NUM_THREADS": "1", "MASTER_ADDR": "node0", "MASTER_PORT": str(free_port())}
    res = hosts2.run(argv, env=env, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(re.findall(r"rank (\d) steps 5", res.stdout)) == ["0", "1"]
    run_dir = tmp_path / "p"
    meta = store.read_json(run_dir / "run.json")
    assert (meta["status"], meta["world_size"], meta["hosts"]) == ("complete", 2, None)
    assert _ranks(run_dir) == [(0, "node0", "slurm", "complete"), (1, "node1", "slurm", "complete")]
    assert {r["rank"]: r["steps_recorded"] for r in summarize(open_run(run_dir))["ranks"]} == {0: 5, 1: 5}

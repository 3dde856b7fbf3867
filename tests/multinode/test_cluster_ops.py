"""Cluster operations on the testbed: an unreachable host, per-host folders gathered, a sweep across hosts."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tbdprof import store
from tbdprof.analysis.load import open_run
from tbdprof.launch import testbed

from .cluster import launch

pytestmark = pytest.mark.slow


def _pids(tb, host: str) -> list[str]:
    return subprocess.run(["ip", "netns", "pids", tb.namespace(host)], capture_output=True, text=True).stdout.split()


def test_a_second_testbed_beside_the_first_and_down_removes_only_its_own(hosts2, tmp_path):
    sshd = (hosts2.state / "node1.pid").read_text().strip()  # the host's own process
    with testbed.hosts(1, name="tbdq", state=tmp_path / "second") as other:
        res = other.run(["sh", "-c", "hostname; ip -o -4 addr show dev eth0"], timeout=30)
        assert res.returncode == 0 and res.stdout.split()[0] == "node0" and "198.18.0.1/24" in res.stdout, res.stderr
        assert _pids(other, "node0") and hosts2.run(["true"], host="node1", timeout=30).returncode == 0
        again = subprocess.run(["bash", str(testbed.SCRIPT), "up", "1", "--name", "tbdq", "--state", str(tmp_path / "third")],
                               capture_output=True, text=True)
        assert again.returncode == 2 and "a testbed named tbdq is already up" in again.stderr
    assert not _pids(other, "node0") and not (tmp_path / "second").exists()
    assert sshd in _pids(hosts2, "node1")  # the first testbed is untouched
    assert hosts2.run(["hostname"], host="node1", timeout=30).stdout.strip() == "node1"


def test_unreachable_host_is_named_and_nothing_starts(hosts2, tmp_path):
    before = _pids(hosts2, "node0")
    argv = [sys.executable, "-m", "tbdprof", "launch", "resnet50", "--launcher", "torchrun",
            "--hosts", "node0:1,198.18.0.99:1", "--out", str(tmp_path), "--run-id", "x"]
    res = hosts2.run(argv, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "host 198.18.0.99 is unreachable over ssh" in res.stderr
    # no run, no ranks left (an ssh session's sshd child may take a moment to exit; a rank would not)
    deadline = time.monotonic() + 10
    while _pids(hosts2, "node0") != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (tmp_path / "x").exists() and _pids(hosts2, "node0") == before


def test_stage_dirs_gathered_into_one_run(hosts2, tmp_path):
    stage = tmp_path / "local-disk"
    run_dir = launch(hosts2, tmp_path / "runs", "g", "mpirun", "node0:1,node1:1", "--steps", "3", "--stage-dir", str(stage))
    run = open_run(run_dir)
    assert {m["host"] for m in run.ranks.values()} == {"node0", "node1"}
    assert store.read_json(run_dir / "run.json")["gathered_from"] == ["node0", "node1"]


def test_sweep_across_hosts(hosts2, tmp_path):
    argv = [sys.executable, "-m", "tbdprof", "sweep", "resnet50", "--launcher", "mpirun", "--hosts", "node0:1,node1:1",
            "--iface", "eth0", "--nproc", "1,2", "--batch-size", "8", "--scaling", "weak", "--steps", "3",
            "--out", str(tmp_path), "--run-id", "sw"]
    res = hosts2.run(argv, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    index = store.read_json(tmp_path / "sw" / "sweep.json")
    got = [(r["nproc"], r["hosts"], r["batch_size"], r["global_batch_size"], r["status"]) for r in index["runs"]]
    assert got == [(1, ["node0:1"], 8, 8, "complete"), (2, ["node0:1", "node1:1"], 8, 16, "complete")]
    assert open_run(tmp_path / "sw" / "n2-gb16-r0").world_size == 2

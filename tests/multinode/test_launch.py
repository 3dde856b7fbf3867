"""2 hosts x 2 ranks with mpirun and with torchrun: one run, 4 ranks on 2 hosts, a working report."""

from __future__ import annotations

import pytest

from tbdprof import store
from tbdprof.analysis.load import open_run
from tbdprof.analysis.report import summarize

from .cluster import launch

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("launcher", ["mpirun", "torchrun"])
def test_two_hosts_two_ranks(hosts2, tmp_path, launcher):
    run_dir = launch(hosts2, tmp_path, launcher, launcher, "node0:2,node1:2", "--steps", "5")
    meta = store.read_json(run_dir / "run.json")
    assert meta["launcher"] == launcher and meta["status"] == "complete"
    assert meta["hosts"] == ["node0", "node1"] and meta["world_size"] == 4
    assert launcher in meta["command"][0]
    run = open_run(run_dir)
    assert {r: m["host"] for r, m in run.ranks.items()} == {0: "node0", 1: "node0", 2: "node1", 3: "node1"}
    summary = summarize(run)
    assert summary["complete"] and summary["world_size"] == 4 and summary["hosts"] == ["node0", "node1"]
    assert summary["steps"] == 5 - summary["warmup_steps"]


def test_horovodrun_two_hosts(hosts2, tmp_path):
    pytest.importorskip("horovod.torch", reason="Horovod is not installed (build it with `make horovod`)")
    run_dir = launch(hosts2, tmp_path, "hvd", "horovodrun", "node0:1,node1:1", "--steps", "3", "--engine", "horovod")
    assert store.read_json(run_dir / "run.json")["launcher"] == "horovodrun"
    assert {m["host"] for m in open_run(run_dir).ranks.values()} == {"node0", "node1"}

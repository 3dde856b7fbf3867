"""A hang across two testbed hosts (issue 22): `tbdprof launch --launcher torchrun` of one DDP rank per host, rank 1
on node1 stuck in its DataLoader worker's `__getitem__` (the runner's --fault hang-getitem), rank 0 on node0 waiting
for it in a collective; `tbdprof status` flags both live and `tbdprof diagnose` names the rank, its host and the place.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from clirun import kill_procs, kill_tree, rank_statuses
from tbdprof.workloads import train

pytestmark = pytest.mark.slow

AT = 6
HANG_S = 3.0


def _stop(proc, statuses: dict[int, dict]) -> None:
    """Kill the job: the launch on node0 and, on node1, the torchrun agent ssh started and its rank (their pids are
    in the ranks' status files; the hosts share this machine's process table)."""
    for st in statuses.values():
        try:
            rank = psutil.Process(st["pid"])
            agent = rank.parent()
        except (psutil.NoSuchProcess, KeyError):
            continue
        tree = [agent, *agent.children(recursive=True)] if agent and "torchrun" in " ".join(agent.cmdline()) else [rank]
        kill_procs(tree)
    kill_tree(proc)


def test_rank_on_the_second_host_stuck_in_getitem(hosts2, tmp_path):
    argv = [sys.executable, "-m", "tbdprof", "launch", "resnet50", "--launcher", "torchrun", "--hosts", "node0:1,node1:1",
            "--iface", "eth0", "--out", str(tmp_path), "--run-id", "hang", "--no-report", "--steps", "16", "--flush-s", "0.5",
            "--hang-s", str(HANG_S), "--fault", "hang-getitem", "--fault-rank", "1", "--fault-step", str(AT)]
    proc = subprocess.Popen(hosts2.command("node0", argv), env=os.environ | {"OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run = tmp_path / "hang"
    st: dict[int, dict] = {}
    try:
        deadline = time.time() + 180
        while not (len(st) == 2 and all(s.get("hang") for s in st.values())):
            assert time.time() < deadline, f"no hang flagged on both ranks: {st}"
            assert proc.poll() is None, f"the planted job ended by itself:\n{proc.stdout.read()[-3000:]}"
            time.sleep(0.3)
            st = rank_statuses(run)
        live = subprocess.run([sys.executable, "-m", "tbdprof", "status", str(run), "--json"], capture_output=True, text=True)
        rows = {r["rank"]: r for r in json.loads(live.stdout)}
    finally:
        _stop(proc, st)
    assert {r: (row["host"], row["state"]) for r, row in rows.items()} == {0: ("node0", "HANG"), 1: ("node1", "HANG")}, rows
    assert rows[1]["step"] == AT and "__getitem__" in rows[1]["where"], rows

    res = subprocess.run([sys.executable, "-m", "tbdprof", "diagnose", str(run), "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    (f,) = [f for f in json.loads(res.stdout) if f["kind"] == "hang"]
    line = next(i for i, text in enumerate(Path(train.__file__).read_text().splitlines(), 1) if "# the planted hang" in text)
    assert f["ranks"] == [1] and f["hosts"] == ["node1"], f
    assert f["title"].startswith(f"hang at step {AT}: rank 1 on node1 stuck in its DataLoader worker's `__getitem__` "
                                 f"(train.py:{line} in __getitem__)"), f["title"]
    assert "rank 0 waits in broadcast (DDP's buffers)" in f["title"], f["title"]  # its forward syncs BatchNorm buffers
    ev = f["evidence"]["per_rank"]
    assert (ev["1"]["host"], ev["1"]["place"]) == ("node1", "data_loading") and ev["0"]["host"] == "node0", ev
    # the same last progress on both hosts (step AT - 1 ended together), on the aligned clock despite node1's skew
    assert abs(ev["1"]["no_progress_since_s"] - ev["0"]["no_progress_since_s"]) < 0.5, ev

"""The scaling report on the testbed: sweeps over 1, 2 and 4 ranks across two hosts, on the
unshaped link and on a shaped slow one; the projection checked against a held-out size.

1 and 2 ranks run on node0:1,node1:1 and 4 ranks on node0:2,node1:2 (two
sweeps read as one set), so 2 and 4 ranks both cross the link, one ring edge
leaving each host. Tiny resnet50 (524 kB of gradients), one
OpenMP thread per rank, 10 steps (2 of warm-up).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tbdprof.analysis.scaling import scaling

pytestmark = pytest.mark.slow

LAYOUTS = {"1,2": "node0:1,node1:1", "4": "node0:2,node1:2"}
SLOW_LINK = "20mbit"
ATTRIBUTION_TOLERANCE = 0.05  # sum of causes vs the measured gap, as a fraction of ideal throughput
# Projected vs measured throughput at 4 ranks, fitted on 1 and 2. The model gives every rank cores of its
# own; here the 4 ranks and their 4 loader workers share the machine's 2 cores with the other hosts, so
# the 4-rank run's compute per step is up to about twice the fit's. On the slow link communication is
# about 85% of the 4-rank step, which bounds that error to roughly 15-25%; 35% leaves room for the tbf
# burst and the load of a shared 2-core machine.
PROJECTION_TOLERANCE = 0.35


def _sweeps(tb, out, name: str) -> list:
    """The two sweeps of one link setting: their folders."""
    folders = []
    for i, (nproc, hosts) in enumerate(LAYOUTS.items()):
        argv = [sys.executable, "-m", "tbdprof", "sweep", "resnet50", "--launcher", "mpirun", "--hosts", hosts, "--iface", "eth0",
                "--nproc", nproc, "--steps", "10", "--out", str(out), "--run-id", f"{name}{i}"]
        res = tb.run(argv, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=300)
        assert res.returncode == 0, f"sweep failed ({res.returncode}):\n{res.stderr[-5000:]}"
        folders.append(out / f"{name}{i}")
    return folders


@pytest.fixture(scope="module")
def sweeps(hosts2, tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling")
    fast = _sweeps(hosts2, out, "fast")
    hosts2.shape(bandwidth=SLOW_LINK)
    try:
        slow = _sweeps(hosts2, out, "slow")
    finally:
        hosts2.shape(bandwidth=None)
    return fast, slow


def _configs(report) -> dict[int, dict]:
    (series,) = report["series"]
    return {c["nproc"]: c for c in series["configs"]}


def _comm_share(cfg) -> float:
    split = cfg["split_s_per_step"]
    return (split["comm_exposed"]["median"] + split["sync_wait"]["median"]) / cfg["period_s"]["median"]


def test_slow_link_lowers_efficiency_and_attribution_adds_up(sweeps):
    fast, slow = (_configs(scaling(p)) for p in sweeps)
    for n in (2, 4):
        f, s = fast[n], slow[n]
        print(f"\nn={n}: efficiency fast {f['attribution']['efficiency']['median']:.1%} slow {s['attribution']['efficiency']['median']:.1%}; "
              f"comm share fast {_comm_share(f):.1%} slow {_comm_share(s):.1%}")
        assert s["attribution"]["efficiency"]["median"] < f["attribution"]["efficiency"]["median"]
        assert _comm_share(s) > _comm_share(f)
        assert s["attribution"]["causes"]["comm_exposed"] > f["attribution"]["causes"]["comm_exposed"]
        for name, cfg in (("fast", f), ("slow", s)):
            a = cfg["attribution"]
            print(f"  {name}: gap {a['gap']:+.3f} = " + " ".join(f"{k} {v:+.3f}" for k, v in a["causes"].items())
                  + f" (sum {a['sum']:+.3f})")
            assert abs(a["sum"] - a["gap"]) <= ATTRIBUTION_TOLERANCE
        model = s["comm_model"]
        print(f"  slow comm {model['transfer_s'] * 1e3:.1f} ms/step vs ring bound {model['bound_s'] * 1e3:.1f} ms "
              f"({model['ratio']:.2f}x) at {model['link_bytes_per_s'] * 8 / 1e6:.1f} Mbit/s measured")


def test_projection_against_held_out_size(sweeps):
    _, slow = sweeps
    report = scaling(slow, fit=[1, 2])
    (series,) = report["series"]
    rows = {p["nproc"]: p for p in series["projection"]["sizes"]}
    four = rows[4]
    print(f"\nprojected 4 ranks from 1 and 2: {four['throughput']:.1f}/s, measured {four['measured']['median']:.1f}/s "
          f"({four['error']:+.1%}); 8 ranks {rows[8]['throughput']:.1f}/s")
    for a in series["projection"]["assumptions"]:
        print("  " + a)
    assert abs(four["error"]) <= PROJECTION_TOLERANCE


def test_cli_writes_the_report(sweeps):
    fast, _ = sweeps
    out = fast[0].parent / "report"
    res = subprocess.run([sys.executable, "-m", "tbdprof", "scaling", *map(str, fast), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "efficiency gap by cause" in res.stdout
    assert {p.name for p in out.glob("scaling*")} >= {"scaling.json", "scaling.html", "scaling-throughput.png"}


def _run_of(sweep_dir, nproc: int):
    from tbdprof import store

    (run,) = [r for r in store.read_json(sweep_dir / "sweep.json")["runs"] if r["nproc"] == nproc]
    return sweep_dir / run["path"]


def test_diagnose_names_the_slow_link(sweeps):
    """The planted slow link (issue 8): diagnose calls the 2-host run communication-bound, the fast one not."""
    from tbdprof.analysis.diagnose import diagnose

    fast, slow = (_run_of(folders[0], 2) for folders in sweeps)
    tail = {}
    for name, run in (("slow", slow), ("fast", fast)):
        found = [f for f in diagnose(run) if f.kind == "communication_bound"]
        tail[name] = found[0].evidence["comm_tail_fraction"] if found else 0.0
    print(f"\ncommunication tail share of the step: {tail}")
    assert tail["slow"] >= 0.25  # communication_bound's threshold
    # On the unshaped link the tail is normally under the threshold; a loaded CI run once put it over (with a
    # straggler): then the slow link's must still be far above it.
    assert tail["fast"] < 0.25 or tail["slow"] >= 1.5 * tail["fast"], tail

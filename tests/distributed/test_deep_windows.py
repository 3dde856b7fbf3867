"""Deep windows on a real 2-rank run (`tbdprof profile --deep-every 8 -- torchrun ...` of an unchanged script):
the same window steps on both ranks, ops inside them, and a planted slow layer on rank 1 named by `tbdprof ops`
(scripts_deep/slow_layer.py)."""

import json
import sys
from pathlib import Path

from clirun import run_cli
from tbdprof.launch.local import free_port

SCRIPT = Path(__file__).parent / "scripts_deep" / "slow_layer.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"


def test_windows_agree_across_ranks_and_name_the_slow_layer(tmp_path):
    run_dir = tmp_path / "deep"
    run_cli("profile", "--out", tmp_path, "--run-id", "deep", "--deep-every", "8", "--deep-steps", "3", "--",
            TORCHRUN, "--nproc-per-node", "2", "--master-port", free_port(), SCRIPT,
            "--slow-rank", "1", "--extra", "40", "--steps", "20", env={"OMP_NUM_THREADS": "1"})
    wins = {}
    for f in sorted(run_dir.glob("host=*/rank=*/deep.json")):
        info = json.loads(f.read_text())
        wins[int(f.parent.name.split("=")[1])] = [(w["first"], w["last"]) for w in info["windows"]]
        assert all(w["trace"] and w["trace_bytes"] > 0 and w["ops"] > 0 for w in info["windows"])
    assert wins == {0: [(8, 10), (16, 18)], 1: [(8, 10), (16, 18)]}

    out = json.loads(run_cli("ops", run_dir, "--json").stdout)
    assert sorted(out["per_rank"]) == ["0", "1"]
    diff = out["difference"]
    assert diff["rank"] == 1
    top = diff["layers"][0]
    assert top["module"] == "body.slow" and (top["ratio"] is None or top["ratio"] > 3)
    text = run_cli("ops", run_dir).stdout
    assert "layer body.slow" in text.split("rank 1 vs the median")[1].splitlines()[1]
    forward = json.loads(run_cli("ops", run_dir, "--phase", "forward", "--json").stdout)
    assert forward["difference"]["layers"][0]["module"] == "body.slow"
    bad = run_cli("ops", run_dir, "--rank", "7", check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1

    # diagnose goes from "rank 1 is a straggler" to the layer, in the same finding
    (straggler,) = [f for f in json.loads(run_cli("diagnose", run_dir, "--json").stdout) if f["kind"] == "straggler"]
    assert straggler["ranks"] == [1], straggler["title"]
    assert straggler["evidence"]["operator_level"]["layer"]["what"] == "layer body.slow", straggler["evidence"]
    assert "layer body.slow takes" in straggler["title"] and "tbdprof ops" in straggler["recommendation"]

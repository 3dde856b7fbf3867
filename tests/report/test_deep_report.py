"""Deep windows in the report, compare and the Chrome export, on real runs made once: a 2-rank run whose rank 1
has a planted slow layer (tests/distributed/scripts_deep/slow_layer.py) and a 1-rank run without it.
The report's operators section (summary.json, terminal, report.html in Chromium), `compare` at operator level,
and the export placing ops under their phases on the aligned timeline."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest
from browser import inspect
from clirun import run_cli

from tbdprof.launch.local import free_port

SCRIPT = Path(__file__).parents[1] / "distributed" / "scripts_deep" / "slow_layer.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """(slow: 2 ranks, rank 1's body.slow 40 matrix products more; plain: 1 rank), windows at steps 8-10
    (`tbdprof profile --deep-every 8 --deep-steps 3` of the unchanged script)."""
    out = tmp_path_factory.mktemp("deep")
    for name, nproc, *args in (("slow", 2, "--slow-rank", "1", "--extra", "40"), ("plain", 1)):
        # one thread per rank in both runs: the same kernels, compared
        run_cli("profile", "--out", out, "--run-id", name, "--deep-every", "8", "--deep-steps", "3", "--", TORCHRUN,
                "--nproc-per-node", nproc, "--master-port", free_port(), SCRIPT, "--steps", "14", *args,
                env={"OMP_NUM_THREADS": "1"})
    return out / "slow", out / "plain"


def test_report_has_an_operators_section_with_the_windows_cost_and_bytes(runs, chromium, capsys):
    slow, _ = runs
    terminal = run_cli("report", slow).stdout
    ops = json.loads((slow / "summary.json").read_text())["operators"]
    assert ops["window_steps"] == 2 * 3  # steps 8-10 on both ranks
    cost, size = ops["cost"], ops["bytes"]
    assert cost["windows"] == 2 and cost["window_step_ms"] > 0 and cost["neighbour_step_ms"] > 0
    assert cost["start_call_s"] > 0 and cost["stop_call_s"] > 0
    traces = sum(w["trace_bytes"] for f in slow.glob("host=*/rank=*/deep.json") for w in json.loads(f.read_text())["windows"])
    assert size["traces"] == traces > 0 and size["rows"] > 0 and size["per_window_step"] == pytest.approx(size["total"] / 6)
    forward = ops["phases"]["forward"]
    assert forward["layers"][0]["module"] == "body.slow" and 0 < forward["layers"][0]["share"] < 1
    assert all(0 <= o["share"] < 1 for d in ops["phases"].values() for o in d["operators"])
    assert ops["kernels"].startswith("not recorded")
    assert "deep windows: 2 windows, 6 rank-steps" in terminal and "body.slow" in terminal
    assert "kernels not recorded" in terminal
    found = inspect(chromium, slow / "report.html")
    assert found["errors"] == [] and found["requests"] == [(slow / "report.html").resolve().as_uri()]
    assert found["sections"][found["sections"].index("Step breakdown") + 1] == "Operators"
    text = found["text"]
    section = text[text.rindex("Operators"):text.index("Utilization", text.rindex("Operators"))]
    assert "2 deep windows" in section and "per window step" in section and "GPU kernels: not recorded" in section
    assert "body.slow" in section and "aten::mm" in section


def test_compare_names_the_layer_whose_time_changed_most(runs):
    slow, plain = runs
    res = json.loads(run_cli("compare", plain, slow, "--json").stdout)["operators"]
    assert res["window_steps"] == {"a": 3, "b": 6}
    top = res["layers"][0]
    assert top["name"] == "body.slow" and top["b_ms"] > 3 * top["a_ms"] and top["diff_ms"] > 0
    assert {r["name"] for r in res["operators"][:3]} & {"aten::mm", "aten::tanh", "aten::tanh_backward"}
    text = run_cli("compare", plain, slow).stdout
    layers = text[text.index("layers whose self time"):].splitlines()
    assert any(line.split("│")[1].strip() == "body.slow" for line in layers if "│" in line), text
    from tbdprof.analysis.compare import compare_operators

    assert compare_operators(None, None) is None  # no windows on either side: nothing said
    assert compare_operators({"window_steps": 4, "operators": {}, "layers": {}}, None)["note"].startswith("run B has no deep window")


def test_chrome_export_places_ops_under_their_phases(runs, tmp_path):
    slow, _ = runs
    out = tmp_path / "trace.json.gz"
    run_cli("export", slow, "--format", "chrome", "-o", out)
    events = json.loads(gzip.open(out).read())["traceEvents"]
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    ops = [e for e in events if e.get("cat") == "op"]
    assert {e["pid"] for e in ops} == {0, 1} and all(threads[(e["pid"], e["tid"])].startswith("ops ") for e in ops)
    phases = [e for e in events if e.get("cat") == "phase"]
    slow_ops = [e for e in ops if e["pid"] == 1 and e["args"].get("layer") == "body.slow" and e["name"] == "aten::mm"]
    assert slow_ops and all(8 <= e["args"]["step"] <= 11 for e in slow_ops)
    for e in slow_ops:  # inside the phase span it names, on the same clock
        (ph,) = [p for p in phases if p["pid"] == 1 and p["args"]["step"] == e["args"]["step"] and p["name"] == e["args"]["phase"]]
        assert ph["ts"] <= e["ts"] and e["ts"] + e["dur"] <= ph["ts"] + ph["dur"] + 1
    assert {e["args"]["phase"] for e in slow_ops} == {"forward", "backward"}
    # window steps' phases are on the timeline too (the always-on figures leave them out, the export does not)
    assert {p["args"]["step"] for p in phases if p["pid"] == 0} >= set(range(8, 12))

"""report.html in a real browser: renders with no console errors, no broken images, no requests
beyond the file itself, and shows strings from the run as text, never as markup."""

from __future__ import annotations

import json
import shutil

from browser import inspect, screenshot

from tbdprof import cli, schema
from tbdprof.analysis.cost import cost_line

NASTY = '</td><script>console.error("injected")</script><img src="x" onerror="console.error(1)">'


def _inject(run_dir):
    """Put markup where a hostile or careless user could: env vars, host name, workload, options."""
    for rank_json in run_dir.glob(f"host=*/rank=*/{schema.RANK_FILE}"):
        meta = json.loads(rank_json.read_text(encoding="utf-8"))
        meta["env"].setdefault("env", {})["OMP_NUM_THREADS"] = NASTY
        meta["host"] = "<b>host&amp;</b>"
        meta["launcher"] = "$x$ <i>"
        rank_json.write_text(json.dumps(meta), encoding="utf-8")
    run_json = run_dir / schema.RUN_FILE
    meta = json.loads(run_json.read_text(encoding="utf-8"))
    meta["workload"] = "<svg onload=alert(1)>"
    run_json.write_text(json.dumps(meta), encoding="utf-8")


def test_report_renders_in_chromium(chromium, run_copy, tmp_path, capsys):
    _inject(run_copy)
    assert cli.main(["report", str(run_copy), "--link-bandwidth", "10Gbit"]) == 0
    terminal = " ".join(capsys.readouterr().out.split())
    moved = tmp_path / "moved elsewhere ✓"  # the report must open from a copied folder
    moved.mkdir()
    page = shutil.copy(run_copy / "report.html", moved / "report.html")
    found = inspect(chromium, page)
    assert found["errors"] == []
    assert found["requests"] == [page.resolve().as_uri()]
    assert found["broken"] == [] and found["images"] == 0 and found["scripts"] == 0
    assert found["svgs"] >= 8 and found["empty_svgs"] == 0
    assert found["sections"] == ["Coverage", "Overview", "Step time", "Step breakdown", "Utilization", "Memory", "Network", "I/O",
                                 "Environment", "Ranks"]
    for literal in (NASTY, "<b>host&amp;</b>", "<svg onload=alert(1)>", "$x$ <i>"):
        assert literal in found["text"]
    cost = cost_line(json.loads((run_copy / "summary.json").read_text(encoding="utf-8"))["profiling_cost"])
    assert cost.startswith("profiling cost: ") and cost in terminal and cost in found["text"]  # the same line in both
    shot = screenshot(chromium, page, tmp_path / "report.png")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    keep = __import__("os").environ.get("TBDPROF_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_report_opens_with_coverage(chromium, run_copy, tmp_path, capsys):
    """The coverage section comes first, one row per item with ✓ / ✗ and why; a gap a rank declared is named."""
    why = "DDP model seen, the script registered its own comm hook"
    rank_json = next(run_copy.glob(f"host=*/rank=1/{schema.RANK_FILE}"))
    meta = json.loads(rank_json.read_text(encoding="utf-8"))
    meta.setdefault(schema.COVERAGE_FILE_KEY, {})["comm"] = {"state": "missing", "how": why}
    rank_json.write_text(json.dumps(meta), encoding="utf-8")
    assert cli.main(["report", str(run_copy)]) == 0
    terminal = capsys.readouterr().out
    assert terminal.splitlines()[1].startswith("coverage") and "✗ comm" in terminal
    cov = json.loads((run_copy / "summary.json").read_text(encoding="utf-8"))["coverage"]
    assert set(cov) == set(schema.COVERAGE_ITEMS) and all(set(e) == {"state", "how"} for e in cov.values())
    assert cov["steps"]["state"] == cov["phases"]["state"] == "recorded"
    assert cov["comm"] == {"state": "missing", "how": f"rank 1: {why}"}
    found = inspect(chromium, run_copy / "report.html")
    assert found["errors"] == [] and found["sections"][:2] == ["Coverage", "Overview"]
    text = found["text"]
    lines = [line.strip() for line in text.splitlines()]
    section = lines[lines.index("Coverage") + 1:lines.index("Overview")]  # from its heading to the next (not the nav)
    rows = [line.split("\t") for line in section if "\t" in line]
    assert [r[:2] for r in rows] == [["✓", "steps"], ["✓", "phases"], ["✗", "comm"], ["✓", "memory"]]
    assert rows[2][2] == f"missing: rank 1: {why}"
    assert any(line.startswith("Figures that need comm are incomplete") for line in section)

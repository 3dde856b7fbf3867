"""report.html in a real browser: renders with no console errors, no broken images, no requests
beyond the file itself, and shows strings from the run as text, never as markup."""

from __future__ import annotations

import json
import shutil

from browser import inspect, screenshot

from tbdprof import cli, schema

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
    capsys.readouterr()
    moved = tmp_path / "moved elsewhere ✓"  # the report must open from a copied folder
    moved.mkdir()
    page = shutil.copy(run_copy / "report.html", moved / "report.html")
    found = inspect(chromium, page)
    assert found["errors"] == []
    assert found["requests"] == [page.resolve().as_uri()]
    assert found["broken"] == [] and found["images"] == 0 and found["scripts"] == 0
    assert found["svgs"] >= 8 and found["empty_svgs"] == 0
    assert found["sections"] == ["Overview", "Step time", "Step breakdown", "Utilization", "Memory", "Network", "I/O",
                                 "Environment", "Ranks"]
    for literal in (NASTY, "<b>host&amp;</b>", "<svg onload=alert(1)>", "$x$ <i>"):
        assert literal in found["text"]
    shot = screenshot(chromium, page, tmp_path / "report.png")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    keep = __import__("os").environ.get("TBDPROF_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)

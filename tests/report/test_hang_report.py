"""The report shows the hang (issue 22): a real planted hang (rank 1 stuck in its DataLoader worker's __getitem__,
rank 0 waiting in DDP's allreduce) in the terminal, summary.json, report.html (checked in Chromium) and the
Chrome trace; a run that stalled twice keeps both episodes; a healthy run shows none of it."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from browser import inspect
from clirun import kill_tree
from conftest import HANG_S, PLANT
from test_chrome_export import _validate

from tbdprof.launch.local import free_port

from tbdprof import cli
from tbdprof.analysis.diagnose import diagnose

LINE = next(i for i, line in enumerate(PLANT.read_text().splitlines(), 1) if "# the planted hang" in line)
PLACE = f"stuck in __getitem__ (plant_hang.py:{LINE} in __getitem__)"
# The figures over time besides the step time, by the id of their hang band (one per figure, the first band's).
TIMELINE_BANDS = ("hang-band-cpu-process_pct", "hang-band-cpu-system_pct", "hang-band-mem-rss_bytes", "hang-band-net-bytes_sent",
                  "hang-band-net-bytes_recv")

# What the page shows of the hang: the Hang section's title, table rows and stack; the timelines' marks.
HANG_PROBE = """(() => {
  const text = id => { const e = document.getElementById(id); return e ? e.textContent.trim() : null; };
  const box = id => { const e = document.getElementById(id); if (!e) return null; const r = e.getBoundingClientRect(); return [r.width, r.height]; };
  return {
    title: (document.querySelector('.hang-title') || {}).textContent || null,
    rows: [...document.querySelectorAll('table.hang-ranks tr[data-rank]')].map(r => [r.dataset.rank, r.dataset.state, r.dataset.place]),
    stack: (document.querySelector('pre.stack[data-rank="1"]') || {}).textContent || null,
    label1: text('hang-rank-1-label'), label0: text('hang-rank-0-label'),
    band1: box('hang-rank-1-band'), steps_band: box('hang-band-steps'),
    timeline_bands: Object.fromEntries(%s.map(id => [id, box(id)])),
    figure_ranks: (document.querySelector('figure.hang-timeline') || {dataset: {}}).dataset.hangRanks || null,
  };
})()""" % json.dumps(TIMELINE_BANDS)


def test_report_shows_the_hang(hang_run, chromium, tmp_path, capsys):
    run = tmp_path / "hang run"
    shutil.copytree(hang_run, run)
    title = next(f.title for f in diagnose(run) if f.kind == "hang")  # the finding diagnose gives
    assert cli.main(["report", str(run)]) == 0
    terminal = capsys.readouterr().out.splitlines()
    first = next(i for i, line in enumerate(terminal) if line.startswith("HANG: "))
    assert first <= 2 and title[:60] in terminal[first], terminal[:6]  # right after the header (which may wrap)
    assert any(line.startswith("  rank 1: hung (culprit) at step 6, stuck in __getitem__") for line in terminal), terminal[:8]

    hangs = json.loads((run / "summary.json").read_text(encoding="utf-8"))["hangs"]
    assert hangs["title"] == title and hangs["severity"] == "critical" and hangs["step"] == 6
    assert hangs["culprit_ranks"] == [1] and hangs["hung_ranks"] == [0, 1] and hangs["resumed"] is False
    r1, r0 = hangs["per_rank"]["1"], hangs["per_rank"]["0"]
    assert r1["state"] == "hung" and r1["culprit"] and r1["label"] == PLACE and r1["place"] == "data_loading"
    assert r0["state"] == "hung" and not r0["culprit"] and r0["label"].startswith("waits in allreduce bucket 0")
    for r in (r0, r1):  # aligned seconds since the run's start: last progress < hang seen <= end of its recording
        assert 0 <= r["no_progress_since_s"] < r["at_s"] <= r["until_s"] <= hangs["end_s"]
        assert r["at_s"] - r["no_progress_since_s"] >= 3.0 and r["no_progress_for_s"] >= 3.0
    assert "__getitem__" in hangs["stack_excerpt"]["1"]

    found = inspect(chromium, run / "report.html", extra=HANG_PROBE)
    assert found["errors"] == [] and found["scripts"] == 0 and found["empty_svgs"] == 0
    assert found["sections"][:2] == ["Hang", "Coverage"]
    page = found["extra"]
    assert page["title"].strip() == title
    assert page["rows"] == [["0", "hung", r0["label"]], ["1", "hung", PLACE]]
    assert page["stack"] and f"line {LINE} in __getitem__" in page["stack"]
    assert page["label1"] == PLACE and page["label0"] == r0["label"] and page["figure_ranks"] == "0,1"
    assert page["band1"] and page["band1"][0] > 50 and page["band1"][1] > 5  # drawn, not a sliver
    assert page["steps_band"] and page["steps_band"][0] > 50  # the step-time figure is shaded too
    for gid, box in page["timeline_bands"].items():  # and so are the CPU, memory and network timelines
        assert box and box[0] > 50 and box[1] > 20, (gid, box)
    assert all(len(h["episodes"]) == 1 and not h["episodes"][0]["resumed"] for h in hangs["per_rank"].values())


def test_chrome_export_has_the_hang(hang_run, tmp_path, capsys):
    out = tmp_path / "trace.json.gz"
    assert cli.main(["export", str(hang_run), "-o", str(out)]) == 0
    with gzip.open(out, "rt", encoding="utf-8") as f:
        events = _validate(json.load(f))
    hangs = [e for e in events if e.get("cat") == "hang"]
    threads = {(e["pid"], e["args"]["name"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {(0, "hangs"), (1, "hangs")} <= threads
    bands = {e["pid"]: e for e in hangs if e["ph"] == "X"}
    seen = {e["pid"]: e for e in hangs if e["ph"] == "i"}
    assert set(bands) == set(seen) == {0, 1}
    assert bands[1]["name"] == f"no progress: {PLACE}" and bands[1]["args"]["resumed"] is False
    assert seen[1]["name"] == f"hang seen: {PLACE}" and "__getitem__" in seen[1]["args"]["stacks"]
    for r in (0, 1):  # the band starts at the last progress and covers the moment the hang was seen
        assert bands[r]["ts"] < seen[r]["ts"] <= bands[r]["ts"] + bands[r]["dur"] + 1
        assert (seen[r]["ts"] - bands[r]["ts"]) / 1e6 >= 3.0
    last_step_end = max(e["ts"] + e["dur"] for e in events if e["ph"] == "X" and e["cat"] == "step" and e["pid"] == 1)
    assert abs(bands[1]["ts"] - last_step_end) < 5e4, (bands[1]["ts"], last_step_end)  # within 50 ms: the same clock
    only0 = tmp_path / "rank0.json"
    assert cli.main(["export", str(hang_run), "-o", str(only0), "--ranks", "0"]) == 0
    assert {e["pid"] for e in json.loads(only0.read_text())["traceEvents"] if e.get("cat") == "hang"} == {0}


def test_healthy_run_shows_no_hang(real_run, tmp_path, capsys):
    run = tmp_path / "healthy"
    shutil.copytree(real_run, run)
    assert cli.main(["report", str(run)]) == 0
    assert "HANG" not in capsys.readouterr().out
    assert json.loads((run / "summary.json").read_text(encoding="utf-8"))["hangs"] is None
    page = (run / "report.html").read_text(encoding="utf-8")
    assert 'id="hang"' not in page and "hang-rank-" not in page and "hang-band-steps" not in page
    out = tmp_path / "t.json"
    assert cli.main(["export", str(run), "-o", str(out)]) == 0
    assert not [e for e in json.loads(out.read_text())["traceEvents"] if e.get("cat") == "hang" or e.get("tid") == 3]


@pytest.fixture(scope="module")
def stalled_twice(tmp_path_factory) -> Path:
    """`tbdprof profile -- torchrun`: rank 1 pauses 4.5 s at steps 4 and 10 (threshold 3 s), so both ranks hang and
    resume twice; the job ends by itself."""
    out = tmp_path_factory.mktemp("stalls")
    cmd = [sys.executable, "-m", "tbdprof", "profile", "--out", str(out), "--run-id", "run", "--flush-s", "0.5", "--",
           str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2", "--master-port", str(free_port()),
           str(PLANT), "--mode", "slow", "--rank", "1", "--at", "4", "--again", "6", "--slow-s", "4.5", "--steps", "14"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "TBDPROF_HANG_S": str(HANG_S), "TBDPROF_STATUS_S": "0.5"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=180)
    finally:
        kill_tree(proc)
    assert proc.returncode == 0, output[-3000:]
    return out / "run"


def test_every_hang_episode_is_kept(stalled_twice, chromium, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(stalled_twice, run)
    assert cli.main(["report", str(run)]) == 0
    hangs = json.loads((run / "summary.json").read_text(encoding="utf-8"))["hangs"]
    assert hangs["resumed"] is True and hangs["severity"] == "info", hangs
    for r, h in hangs["per_rank"].items():
        eps = h["episodes"]
        assert [e["step"] for e in eps] == [4, 10] and all(e["resumed"] for e in eps), (r, eps)
        for e in eps:  # each from the last progress, through the moment it was seen, to its resume
            assert e["no_progress_since_s"] < e["at_s"] < e["until_s"] and e["at_s"] - e["no_progress_since_s"] >= HANG_S, e
            assert HANG_S <= e["no_progress_for_s"] < 4.5 + 2.0, e
        assert eps[0]["until_s"] < eps[1]["no_progress_since_s"], eps  # two pauses, apart
        assert eps[1]["no_progress_since_s"] == h["no_progress_since_s"]  # the row's own figures are the last episode's
    pause = hangs["per_rank"]["1"]["episodes"][0]
    assert pause["label"].startswith("stuck in") and "plant_hang.py" in pause["label"], pause  # rank 1: in its planted sleep
    title = next(f.title for f in diagnose(run) if f.kind == "hang" and f.ranks == [1])
    assert "then resumed (2 such pauses; the first at step 4)" in title, title
    probe = "Object.fromEntries(['hang-band-steps', 'hang-band-steps-2', 'hang-band-mem-rss_bytes', 'hang-band-mem-rss_bytes-2']" \
            ".map(id => { const e = document.getElementById(id); if (!e) return [id, null]; const r = e.getBoundingClientRect(); " \
            "return [id, [r.left, r.right, r.width]]; }))"
    page = inspect(chromium, run / "report.html", extra=probe)
    assert page["errors"] == [], page["errors"]
    bands = page["extra"]
    for first, second in (("hang-band-steps", "hang-band-steps-2"), ("hang-band-mem-rss_bytes", "hang-band-mem-rss_bytes-2")):
        assert bands[first] and bands[second] and bands[first][2] > 10 and bands[second][2] > 10, bands
        assert bands[first][1] < bands[second][0], bands  # drawn apart, in time order

"""A rank killed mid-run leaves every finished segment readable."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow.parquet as pq

SCRIPT = textwrap.dedent("""
    import sys, time, tbdprof
    prof = tbdprof.Profiler(out=sys.argv[1], run_id="killed", flush_s=0.2, sample_hz=20)
    with prof:
        while True:
            with prof.step(items=1):
                with prof.phase("forward"):
                    time.sleep(0.01)
""")


def _launch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "TBDPROF_RUN_DIR")}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env)


def _wait_for_segments(run, n=3, timeout=60, rank="0"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list(run.glob(f"host=*/rank={rank}/spans-*.parquet"))) >= n:
            return
        time.sleep(0.1)
    raise AssertionError("no segments written")


def _killed_run(tmp_path):
    """A profiled loop SIGKILLed after a few flushes: its run folder."""
    proc = _launch(tmp_path)
    run = tmp_path / "killed"
    _wait_for_segments(run)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return run


def test_sigkill_leaves_finished_segments_readable(tmp_path):
    run = _killed_run(tmp_path)
    segments = sorted(run.glob("host=*/rank=0/*.parquet"))
    assert segments
    rows = sum(pq.read_table(s).num_rows for s in segments if s.name.startswith("spans"))
    assert rows > 0
    meta = json.loads(next(run.glob("host=*/rank=0/rank.json")).read_text())
    assert meta["status"] == "running"  # never marked complete


def test_sigterm_flushes_and_marks_the_rank(tmp_path):
    proc = _launch(tmp_path)
    run = tmp_path / "killed"
    _wait_for_segments(run, n=1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    meta = json.loads(next(run.glob("host=*/rank=0/rank.json")).read_text())
    assert meta["status"] == "terminated"
    written = sum(pq.read_table(s).num_rows for s in run.glob("host=*/rank=0/spans-*.parquet"))
    assert written == meta["rows_written"]["spans"]
    # every step has its step span; the step the signal interrupted may lack its phase
    assert written >= 2 * meta["steps"] - 1


def test_sigterm_to_the_launcher_stops_and_flushes_every_rank(tmp_path, data_cache):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "TBDPROF_RUN_DIR")}
    launcher = subprocess.Popen([sys.executable, "-m", "tbdprof", "run", "resnet50", "--nproc", "2", "--steps", "100000",
                                 "--flush-s", "0.5", "--out", str(tmp_path), "--run-id", "cancelled", "--no-report"],
                                env=env, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "cancelled"
    _wait_for_segments(run, n=2, timeout=120, rank="*")
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=60) != 0
    statuses = sorted(json.loads(p.read_text())["status"] for p in run.glob("host=*/rank=*/rank.json"))
    assert statuses == ["terminated", "terminated"]  # both ranks flushed and closed, none orphaned
    assert json.loads((run / "run.json").read_text())["status"] == "failed"


def test_report_names_the_rank_that_stopped_and_when(tmp_path):
    run = _killed_run(tmp_path)
    from tbdprof.analysis.report import report

    summary = report(run)
    assert summary["incomplete_ranks"] == [0] and not summary["complete"]
    last = summary["ranks"][0]["last_seen_s"]
    assert last is not None and last > 0
    html = (run / "report.html").read_text()
    assert "rank 0 stopped at" in html

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


def _wait_for_segments(run, n=3, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list(run.glob("host=*/rank=0/spans-*.parquet"))) >= n:
            return
        time.sleep(0.1)
    raise AssertionError("no segments written")


def test_sigkill_leaves_finished_segments_readable(tmp_path):
    proc = _launch(tmp_path)
    run = tmp_path / "killed"
    _wait_for_segments(run)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
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

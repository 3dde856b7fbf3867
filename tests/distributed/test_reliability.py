"""Profiling never breaks training: a vanished or full output folder, and hostile input to readers."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TRAIN = textwrap.dedent("""
    import shutil, sys, time, tbdprof
    out, action = sys.argv[1], sys.argv[2]
    prof = tbdprof.Profiler(out=out, run_id="r", flush_s=0.1, sample_hz=50)
    with prof:
        for i in range(40):
            with prof.step(items=4):
                with prof.phase("forward"):
                    time.sleep(0.01)
                    if i == 10 and action == "remove":
                        shutil.rmtree(prof.run_dir)
                    if i == 25 and action == "fill":  # after a few flushes
                        with open(prof.rank_dir / "ballast", "wb") as f:
                            try:
                                f.write(b"x" * (1 << 20))
                            except OSError:
                                pass
    print("trained", prof.step_index + 1)
""")


def _train(out, action):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "TBDPROF_RUN_DIR")}
    return subprocess.run([sys.executable, "-c", TRAIN, str(out), action], capture_output=True, text=True, env=env, timeout=120)


def test_output_folder_removed_mid_run(tmp_path):
    proc = _train(tmp_path, "remove")
    assert proc.returncode == 0, proc.stderr
    assert "trained 40" in proc.stdout
    warnings = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(warnings) == 1 and "recording stopped" in warnings[0], proc.stderr


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not root'})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_mid_run(small_tmpfs):
    proc = _train(small_tmpfs, "fill")
    assert proc.returncode == 0, proc.stderr
    assert "trained 40" in proc.stdout
    assert proc.stderr.count("recording stopped") == 1, proc.stderr
    # what was written before the disk filled is still readable
    import pyarrow.parquet as pq

    segs = list(small_tmpfs.glob("r/host=*/rank=0/spans-*.parquet"))
    assert segs and all(pq.read_table(s).num_rows > 0 for s in segs)


# --- hostile input to the readers ------------------------------------------------


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    proc = _train(out, "none")
    assert proc.returncode == 0, proc.stderr
    return out / "r"


def _fresh_copy(good_run, tmp_path_factory, name):
    dst = tmp_path_factory.mktemp(name) / "run with spaces ü"
    shutil.copytree(good_run, dst)
    return dst


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096), where=st.sampled_from(["spans-900001.parquet", "samples-900099.parquet", "memory-900001-900002.parquet"]))
def test_garbage_segments_are_reported_not_fatal(good_run, tmp_path_factory, data, where):
    from tbdprof.analysis.load import open_run
    from tbdprof.analysis.report import summarize

    run = _fresh_copy(good_run, tmp_path_factory, "fuzz")
    rank_dir = next(run.glob("host=*/rank=0"))
    (rank_dir / where).write_bytes(data)
    loaded = open_run(run)
    summary = summarize(loaded)
    assert any(where in p for p in loaded.problems)
    assert summary["steps"] > 0  # the readable part still reports


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_garbage_json_metadata_is_reported_not_fatal(good_run, tmp_path_factory, text):
    from tbdprof.analysis.load import open_run
    from tbdprof.analysis.report import summarize

    run = _fresh_copy(good_run, tmp_path_factory, "fuzzjson")
    (run / "run.json").write_text(text)
    next(run.glob("host=*/rank=0/rank.json")).write_text(text[::-1])
    loaded = open_run(run)
    summarize(loaded)
    try:
        ok = isinstance(json.loads(text), dict)
    except ValueError:
        ok = False
    if not ok:
        assert any("run.json" in p for p in loaded.problems)

"""Scale mode (analysis/load.py): a large recording is read from its rollups, with the raw spans of a zoom window
only. Its files are picked by flush number without opening any; a rank whose files are numbered otherwise is
still read whole. On a synthetic store (tests/perf/synth.py) of 4 ranks x 6 minutes in one-minute files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tbdprof import schema
from tbdprof.analysis import load

_spec = importlib.util.spec_from_file_location("synth", Path(__file__).parents[1] / "perf" / "synth.py")
synth = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("synth", synth)
_spec.loader.exec_module(synth)

RANKS = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("scale") / "r4", ranks=RANKS, hours=0.1, ranks_per_host=2,
                          file_minutes=1, slow_ranks=[1])


def _zoom_steps(run) -> dict[int, int]:
    return dict(run.sql("SELECT rank, count(DISTINCT step) FROM spans WHERE kind = 'step' GROUP BY rank"))


def test_small_recordings_open_raw_and_rollups_only_when_asked(store):
    assert load.rank_hours(load.open_run(store).ranks) == pytest.approx(0.4)
    assert load.open_run(store).zoom is None
    run = load.open_run(store, source="rollups")
    assert run.zoom is not None and run.zoom.steps == load.ZOOM_STEPS
    assert run.source()["mode"] == "rollups" and run.source()["zoom_steps"] == [run.zoom.first, run.zoom.last]


def test_the_zoom_window_reads_a_few_files_and_every_rank_has_all_its_steps(store):
    run = load.open_run(store, source="rollups")
    picked = load._zoom_files(run.con, run, schema.SPANS, set())
    assert len(picked) <= 2 * RANKS < len(run.files[schema.SPANS])  # one or two one-minute files per rank, of six
    assert _zoom_steps(run) == {r: load.ZOOM_STEPS for r in range(RANKS)}
    (lo, hi), = run.sql("SELECT min(step), max(step) FROM spans")
    assert (lo, hi) == (run.zoom.first, run.zoom.last)
    assert run.memory_rollups and run.sql("SELECT count(*) FROM memory")[0][0] == 0


def test_a_rank_whose_files_are_numbered_otherwise_is_read_whole(store, tmp_path):
    import shutil

    copy = tmp_path / "renumbered"
    shutil.copytree(store, copy)
    rank_dir = next(copy.glob("host=*/rank=3"))
    files = sorted(rank_dir.glob("spans-*.parquet"))
    # the same files, numbered half a run off: the flush numbers no longer say where the zoom's time is
    for i, f in enumerate(files):
        f.rename(rank_dir / f".tmp{i}")
    for i in range(len(files)):
        (rank_dir / f".tmp{i}").rename(rank_dir / synth._segment(schema.SPANS, (i + len(files) // 2) % len(files)))
    run = load.open_run(copy, source="rollups")
    import pyarrow.parquet as pq

    guessed = [f for f in load._zoom_files(run.con, run, schema.SPANS, set()) if "rank=3" in f]
    steps = {s for f in guessed for s in pq.read_table(f, columns=["step"]).column("step").to_pylist()}
    assert not set(range(run.zoom.first, run.zoom.last + 1)) <= steps  # the guess missed: the fallback read the rest
    assert _zoom_steps(run) == {r: load.ZOOM_STEPS for r in range(RANKS)}

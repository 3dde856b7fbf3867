"""Step statistics in SQL: percentiles, spread across ranks, throughput in the workload's unit."""

import pytest
from storebuilder import MS, write_rank, write_run

from tbdprof import schema
from tbdprof.analysis.load import open_run
from tbdprof.analysis.steps import step_series, step_stats

T0 = 10**18


def _steps(durations_ms, items=8, units=None):
    rows, t = [], T0
    for i, d in enumerate(durations_ms):
        rows.append((i, "step", schema.KIND_STEP, t, t + d * MS, None, items, units))
        t += d * MS
    return rows


def test_percentiles_spread_and_tokens(tmp_path):
    write_run(tmp_path, 2)
    write_rank(tmp_path, 0, spans=_steps([999, 10, 20, 30, 40], units=20), warmup_steps=1, world_size=2, metadata={"unit": "tokens"})
    write_rank(tmp_path, 1, spans=_steps([999, 20, 40, 60, 80], units=20), warmup_steps=1, world_size=2, metadata={"unit": "tokens"})
    s = step_stats(open_run(tmp_path))
    assert s["steps"] == 4 and s["warmup_steps"] == 1
    assert s["per_rank"]["0"]["median_s"] == pytest.approx(0.025)
    assert s["per_rank"]["1"]["median_s"] == pytest.approx(0.050)
    assert s["step_time_spread"]["rank_spread"] == pytest.approx(1.0)
    assert s["step_time_spread"]["slowest_rank"] == 1
    assert s["unit"] == "tokens"
    # 2 ranks x 4 steady steps over the steady window (rank 1 runs from 999 ms to 1199 ms):
    # 64 samples (items) and 160 tokens (units)
    assert s["throughput_samples_per_s"] == pytest.approx(64 / 0.2)
    assert s["throughput_per_s"] == pytest.approx(160 / 0.2)
    assert s["step_time_s"]["median"] == pytest.approx(0.035)


def test_rank_without_steps_and_series(tmp_path):
    write_run(tmp_path, 2)
    write_rank(tmp_path, 0, spans=_steps([10] * 5000), world_size=2)
    write_rank(tmp_path, 1, world_size=2)
    run = open_run(tmp_path)
    s = step_stats(run)
    assert s["ranks_without_steps"] == [1]
    assert s["throughput_samples_per_s"] == pytest.approx(800)
    series = step_series(run)
    assert list(series) == ["rank 0"] and len(series["rank 0"]) <= 2000

"""The first end-to-end profiled run: `tbdprof run` with 2 ranks, then `tbdprof report`."""

import json

import duckdb
import pytest

from clirun import run_cli

STEPS, WARMUP = 12, 2


@pytest.fixture(scope="module")
def run2(tmp_path_factory, data_cache):
    out = tmp_path_factory.mktemp("runs")
    proc = run_cli("run", "resnet50", "--nproc", 2, "--preset", "tiny", "--steps", STEPS, "--warmup", WARMUP,
                   "--flush-s", 1, "--sample-hz", 20, "--out", out, "--run-id", "e2e")
    return out / "e2e", proc


def _db(run_dir, table):
    return f"read_parquet('{run_dir}/**/{table}-*.parquet', hive_partitioning=true)"


def test_run_prints_the_summary_and_writes_the_report(run2):
    run_dir, proc = run2
    assert "throughput" in proc.stdout and "step breakdown" in proc.stdout
    assert (run_dir / "report.html").stat().st_size > 10_000
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("world_size", "throughput_samples_per_s", "step_time_s", "phase_fraction", "memory_bytes", "ranks"):
        assert key in summary
    assert summary["world_size"] == 2 and summary["complete"]
    assert [r["status"] for r in summary["ranks"]] == ["complete", "complete"]


def test_store_is_readable_by_duckdb_with_hive_partitions(run2):
    run_dir, _ = run2
    rows = duckdb.sql(f"SELECT rank, count(*) FROM {_db(run_dir, 'spans')} WHERE kind = 'step' GROUP BY rank ORDER BY rank").fetchall()
    assert rows == [(0, STEPS), (1, STEPS)]
    hosts = duckdb.sql(f"SELECT DISTINCT host FROM {_db(run_dir, 'samples')}").fetchall()
    assert len(hosts) == 1


def test_phase_fractions_sum_to_one(run2):
    summary = json.loads((run2[0] / "summary.json").read_text())
    assert sum(summary["phase_fraction"].values()) == pytest.approx(1.0, abs=1e-6)
    for rank in summary["breakdown"].values():
        assert sum(rank["phase_fraction"].values()) == pytest.approx(1.0, abs=1e-6)
        assert {"data_wait", "h2d", "forward", "backward", "optimizer"} <= set(rank["phase_fraction"])


def test_weights_bytes_are_parameter_count_times_four(run2):
    run_dir, _ = run2
    summary = json.loads((run_dir / "summary.json").read_text())
    params = summary["run"]["config"]["params"]
    assert params == 130_962  # the tiny ResNet
    assert summary["memory_bytes"]["weights"] == params * 4
    assert summary["memory_bytes"]["gradients"] == params * 4
    assert summary["memory_bytes"]["optimizer_state"] == params * 4  # SGD momentum
    assert summary["memory_bytes"]["activations"] > summary["memory_bytes"]["weights"]


def test_allreduce_spans_carry_all_gradient_bytes_each_step(run2):
    run_dir, _ = run2
    per_step = duckdb.sql(
        f"SELECT rank, step, sum(bytes) FROM {_db(run_dir, 'spans')} WHERE kind = 'comm' GROUP BY ALL"
    ).fetchall()
    assert len(per_step) == 2 * STEPS
    assert {b for _, _, b in per_step} == {130_962 * 4}


def test_network_bytes_are_nonzero_with_two_ranks(run2):
    summary = json.loads((run2[0] / "summary.json").read_text())
    net = next(iter(summary["system"]["network"].values()))
    # The ring allreduce moves 2(n-1)/n x gradient bytes per rank per step over loopback.
    assert net["bytes_sent"] > (STEPS - WARMUP) * 130_962 * 4


def test_throughput_is_samples_over_wall_time_of_the_spans(run2):
    run_dir, _ = run2
    summary = json.loads((run_dir / "summary.json").read_text())
    samples, t0, t1 = duckdb.sql(
        f"SELECT sum(items), min(start_ns), max(end_ns) FROM {_db(run_dir, 'spans')} WHERE kind = 'step' AND step >= {WARMUP}"
    ).fetchall()[0]
    assert samples == 2 * (STEPS - WARMUP) * 16
    # the report aligns clocks (offsets of microseconds on one host), so allow 1%
    assert summary["throughput_samples_per_s"] == pytest.approx(samples / ((t1 - t0) / 1e9), rel=0.01)


def test_clock_offsets_are_estimated_for_every_rank(run2):
    for rank_json in run2[0].glob("host=*/rank=*/rank.json"):
        meta = json.loads(rank_json.read_text())
        for when in ("start", "end"):
            est = meta["clock"][when]
            assert abs(est["offset_ns"]) < 5_000_000  # same host: well under 5 ms
            assert est["uncertainty_ns"] < 5_000_000


def test_rank_metadata_records_environment_and_config(run2):
    meta = json.loads(next(run2[0].glob("host=*/rank=1/rank.json")).read_text())
    assert meta["launcher"] == "local" and meta["world_size"] == 2
    assert meta["env"]["torch"].startswith("2.")
    assert meta["env"]["env"]["OMP_NUM_THREADS"]
    assert meta["metadata"]["global_batch_size"] == 32
    assert meta["env"]["dist_backend"] == "gloo"


def test_report_command_on_the_run(run2):
    proc = run_cli("report", run2[0], "--json")
    assert json.loads(proc.stdout)["world_size"] == 2


def test_unprofiled_baseline_leaves_step_times(tmp_path, data_cache):
    run_cli("run", "resnet50", "--steps", 4, "--no-profile", "--out", tmp_path, "--run-id", "base")
    base = json.loads(next((tmp_path / "base").glob("host=*/rank=0/timing.json")).read_text())
    assert len(base["step_times_s"]) == 4
    assert not list((tmp_path / "base").glob("**/*.parquet"))

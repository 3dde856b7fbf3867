"""On a real 2-rank run, the rollups each writer made give the figures the raw spans give: counts,
sums and bytes exactly, step-time quantiles within 1 %. Raw durations are read as recorded, on each
rank's clock, as the writer summed them (the aligned views correct them for clock drift)."""

import pytest

from clirun import run_cli
from tbdprof import schema
from tbdprof.analysis import load, rollups

STEPS = 40


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_cache):
    out = tmp_path_factory.mktemp("runs")
    run_cli("run", "resnet50", "--nproc", 2, "--preset", "tiny", "--steps", STEPS, "--warmup", 2, "--flush-s", 1,
            "--out", out, "--run-id", "rollups", "--no-report")
    r = load.open_run(out / "rollups")
    ranks = {int(p.split("rank=")[1].split("/")[0]) for p in r.files[schema.SPANS]}
    scans = [f"SELECT *, {rank} AS rank FROM read_parquet({[p for p in r.files[schema.SPANS] if f'rank={rank}/' in p]!r})"
             for rank in ranks]
    r.con.execute("CREATE VIEW raw_spans AS " + " UNION ALL ".join(scans))
    return r, rollups.whole_run(r)


def test_step_counts_sums_and_quantiles_match_the_raw_spans(run):
    r, fig = run
    assert sorted(fig["ranks"]) == [0, 1]
    for rank, got in fig["ranks"].items():
        raw = r.sql("SELECT count(*), sum(end_ns - start_ns), min(end_ns - start_ns), max(end_ns - start_ns), sum(items) "
                    "FROM raw_spans WHERE kind = ? AND rank = ?", [schema.KIND_STEP, rank])[0]
        assert (got["count"], got["sum_ns"], got["min_ns"], got["max_ns"], got["items"]) == raw and raw[0] == STEPS
        for name, q in rollups.QUANTILES.items():
            (want,), = r.sql("SELECT quantile_disc(end_ns - start_ns, ?) FROM raw_spans WHERE kind = ? AND rank = ?",
                             [q, schema.KIND_STEP, rank])
            assert abs(got[f"{name}_ns"] - want) <= 0.01 * want, (rank, name, got[f"{name}_ns"], want)
    (want,), = r.sql("SELECT quantile_disc(end_ns - start_ns, 0.5) FROM raw_spans WHERE kind = ?", [schema.KIND_STEP])
    assert fig["steps"]["count"] == 2 * STEPS and abs(fig["steps"]["median_ns"] - want) <= 0.01 * want


def test_phase_sums_and_comm_bytes_match_the_raw_spans(run):
    r, fig = run
    raw = r.sql("SELECT rank, name, sum(end_ns - start_ns) FROM raw_spans WHERE kind = ? GROUP BY ALL", [schema.KIND_PHASE])
    assert {(rank, name): int(s) for rank, name, s in raw} == {
        (rank, name): s for rank, phases in fig["phases_by_rank"].items() for name, s in phases.items()}
    assert {schema.PHASE_FORWARD, schema.PHASE_BACKWARD, schema.PHASE_OPTIMIZER} <= set(fig["phases"])
    raw = r.sql("SELECT name, count(*), sum(end_ns - start_ns), sum(bytes) FROM raw_spans WHERE kind = ? GROUP BY name",
                [schema.KIND_COMM])
    assert raw and {n: (c, int(s), int(b)) for n, c, s, b in raw} == {
        n: (f["count"], f["sum_ns"], f["bytes"]) for n, f in fig["comm"].items()}


def test_one_row_per_minute_whatever_the_flushes_and_the_samples_too(run):
    r, _ = run
    # 1 s flushes, one row per (rank, minute, kind, name, device): intervals are written once they are over
    (rows, keys), = r.sql("SELECT count(*), count(DISTINCT (rank, interval_ns, kind, name, device)) FROM rollups")
    assert rows == keys and r.sql("SELECT count(*) FROM rollups WHERE kind = ?", [schema.KIND_STEP])[0][0] <= 2 * 2
    (increase, raw), = r.sql(
        "SELECT (SELECT sum(value_sum) FROM rollups WHERE kind = $c AND name = 'io.read_chars' AND rank = 0), "
        "(SELECT max(value) - min(value) FROM samples WHERE metric = 'io.read_chars' AND rank = 0)",
        {"c": schema.ROLLUP_COUNTER})
    assert raw > 0 and increase == pytest.approx(raw)

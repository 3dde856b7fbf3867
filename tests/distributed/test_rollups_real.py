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


@pytest.fixture(scope="module")
def scale_summary(run):
    """The report's figures of the same run opened in scale mode (whole-run figures from the rollups)."""
    from tbdprof.analysis import report

    r, _ = run
    scaled = load.open_run(r.path, source="rollups")
    assert scaled.zoom is not None and load.open_run(r.path).zoom is None  # 2 ranks x seconds: raw by default
    return scaled, report.summarize(scaled)


def test_report_in_scale_mode_gives_the_raw_figures(run, scale_summary):
    r, _ = run
    scaled, s = scale_summary
    assert s["source"]["mode"] == "rollups" and s["source"]["zoom_steps"][0] >= r.warmup_steps
    # every step of each rank, warm-up included (rollups hold them all)
    assert s["steps"] == STEPS and {int(k): v["steps"] for k, v in s["per_rank_steps"].items()} == {0: STEPS, 1: STEPS}
    for rank, per in s["per_rank_steps"].items():
        (want,), = r.sql("SELECT quantile_disc(end_ns - start_ns, 0.5) / 1e9 FROM raw_spans WHERE kind = ? AND rank = ?",
                         [schema.KIND_STEP, int(rank)])
        assert abs(per["median_s"] - want) <= 0.01 * want, (rank, per["median_s"], want)
    raw = {(rank, name): ns for rank, name, ns in r.sql(
        "SELECT rank, name, sum(end_ns - start_ns) FROM raw_spans WHERE kind = ? GROUP BY ALL", [schema.KIND_PHASE])}
    steps = dict(r.sql("SELECT rank, sum(end_ns - start_ns) FROM raw_spans WHERE kind = ? GROUP BY rank", [schema.KIND_STEP]))
    for rank, b in s["breakdown"].items():
        for name, frac in b["phase_fraction"].items():
            if name != "other":
                assert frac == pytest.approx(raw[(int(rank), name)] / steps[int(rank)], rel=1e-6), (rank, name)
    (calls, nbytes), = r.sql("SELECT count(*), sum(bytes) FROM raw_spans WHERE kind = ? AND name = ?",
                             [schema.KIND_COMM, schema.COMM_ALLREDUCE])
    got = s["network"]["collectives"][schema.COMM_ALLREDUCE]
    assert (got["calls"], got["bytes"]) == (calls, nbytes)
    # samples: one reading per series and minute, a gauge's mean; the CPU average stays the raw one's
    (cpu,), = scaled.sql("SELECT avg(value) FROM samples WHERE metric = 'cpu.process_pct' AND rank = 0")
    (raw_cpu,), = r.sql("SELECT avg(value) FROM samples WHERE metric = 'cpu.process_pct' AND rank = 0")
    assert cpu == pytest.approx(raw_cpu, rel=0.05)


def test_scale_mode_reads_raw_spans_of_the_zoom_window_only(scale_summary):
    scaled, s = scale_summary
    lo, hi = s["source"]["zoom_steps"]
    (a, b), = scaled.sql("SELECT min(step), max(step) FROM spans WHERE step >= 0")
    assert lo <= a and b <= hi
    extent = scaled.span_extent
    assert {r: e[2] for r, e in extent.items()} == {0: STEPS - 1, 1: STEPS - 1}  # the whole run's last step, from the rollups


def _doc_queries() -> tuple[str, str, list[str]]:
    """docs/schema.md's rollup query, its DuckDB table definition, and the other engines' definitions."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "schema.md").read_text(encoding="utf-8")
    section = text.split("### Querying the rollups on another engine", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, re.S)
    assert len(blocks) == 4, blocks
    return blocks[0], blocks[1], blocks[2:]


def test_the_documented_query_runs_on_duckdb_and_gives_the_rollup_figures(run):
    import duckdb

    r, fig = run
    query, duck, others = _doc_queries()
    con = duckdb.connect()
    con.execute(duck.replace("RUN_DIR", str(r.path)))
    rows = con.execute(query).fetchall()
    assert len(rows) == 2 and rows[0][3] >= rows[1][3]  # slowest first
    for host, rank, steps, mean_s, wait_share, comm_bytes in rows:
        want = fig["ranks"][rank]
        assert host == r.ranks[rank]["host"] and steps == want["count"] == STEPS
        assert mean_s == pytest.approx(want["sum_ns"] / want["count"] / 1e9, rel=1e-12)
        assert wait_share == pytest.approx(fig["phases_by_rank"][rank][schema.PHASE_DATA] / want["sum_ns"], rel=1e-12)
        (raw_bytes,), = r.sql("SELECT sum(bytes) FROM raw_spans WHERE kind = ? AND rank = ?", [schema.KIND_COMM, rank])
        assert comm_bytes == raw_bytes > 0
    assert all("rollups" in d and "RUN_DIR" in d for d in others)  # the same table name, over the same run folder


def test_memory_rollups_hold_every_memory_row_and_scale_mode_reads_them(run, scale_summary):
    r, _ = run
    scaled, s = scale_summary
    assert scaled.memory_rollups and scaled.sql("SELECT count(*) FROM memory")[0][0] == 0  # no raw memory row read
    raw = {rank: (n, w, act, peak) for rank, n, w, act, peak in r.sql(
        "SELECT rank, count(*), sum(weights), sum(activations), max(peak) FROM memory GROUP BY rank")}
    rolled = {rank: (int(n), int(w), int(act), int(peak)) for rank, n, w, act, peak in r.sql(
        "SELECT rank, sum(count) FILTER (WHERE name = 'weights'), sum(value_sum) FILTER (WHERE name = 'weights'), "
        "sum(value_sum) FILTER (WHERE name = 'activations'), max(value_max) FILTER (WHERE name = 'peak') "
        "FROM rollups WHERE kind = ? GROUP BY rank", [schema.ROLLUP_MEMORY])}
    assert rolled == raw and all(n > 0 for n, *_ in raw.values())
    for rank, (n, w, _, peak) in raw.items():
        assert s["memory"][str(rank)]["weights"] == w // n and s["memory"][str(rank)]["peak"] == peak  # weights: constant

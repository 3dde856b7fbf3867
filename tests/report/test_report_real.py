"""The report on a real 2-rank run: stable summary keys, and damaged copies still reported."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq

from tbdprof import cli, schema

STABLE = {"world_size", "throughput_samples_per_s", "step_time_s", "phase_fraction", "memory_bytes", "ranks"}


def _summary(run_dir, capsys, *extra):
    assert cli.main(["report", str(run_dir), *extra]) == 0
    capsys.readouterr()
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


def test_summary_keys(run_copy, capsys):
    s = _summary(run_copy, capsys, "--link-bandwidth", "1Gbit")
    assert STABLE <= set(s)
    assert s["world_size"] == 2 and s["throughput_samples_per_s"] > 0
    assert set(s["step_time_s"]) == {"median", "p90", "p99"}
    assert set(s["memory_bytes"]) == {*schema.MEMORY_CATEGORIES, "peak"}
    assert [r["rank"] for r in s["ranks"]] == [0, 1]
    assert abs(sum(s["phase_fraction"].values()) - 1) < 1e-6
    for b in s["breakdown"].values():
        assert abs(sum(b["stack_s_per_step"].values()) - b["step_s"]) < 1e-6
        c = b["comm_s_per_step"]
        assert c["total"] > 0 and 0 <= c["overlapped"] <= c["hidden"] <= c["total"]
    ar = s["network"]["collectives"]["allreduce"]
    assert ar["busbw_bytes_per_s"] > 0 and ar["link_fraction"] > 0
    assert s["utilization"]["per_rank"]["0"]["cpu.process_pct"]["avg"] > 0
    assert s["problems"] == [] and s["complete"]


def test_damaged_copy_is_reported(run_copy, capsys):
    r1 = next(run_copy.glob("host=*/rank=1"))
    seg = next(r1.glob("samples-*.parquet"))
    seg.write_bytes(seg.read_bytes()[:100])  # truncated
    (r1 / "spans-999998.parquet").write_bytes(b"garbage")
    table = pq.read_table(next(r1.glob("memory-*.parquet")))
    pq.write_table(table.replace_schema_metadata(table.schema.metadata | {schema.META_SCHEMA_VERSION: b"99"}),
                   r1 / "memory-999999.parquet")
    (run_copy / schema.RUN_FILE).write_text("not json", encoding="utf-8")
    s = _summary(run_copy, capsys)
    problems = "\n".join(s["problems"])
    assert seg.name in problems and "spans-999998" in problems and "schema version 99" in problems and "run.json" in problems
    assert s["steps"] > 0 and s["per_rank_steps"]["1"]["steps"] > 0


def test_deleted_rank_folder(run_copy, capsys):
    shutil.rmtree(next(run_copy.glob("host=*/rank=1")))
    s = _summary(run_copy, capsys)
    assert s["missing_ranks"] == [1] and not s["complete"] and s["steps"] > 0


def test_compare_real_runs(real_run, run_copy, capsys):
    assert cli.main(["compare", str(real_run), str(run_copy), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["figure"]: r for r in data["figures"]}
    assert rows["step time median"]["relative"] == 0
    assert data["environment"] == []

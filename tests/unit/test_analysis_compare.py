"""compare: figure-by-figure relative differences and environment differences."""

import json

import pytest
from storebuilder import gauge, steps, write_rank, write_run

from tbdprof import cli
from tbdprof.analysis.compare import compare_runs, compare_summaries


def _run(path, step_ms, omp, samples=(), metadata=None):
    write_run(path, 1, workload="w", preset="tiny")
    write_rank(path, spans=steps(10, step_ms, phases={"forward": (0, step_ms / 2)}),
               samples=gauge("cpu.process_pct", [80] * 10) + list(samples), metadata=metadata,
               env={"python": "3.11", "torch": "2.13", "torch_threads": omp, "env": {"OMP_NUM_THREADS": str(omp)}})
    return path


def test_relative_differences_and_environment(tmp_path):
    a, b = _run(tmp_path / "a", 100, 1), _run(tmp_path / "b", 200, 4)
    result = compare_runs(a, b)
    rows = {r["figure"]: r for r in result["figures"]}
    assert rows["throughput (samples/s)"]["relative"] == pytest.approx(-0.5)
    assert rows["step time median"]["relative"] == pytest.approx(1.0)
    assert rows["phase forward"]["relative"] == pytest.approx(0.0)
    assert rows["CPU per rank (avg)"]["diff"] == pytest.approx(0.0)
    env = {e["setting"]: (e["a"], e["b"]) for e in result["environment"]}
    assert env["OMP_NUM_THREADS"] == ("1", "4") and env["torch threads"] == ("1", "4")
    assert "python" not in env


def test_missing_figures_have_no_relative():
    rows = compare_summaries({"throughput": {"per_s": 10.0, "unit": "samples"}}, {"throughput": {"per_s": None}})["figures"]
    assert rows == [{"figure": "throughput (samples/s)", "unit": "per_s", "a": 10.0, "b": None, "diff": None, "relative": None}]


def test_cli_json_and_tables(tmp_path, capsys):
    a, b = _run(tmp_path / "a", 100, 1), _run(tmp_path / "b", 100, 2)
    assert cli.main(["compare", str(a), str(b), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"figures", "environment", "a", "b", "problems"} <= set(data)
    assert cli.main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "environment differences" in out and "OMP_NUM_THREADS" in out


def test_a_figure_present_in_one_run_only():
    from tbdprof.analysis.compare import compare_summaries

    a = {"network": {"collectives": {"allreduce": {"algbw_bytes_per_s": 5e8, "busbw_bytes_per_s": 5e8}}}}
    rows = {r["figure"]: r for r in compare_summaries(a, {})["figures"]}
    assert rows["allreduce algbw"]["a"] == 5e8 and rows["allreduce algbw"]["b"] is None
    assert rows["allreduce algbw"]["unit"] == "bytes/s" and rows["allreduce algbw"]["relative"] is None


def test_gpu_figures_and_run_settings(tmp_path):
    def gpu(tensor, fp32, power):
        return (gauge("gpu.util_pct", [90] * 10, device="gpu0") + gauge("gpu.tensor_util_pct", [tensor] * 10, device="gpu0")
                + gauge("gpu.fp32_util_pct", [fp32] * 10, device="gpu0") + gauge("gpu.power_w", [power] * 10, device="gpu0"))

    a = _run(tmp_path / "a", 100, 1, gpu(2, 60, 500), metadata={"amp": "none", "dtype": "float32"})
    b = _run(tmp_path / "b", 50, 1, gpu(40, 5, 400), metadata={"amp": "bf16", "dtype": "bfloat16"})
    result = compare_runs(a, b)
    rows = {r["figure"]: r for r in result["figures"]}
    assert (rows["GPU tensor-core utilization (avg)"]["a"], rows["GPU tensor-core utilization (avg)"]["b"]) == (2, 40)
    assert rows["GPU FP32 utilization (avg)"]["diff"] == pytest.approx(-55)
    assert rows["GPU power (avg per rank)"]["relative"] == pytest.approx(-0.2)
    assert "GPU SM occupancy (avg)" not in rows  # recorded by neither run
    env = {e["setting"]: (e["a"], e["b"]) for e in result["environment"]}
    assert env["mixed precision"] == ("none", "bf16") and env["dtype"] == ("float32", "bfloat16")
    assert "batch size / rank" not in env  # the same in both


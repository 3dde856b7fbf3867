"""The report's GPU section in a real browser, on a real (CPU) run given NVML-like readings.

No GPU exists here, so the readings are synthetic, written with the recorder's
schema beside the run's own: rank 0 as a Hopper GPU (GPM counters: SM
occupancy, tensor, FP32, DRAM bandwidth), rank 1 as an older one (none). This
checks the report's figures and rendering, not NVML (tests/gpu does that).
"""

from __future__ import annotations

import json
import re

import pytest
from browser import inspect
from storebuilder import gauge, write_segment

from tbdprof import cli, schema

GIB = 2**30


def _add_gpu_readings(run_dir) -> None:
    """NVML-like readings every 20 ms over each rank's whole recording."""
    for rank_json in run_dir.glob(f"host=*/rank=*/{schema.RANK_FILE}"):
        meta = json.loads(rank_json.read_text())
        rank, n = meta["rank"], (meta["end_ns"] - meta["start_ns"]) // 20_000_000 + 2
        at = {"t0": meta["start_ns"], "every_ms": 20, "device": "gpu0"}
        rows = (gauge("gpu.util_pct", [90] * n, **at) + gauge("gpu.power_w", [400 + 10 * rank] * n, **at)
                + gauge("gpu.mem_used_bytes", [20 * GIB] * n, **at) + gauge("gpu.mem_total_bytes", [141 * GIB] * n, **at)
                + gauge("gpu.energy_j", [1000 + 40 * i for i in range(n)], **at)
                + gauge("torch.reserved_bytes", [16 * GIB] * n, **(at | {"device": "cuda:0"}))
                + gauge("torch.inactive_split_bytes", [GIB] * n, **(at | {"device": "cuda:0"})))
        if rank == 0:
            rows += (gauge("gpu.tensor_util_pct", [60] * n, **at) + gauge("gpu.fp32_util_pct", [5] * n, **at)
                     + gauge("gpu.sm_occupancy_pct", [45] * n, **at) + gauge("gpu.dram_bw_util_pct", [70] * n, **at))
        write_segment(run_dir, schema.SAMPLES, rows, rank, meta["host"], seq=900_000, run_id=meta["run_id"])


def test_gpu_section_figures_and_rendering(chromium, run_copy, capsys):
    _add_gpu_readings(run_copy)
    assert cli.main(["report", str(run_copy)]) == 0
    terminal = capsys.readouterr().out
    gpu_table = terminal[terminal.index("GPU per rank"):]
    assert "60.0%" in gpu_table and "45.0%" in gpu_table and re.search(r"│\s+n/a\s+│", gpu_table)
    gpu = json.loads((run_copy / "summary.json").read_text())["gpu"]["per_rank"]
    assert gpu["0"]["tensor_util_pct"] == pytest.approx(60) and gpu["0"]["sm_occupancy_pct"] == pytest.approx(45)
    assert gpu["1"]["tensor_util_pct"] == "unavailable" and gpu["1"]["fp32_util_pct"] == "unavailable"
    assert gpu["1"]["memory"]["fragmentation"] == pytest.approx(1 / 16)
    assert gpu["0"]["power"]["avg_w"] == pytest.approx(400) and gpu["1"]["power"]["avg_w"] == pytest.approx(410)

    found = inspect(chromium, run_copy / "report.html")
    assert found["errors"] == [] and found["broken"] == [] and found["empty_svgs"] == 0
    text = found["text"]
    for literal in ("tensor util", "SM occupancy", "60.0%", "45.0%", "unavailable", "20.0 GiB of 141.0 GiB", "6.2%",
                    "tensor-core utilization (GPM)", "GPU power", "GPU memory used"):
        assert literal in text, literal
    assert "not recorded in this run" not in text

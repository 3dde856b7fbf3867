"""The GPU verification table: for each profiled run under RUNS (and its ``<id>-base``
unprofiled twin), samples/s, GPU and FP32/tensor utilization, memory breakdown,
sampler cost and profiling overhead. Writes ``gpu_table.json`` beside the runs.

Usage: python tests/gpu/device_table.py RUNS WORKLOAD...
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from tbdprof.analysis.gpu import gpu_figures
from tbdprof.analysis.load import open_run
from tbdprof.analysis.report import summarize

MIB = 2**20


def _median_step_s(run_dir: Path) -> float | None:
    (timing,) = run_dir.glob("host=*/rank=0/timing.json")
    t = json.loads(timing.read_text())
    times = t["step_times_s"][t["warmup_steps"]:] or t["step_times_s"]
    return statistics.median(times) if times else None


def row(runs: Path, workload: str) -> dict:
    run = open_run(runs / workload)
    summary = summarize(run)
    gpu = gpu_figures(run)["per_rank"].get("0", {})
    meta = run.ranks[0]
    profiled, base = _median_step_s(runs / workload), _median_step_s(runs / f"{workload}-base")
    return {
        "workload": workload,
        "samples_per_s": summary["throughput_samples_per_s"],
        "gpu_util_pct": gpu.get("gpu_compute_util_pct"),
        "fp32_util_pct": gpu.get("fp32_util_pct"),
        "tensor_util_pct": gpu.get("tensor_util_pct"),
        "memory_mib": {k: v / MIB for k, v in summary["memory_bytes"].items()},
        "sampler_ms_per_tick": 1e3 * meta["sampler_cpu_s"] / max(1, meta["sampler_ticks"]),
        "overhead_ratio": profiled / base if profiled and base else None,
        "gpu": gpu,
    }


def _fmt(v) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def main(argv: list[str]) -> int:
    runs, workloads = Path(argv[0]), argv[1:]
    rows = [row(runs, w) for w in workloads]
    (runs / "gpu_table.json").write_text(json.dumps(rows, indent=2, default=str))
    cols = ("workload", "samples_per_s", "gpu_util_pct", "fp32_util_pct", "tensor_util_pct", "sampler_ms_per_tick", "overhead_ratio")
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(_fmt(r[c]) for c in cols))
    for r in rows:
        print(f"{r['workload']} memory MiB: " + ", ".join(f"{k} {v:.1f}" for k, v in r["memory_mib"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

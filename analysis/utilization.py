"""Hardware utilization: CPU per rank and per host (per core), GPU where NVML recorded it.

Averages are taken over the steady-state window (first steady step to last
step) when it holds readings, else over the whole run. Definitions (after the
TBD paper; see docs/methodology.md):

* process CPU: CPU time of the rank and its children per wall second, in
  percent of one core (``cores`` = the same divided by 100);
* system CPU: busy share of all the host's cores, and of each core;
* GPU compute utilization: NVML's utilization, the share of time in which at
  least one kernel was running on the GPU (TBD's "GPU compute utilization");
* FP32 utilization: the FP32 pipe's activity, from NVML's GPM counters on
  Hopper and newer; elsewhere ``"unavailable"``, never estimated
  (:mod:`.gpu` computes it).
"""

from __future__ import annotations

from tbdprof import schema

from .load import Run
from .gpu import gpu_figures
from .timeline import gauge_stats

GPU_METRICS = ("gpu.util_pct", "gpu.mem_util_pct", "gpu.mem_used_bytes", "gpu.mem_total_bytes", "gpu.power_w")
CPU_METRICS = ("cpu.process_pct", "cpu.process_threads", "cpu.system_pct", "cpu.core_pct", "cpu.iowait_pct", "cpu.runnable")


def utilization(run: Run) -> dict:
    """CPU per rank and host, GPU per device; each figure ``{"avg", "max"}`` in the metric's unit."""
    per_rank: dict[str, dict] = {}
    per_host: dict[str, dict] = {}
    gpus: dict[str, dict] = {}
    for host, rank, metric, device, avg, mx, _n in gauge_stats(run, CPU_METRICS + GPU_METRICS):
        fig = {"avg": avg, "max": mx}
        if metric.startswith("gpu."):
            gpus.setdefault(f"{host}:{device}", {"host": host, "rank": rank, "device": device})[metric.split(".", 1)[1]] = fig
        elif metric == "cpu.core_pct":
            per_host.setdefault(host, {}).setdefault("per_core_pct", {})[device] = fig
        elif schema.METRICS[metric].scope == "host":
            per_host.setdefault(host, {})[metric] = fig
        else:
            per_rank.setdefault(str(rank), {"host": host})[metric] = fig
    for r in per_rank.values():
        if "cpu.process_pct" in r:
            r["cores"] = {k: v / 100 for k, v in r["cpu.process_pct"].items()}
    for h in per_host.values():
        cores = h.get("per_core_pct", {})
        h["cores"] = len(cores) or None
        h["per_core_pct"] = dict(sorted(cores.items(), key=lambda kv: (len(kv[0]), kv[0])))
    fp32 = gpu_figures(run)["per_rank"] if gpus else {}
    for g in gpus.values():
        g["fp32_util"] = fp32.get(str(g["rank"]), {}).get("fp32_util_pct", "unavailable")
    return {"per_rank": per_rank, "per_host": per_host, "gpus": gpus, "gpu_recorded": bool(gpus)}

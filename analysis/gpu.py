"""GPU figures per rank: the TBD paper's GPU compute and FP32 utilization, tensor
cores, memory (device, process, caching allocator) and power.

Definitions (see docs/methodology.md for the paper's):

* ``gpu_compute_util_pct``: NVML utilization (``gpu.util_pct``), the share of
  time at least one kernel ran: TBD's "GPU compute utilization".
* ``fp32_util_pct``: the share of SM time spent in non-tensor FP32 math, from
  NVML's GPM counters (``gpu.fp32_util_pct``). TBD's "FP32 utilization" is
  achieved / peak FP32 operations; the GPM pipe utilization is the hardware
  counter closest to it. ``tensor_util_pct`` is the same for tensor cores.
  GPM exists on Hopper and newer GPUs only: where the run recorded none,
  these are the string ``"unavailable"``, never estimated.
* ``memory.fragmentation``: free bytes inside the caching allocator's split
  blocks over its reserved bytes (``torch.inactive_split_bytes /
  torch.reserved_bytes``).

Averages are over the steady-state window, like :mod:`.utilization`.
"""

from __future__ import annotations

from .fmt import fmt_bytes, fmt_num, fmt_pct
from .load import Run
from .timeline import counter_rates, gauge_stats

UNAVAILABLE = "unavailable"

# summary key -> metric, for the utilization figures (averages)
UTIL_FIGURES = {
    "gpu_compute_util_pct": "gpu.util_pct",
    "memory_controller_util_pct": "gpu.mem_util_pct",
    "sm_util_pct": "gpu.sm_util_pct",
    "sm_occupancy_pct": "gpu.sm_occupancy_pct",
    "fp32_util_pct": "gpu.fp32_util_pct",
    "fp16_util_pct": "gpu.fp16_util_pct",
    "tensor_util_pct": "gpu.tensor_util_pct",
    "dram_bw_util_pct": "gpu.dram_bw_util_pct",
}
GAUGES = (*UTIL_FIGURES.values(), "gpu.mem_used_bytes", "gpu.mem_total_bytes", "gpu.process_mem_bytes", "gpu.power_w",
          "gpu.sm_clock_mhz", "gpu.temp_c", "gpu.pcie_tx_bytes_s", "gpu.pcie_rx_bytes_s",
          "torch.allocated_bytes", "torch.reserved_bytes", "torch.inactive_split_bytes")
COUNTERS = ("gpu.energy_j", "gpu.nvlink_tx_bytes", "gpu.nvlink_rx_bytes", "torch.alloc_retries")
WHY_UNAVAILABLE = {
    "gpu_compute_util_pct": "no NVML utilization readings (no NVIDIA driver, or the query is not supported)",
    "gpm": "needs NVML GPM counters (Hopper or newer GPU and driver); this rank recorded none",
}


def _rank_figures(g: dict[str, tuple[float, float]], c: dict[str, dict]) -> dict:
    """One rank's figures from its gauge (avg, max) and counter ({total, per_s}) readings."""
    avg = {m: v[0] for m, v in g.items()}
    peak = {m: v[1] for m, v in g.items()}
    out: dict = {k: avg.get(m, UNAVAILABLE) for k, m in UTIL_FIGURES.items()}
    reserved = avg.get("torch.reserved_bytes")
    split = avg.get("torch.inactive_split_bytes")
    allocated = avg.get("torch.allocated_bytes")
    out["memory"] = {
        "device_used_bytes_max": peak.get("gpu.mem_used_bytes"),
        "device_total_bytes": peak.get("gpu.mem_total_bytes"),
        "process_bytes_max": peak.get("gpu.process_mem_bytes"),
        "allocated_bytes_max": peak.get("torch.allocated_bytes"),
        "reserved_bytes_max": peak.get("torch.reserved_bytes"),
        "allocator_slack_bytes": reserved - allocated if reserved is not None and allocated is not None else None,
        "fragmentation": split / reserved if split is not None and reserved else None,
        "alloc_retries": c.get("torch.alloc_retries", {}).get("total"),
    }
    out["power"] = {"avg_w": avg.get("gpu.power_w"), "max_w": peak.get("gpu.power_w"),
                    "energy_j": c.get("gpu.energy_j", {}).get("total")}
    out["clocks"] = {"sm_mhz": avg.get("gpu.sm_clock_mhz"), "temp_c_max": peak.get("gpu.temp_c")}
    out["links"] = {
        "pcie_tx_bytes_per_s": avg.get("gpu.pcie_tx_bytes_s"), "pcie_rx_bytes_per_s": avg.get("gpu.pcie_rx_bytes_s"),
        "nvlink_tx_bytes_per_s": c.get("gpu.nvlink_tx_bytes", {}).get("per_s"),
        "nvlink_rx_bytes_per_s": c.get("gpu.nvlink_rx_bytes", {}).get("per_s"),
    }
    return out


def _combine(metric: str, values: list[tuple[float, float]]) -> tuple[float, float]:
    """(avg, max) over a rank's devices: utilizations are averaged, bytes, watts and rates add up."""
    avgs, maxes = zip(*values)
    if metric in UTIL_FIGURES.values() or metric in ("gpu.sm_clock_mhz", "gpu.temp_c"):
        return sum(avgs) / len(avgs), max(maxes)
    return sum(avgs), sum(maxes)


def gpu_figures(run: Run) -> dict:
    """Per rank that recorded a GPU: utilization figures (percent, or ``"unavailable"``),
    ``memory``, ``power``, ``clocks`` and ``links``; ``unavailable`` says why a figure is missing.
    Computed once per run."""
    return run.cached("gpu_figures", lambda: _gpu_figures(run))


def _gpu_figures(run: Run) -> dict:
    readings: dict[str, dict[str, list]] = {}
    counters: dict[str, dict] = {}
    hosts: dict[str, str] = {}
    devices: dict[str, set] = {}
    for host, rank, metric, device, avg, mx, _n in gauge_stats(run, GAUGES):
        key = str(rank)
        hosts[key] = host
        devices.setdefault(key, set()).add(device)
        readings.setdefault(key, {}).setdefault(metric, []).append((avg, mx))
    gauges = {key: {m: _combine(m, v) for m, v in by_metric.items()} for key, by_metric in readings.items()}
    for (host, rank, metric, device), v in counter_rates(run, COUNTERS).items():
        key = str(rank)
        hosts[key] = host
        devices.setdefault(key, set()).add(device)
        prev = counters.setdefault(key, {}).get(metric, {"total": 0.0, "per_s": 0.0})
        counters[key][metric] = {k: (prev[k] or 0.0) + (v[k] or 0.0) for k in ("total", "per_s")}
    per_rank = {}
    for key in sorted(set(gauges) | set(counters), key=int):
        fig = _rank_figures(gauges.get(key, {}), counters.get(key, {}))
        per_rank[key] = {"host": hosts[key], "devices": sorted(devices[key])} | fig
    return {"per_rank": per_rank, "gpu_recorded": bool(per_rank), "unavailable": WHY_UNAVAILABLE}


GPU_TABLE_HEADER = ["rank", "GPU util", "SM occupancy", "tensor util", "FP32 util", "DRAM BW util", "memory max",
                    "allocator reserved", "fragmentation", "power avg", "energy"]


def gpu_table_rows(figures: dict, unavailable: str = UNAVAILABLE) -> list[list[str]]:
    """One row per rank of :func:`gpu_figures` for the terminal and HTML tables (``GPU_TABLE_HEADER``);
    a figure the rank did not record is shown as ``unavailable``."""

    def pct(v) -> str:
        return unavailable if isinstance(v, str) else fmt_num(v) + "%"

    rows = []
    for rank, f in figures["per_rank"].items():
        mem, power = f["memory"], f["power"]
        used, total = mem["device_used_bytes_max"], mem["device_total_bytes"]
        rows.append([rank, pct(f["gpu_compute_util_pct"]), pct(f["sm_occupancy_pct"]), pct(f["tensor_util_pct"]),
                     pct(f["fp32_util_pct"]), pct(f["dram_bw_util_pct"]),
                     fmt_bytes(used) + (f" of {fmt_bytes(total)}" if total else ""), fmt_bytes(mem["reserved_bytes_max"]),
                     fmt_pct(mem["fragmentation"]), "-" if power["avg_w"] is None else fmt_num(power["avg_w"]) + " W",
                     "-" if power["energy_j"] is None else fmt_num(power["energy_j"] / 1e3, 2) + " kJ"])
    return rows

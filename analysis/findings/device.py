"""Low device utilization: GPUs mostly idle between kernels (where a GPU was recorded)."""

from __future__ import annotations

from .base import Finding, graded
from .context import Context

IDLE_WARNING = 0.5  # 1 - NVML utilization
IDLE_CRITICAL = 0.8
LAUNCH_BOUND_CORES = 0.9  # the rank's process busy near one full core while its GPU idles: the host thread limits


def low_device_utilization(ctx: Context) -> list[Finding]:
    """One finding per rank whose GPU computes less than half of the time."""
    out = []
    for (metric, rank, device), (util, peak) in ctx.gauges.items():
        if metric != "gpu.util_pct" or util is None:
            continue
        idle = 1 - util / 100
        severity = graded(idle, IDLE_WARNING, IDLE_CRITICAL)
        if not severity:
            continue
        p = ctx.per_rank.get(rank, {})
        cores = (ctx.gauge("cpu.process_pct", rank) or 0) / 100
        data = p.get("data_wait_fraction") or 0
        launch = cores >= LAUNCH_BOUND_CORES and data < 0.25
        advice = ("The host thread is the limit (launch-bound: busy CPU, idle GPU): larger batches, fused kernels "
                  "(torch.compile), CUDA graphs, fewer host-device synchronisations (.item(), .cpu() in the loop)."
                  if launch else
                  "The GPU waits on something else: see the step breakdown (data wait, communication); larger "
                  "batches, prefetching to the device (pin_memory, non_blocking copies) and overlapping help.")
        out.append(Finding(
            kind="low_device_utilization", severity=severity, ranks=[rank], time_range_s=ctx.window_s, score=idle,
            title=f"rank {rank} {device} is idle {idle:.0%} of the time" + (" (launch-bound)" if launch else ""),
            evidence={"device": device, "gpu_util_avg_pct": util, "gpu_util_max_pct": peak, "process_cores": cores,
                      "data_wait_fraction": data, "launch_bound": launch},
            recommendation=advice))
    return out

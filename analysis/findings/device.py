"""The GPU itself (where one was recorded): mostly idle between kernels, or busy with matrix math on
its FP32 pipes while its tensor cores stay idle (GPM counters, Hopper and newer)."""

from __future__ import annotations

from .base import Finding, graded
from .context import Context

IDLE_WARNING = 0.5  # 1 - NVML utilization
IDLE_CRITICAL = 0.8
LAUNCH_BOUND_CORES = 0.9  # the rank's process busy near one full core while its GPU idles: the host thread limits
FP32_BUSY_PCT = 20.0  # GPM FP32 pipe utilization: a fifth of the SM cycles doing FP32 math
TENSOR_IDLE_PCT = 5.0  # GPM tensor-core utilization below this: tensor cores essentially unused
FP32_CRITICAL_PCT = 50.0


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


def fp32_math(ctx: Context) -> list[Finding]:
    """One finding per rank whose GPU spends >= 20% of its SM cycles in FP32 math with tensor cores idle."""
    out = []
    for (metric, rank, device), (fp32, _peak) in ctx.gauges.items():
        if metric != "gpu.fp32_util_pct" or fp32 is None or fp32 < FP32_BUSY_PCT:
            continue
        tensor = ctx.gauge("gpu.tensor_util_pct", rank, device)
        if tensor is None or tensor >= TENSOR_IDLE_PCT:
            continue  # no tensor-core reading is no evidence: never guessed
        dtype = (ctx.run.ranks.get(rank, {}).get("metadata") or {}).get("dtype")
        out.append(Finding(
            kind="fp32_math", severity="critical" if fp32 >= FP32_CRITICAL_PCT else "warning", ranks=[rank],
            time_range_s=ctx.window_s, score=fp32 / 100,
            title=f"rank {rank} {device}: FP32 pipes busy {fp32:.0f}% of the time, tensor cores {tensor:.1f}%",
            evidence={"device": device, "fp32_util_pct": fp32, "tensor_util_pct": tensor, "dtype": dtype},
            recommendation="Matrix math runs in full FP32 on the CUDA cores. TF32 tensor cores take FP32 matmuls and "
                           "convolutions at several times the rate (torch.set_float32_matmul_precision('high'), "
                           "torch.backends.cudnn.allow_tf32 = True); mixed precision (torch.autocast with bfloat16, "
                           "`--amp bf16` for the reference workloads) also halves the memory traffic."))
    return out

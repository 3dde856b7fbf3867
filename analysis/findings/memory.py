"""Memory: host or GPU memory near capacity, allocator retries, and memory growing step over step (a leak)."""

from __future__ import annotations

from .base import Finding, graded, ranks_text
from .context import Context

HOST_WARNING = 0.90  # peak used / host memory
HOST_CRITICAL = 0.97
OWN_SHARE = 0.5  # the ranks' resident memory at least this share of the host's use: the run's own pressure
SWAP_BYTES = 256 * 2**20  # swap in use that counts as swapping (with host memory above HOST_WARNING - 10%)
GPU_WARNING = 0.95  # peak used / device memory
GPU_CRITICAL = 0.99
LEAK_R2 = 0.8  # the RSS line must explain this share of the variance (a trend, not noise)
LEAK_MIN_BYTES = 64 * 2**20  # and grow at least this much over the window...
LEAK_MIN_SHARE = 0.05  # ...and this share of the median RSS
LEAK_CRITICAL_SHARE = 0.5
LEAK_MIN_READINGS = 10


def memory_pressure(ctx: Context) -> list[Finding]:
    """Host memory or swap per host; GPU memory and allocator retries per device."""
    out = []
    for host, h in ctx.hosts.items():
        used, swap = ctx.gauge("mem.used_bytes", host, stat=1), ctx.gauge("mem.swap_used_bytes", host, stat=1)
        total = h["mem_total_bytes"]
        if not used or not total:
            continue
        share = used / total
        severity = graded(share, HOST_WARNING, HOST_CRITICAL)
        if not severity and (swap or 0) >= SWAP_BYTES and share >= HOST_WARNING - 0.1:
            severity = "warning"
        if severity:
            ranks_rss = sum(ctx.rss_trend.get(r, {}).get("median_bytes") or 0 for r in h["ranks"])
            source = "this run" if ranks_rss >= OWN_SHARE * used else "other processes"
            out.append(Finding(
                kind="memory_pressure", severity=severity, ranks=h["ranks"], hosts=[host], time_range_s=ctx.window_s,
                title=(f"host {host} memory {share:.0%} full" + (f", {swap / 2**30:.1f} GiB swapped" if swap else "")
                       + (f"; the ranks hold {ranks_rss / used:.0%} of it" if used else "")),
                evidence={"used_max_bytes": used, "host_memory_bytes": total, "used_fraction": share,
                          "swap_used_max_bytes": swap, "ranks_rss_bytes": ranks_rss, "source": source},
                recommendation=("Reduce host memory: fewer or lighter loader workers (each holds a copy of the data set "
                                "object and prefetch buffers), a smaller prefetch_factor, memory-mapped or streamed data, "
                                "or fewer ranks per host."), score=share))
    for (metric, rank, device), (_avg, used) in ctx.gauges.items():
        if metric != "gpu.mem_used_bytes":
            continue
        total = ctx.gauge("gpu.mem_total_bytes", rank, device, stat=1)
        retries = ctx.gauge("torch.alloc_retries", rank, device, stat=1) or 0
        share = used / total if total else 0
        severity = graded(share, GPU_WARNING, GPU_CRITICAL) or ("warning" if retries > 0 else None)
        if severity:
            out.append(Finding(
                kind="memory_pressure", severity=severity, ranks=[rank], time_range_s=ctx.window_s, score=share,
                title=f"rank {rank} {device}: device memory {share:.0%} full, {retries:.0f} allocator retries",
                evidence={"device": device, "used_max_bytes": used, "device_memory_bytes": total, "used_fraction": share,
                          "alloc_retries": retries},
                recommendation=("Near device capacity the caching allocator frees and retries (slow cudaMalloc): lower "
                                "the batch size, use activation checkpointing or mixed precision, or set "
                                "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True against fragmentation.")))
    return out


def memory_leak(ctx: Context) -> list[Finding]:
    """Ranks whose resident memory rises steadily over the steady state."""
    leaking = {}
    for r, t in ctx.rss_trend.items():
        growth, med = t["growth_bytes"], t["median_bytes"] or 0
        if (t["readings"] >= LEAK_MIN_READINGS and (t["r2"] or 0) >= LEAK_R2
                and growth >= max(LEAK_MIN_BYTES, LEAK_MIN_SHARE * med)):
            leaking[r] = t | {"growth_share": growth / med}
    if not leaking:
        return []
    worst = max(t["growth_share"] for t in leaking.values())
    per_step = max(t["bytes_per_step"] or 0 for t in leaking.values())
    return [Finding(
        kind="memory_leak", severity=graded(worst, 0, LEAK_CRITICAL_SHARE), ranks=sorted(leaking), time_range_s=ctx.window_s,
        hosts=sorted({ctx.run.ranks[r].get("host") for r in leaking}), score=worst,
        title=(f"{ranks_text(leaking)}: resident memory grows steadily, about {per_step / 2**20:.1f} MiB per step "
               f"(+{worst:.0%} over the steady state)"),
        evidence={"per_rank": leaking},
        recommendation=("Something keeps a reference every step: look for tensors appended to lists without .item() or "
                        ".detach() (losses, outputs, metrics), caches keyed by step, or graphs kept alive by "
                        "retain_graph; tracemalloc or torch.cuda.memory_snapshot() show what grows."),
    )]

"""Communication-bound: collectives the ranks cannot hide behind their own compute."""

from __future__ import annotations

from ..bandwidth import bus_bandwidth
from .base import Finding, graded
from .context import Context

WARNING = 0.25  # pure communication tail / step time
CRITICAL = 0.50
LINK_SATURATED = 0.7  # busbw / link capacity


def communication_bound(ctx: Context) -> list[Finding]:
    """The last rank to reach the collectives still waits ``WARNING`` of the step for them.

    The last-arriving rank waits for nobody, so its tail (last bucket handed
    over to collectives done) is communication alone, whatever the stragglers do.
    """
    s = ctx.sync
    severity = graded(s.get("comm_tail_fraction"), WARNING, CRITICAL)
    if not severity:
        return []
    name, = ctx.run.sql("SELECT arg_max(name, bytes) FROM (SELECT name, sum(bytes) AS bytes FROM steady_comm GROUP BY name)")[0]
    algbw = s["comm_bytes"] / s["comm_busy_s"] if s["comm_bytes"] and s["comm_busy_s"] else None
    busbw = bus_bandwidth(algbw, name, s["ranks"])
    link = ctx.link_bytes_per_s
    evidence = {
        "comm_tail_s_per_step": s["comm_tail_s"], "comm_tail_fraction": s["comm_tail_fraction"], "step_s": s["step_s"],
        "collective": name, "comm_bytes_per_step": s["comm_bytes"], "comm_busy_s_per_step": s["comm_busy_s"],
        "algbw_bytes_per_s": algbw, "busbw_bytes_per_s": busbw, "link_bytes_per_s": link,
        "link_fraction": busbw / link if busbw is not None and link else None,
        "per_rank_tail_s": {r: v["tail_s"] for r, v in s["per_rank"].items()},
    }
    return [Finding(
        kind="communication_bound", severity=severity, ranks=sorted(s["per_rank"]),
        title=f"communication the ranks cannot overlap takes {s['comm_tail_fraction']:.0%} of the step",
        evidence=evidence, recommendation=_advice(evidence["link_fraction"]), time_range_s=ctx.window_s,
        score=s["comm_tail_fraction"],
    )]


def _advice(link_fraction: float | None) -> str:
    common = ("overlap more (DDP bucket_cap_mb so the first buckets leave early; gradient accumulation with no_sync "
              "to communicate less often)")
    if link_fraction is not None and link_fraction >= LINK_SATURATED:
        return (f"The link is saturated (bus bandwidth {link_fraction:.0%} of it): send fewer bytes (bf16/fp16 "
                f"compression hook, PowerSGD), use a faster link or RDMA, or {common}.")
    lead = ("Bus bandwidth is well below the link" if link_fraction is not None
            else "Pass --link-bandwidth to compare bus bandwidth with the link")
    return (f"{lead}: fuse small messages (larger DDP buckets, Horovod fusion threshold/cycle time), {common}, "
            "compress gradients (bf16/fp16 hook, PowerSGD), or move to a faster link.")

"""The profiler itself a visible share of the step: its own account (rank.json ``profiling_cost``) says so."""

from __future__ import annotations

from .base import Finding, graded
from .context import Context

TRAINING_WARNING = 0.02  # profiler time on the training thread / step time (the overhead goal is 1 %)
TRAINING_CRITICAL = 0.10
THREADS_WARNING = 0.03  # sampler + writer CPU / one core (10 Hz costs about 0.5 %)
THREADS_CRITICAL = 0.15
THREADS_MIN_WALL_S = 10.0  # shorter recordings: start-up and the first flush dominate, the share says nothing

_ADVICE = {
    "memory_breakdown": ("the memory breakdown counts every tensor saved for backward on the steps it measures: "
                         "measure fewer steps (Profiler(memory_every=20) or more, `--memory-every 20`)"),
    "zero_code_hooks": ("tbdprof profile's hooks handle each step's batch, forward, backward and optimizer events in "
                        "Python, a fixed cost per step: for a very short step, use the Profiler API in the script "
                        "(prof.loader, prof.phase)"),
    "spans": "fewer spans per step: time the step's main phases, not every small call",
    "steps": "very short steps: count several micro-steps as one step (prof.begin_step / end_step)",
}
_THREADS = ("its sampler and writer threads take a visible share of a core: lower the sampling rate "
            "(Profiler(sample_hz=10), `--sample-hz 10`) or flush less often (flush_s)")


def _run_cost(ctx: Context):
    from ..cost import profiling_cost

    if not hasattr(ctx, "_profiling_cost"):
        ctx._profiling_cost = profiling_cost(ctx.run)
    return ctx._profiling_cost


def profiler_overhead(ctx: Context) -> list[Finding]:
    cost = _run_cost(ctx)
    if not cost:
        return []
    per = cost["per_rank"]
    train = cost["training_thread_fraction"] or 0.0
    threads = max([v["threads_core_fraction"] or 0.0 for v in per.values() if (v.get("wall_s") or 0) >= THREADS_MIN_WALL_S],
                  default=0.0)
    sev_train = graded(train, TRAINING_WARNING, TRAINING_CRITICAL)
    sev_threads = graded(threads, THREADS_WARNING, THREADS_CRITICAL)
    if not (sev_train or sev_threads):
        return []
    severity = "critical" if "critical" in (sev_train, sev_threads) else "warning"
    parts, advice = [], []
    if sev_train:
        top = cost["largest_component"]
        parts.append(f"{train:.1%} of step time on the training thread (mostly {top})")
        advice.append(_ADVICE.get(top, "record less per step"))
    if sev_threads:
        parts.append(f"{threads:.1%} of one core in its threads")
        advice.append(_THREADS)
    ranks = sorted(int(r) for r, v in per.items()
                   if (v["training_thread_fraction"] or 0) >= TRAINING_WARNING or ((v["threads_core_fraction"] or 0) >= THREADS_WARNING and (v.get("wall_s") or 0) >= THREADS_MIN_WALL_S))
    worst = per[str(cost["training_thread_worst_rank"])] if cost["training_thread_worst_rank"] is not None else {}
    return [Finding(
        kind="profiler_overhead", severity=severity, ranks=ranks, time_range_s=ctx.window_s, score=max(train, threads),
        title="the profiler itself is a visible share of the step: " + "; ".join(parts),
        evidence={"training_thread_fraction": train, "threads_core_fraction": threads,
                  "largest_component": cost["largest_component"],
                  "per_step_s": worst.get("per_step_s"), "components_s": worst.get("components_s"),
                  "memory_measured_steps": worst.get("memory_measured_steps"), "median_step_s": worst.get("median_step_s")},
        recommendation="The figures of this run include the profiler's own time. " + "; ".join(advice) + ".")]

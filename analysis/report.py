"""The report front door: compose the analyses into a terminal summary,
``summary.json`` (stable keys, documented in docs/report.md) and a
self-contained ``report.html``.

Each figure comes from its own module (:mod:`.steps`, :mod:`.breakdown`,
:mod:`.utilization`, :mod:`.memory`, :mod:`.bandwidth`, :mod:`.dataio`,
:mod:`.environment`, :mod:`.coverage`); rendering lives in :mod:`.terminal` and
:mod:`.html_report`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tbdprof import schema, store

from .bandwidth import collective_bandwidth, network_usage
from .breakdown import phase_breakdown
from .cost import profiling_cost
from .coverage import run_coverage, summary_coverage
from .dataio import io_figures
from .environment import environment_table
from .gpu import gpu_figures
from .hangs import hang_summary
from .html_report import render_html
from .load import Run, analyse
from .memory import memory_breakdown
from .ops import report_section as operators_section
from .outliers import rank_outliers
from .steps import step_stats
from .system import system_figures
from .terminal import print_summary
from .utilization import utilization

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"


def _last_seen_s(run: Run) -> dict[int, float]:
    """Per rank, seconds from the run's start to its last recorded span (where a killed rank stopped)."""
    return {r: (t - run.t0_ns) / 1e9 for r, (_, t, _) in run.span_extent.items() if t is not None}


def _rank_entries(run: Run, steps: dict) -> list[dict]:
    out = []
    last_seen = _last_seen_s(run)
    for rank, m in sorted(run.ranks.items()):
        pr = steps.get("per_rank", {}).get(str(rank), {})
        start = (m.get("clock") or {}).get("start") or {}
        out.append({
            "rank": rank,
            "host": m.get("host"),
            "local_rank": m.get("local_rank"),
            "pid": m.get("pid"),
            "launcher": m.get("launcher"),
            "status": m.get("status", "unknown"),
            "steps_recorded": m.get("steps"),
            "median_step_s": pr.get("median_s"),
            "clock_offset_ns": start.get("offset_ns"),
            "clock_uncertainty_ns": start.get("uncertainty_ns"),
            "last_seen_s": last_seen.get(rank),
        })
    return out


def summarize(run: Run, link_bytes_per_s: float | None = None) -> dict:
    """All figures of one run as a JSON-ready dict (keys: docs/report.md)."""
    steps = step_stats(run)
    breakdown = phase_breakdown(run)
    memory = memory_breakdown(run)
    ranks = _rank_entries(run, steps)
    expected = run.world_size
    missing = sorted(set(range(expected)) - set(run.ranks))
    not_complete = [r["rank"] for r in ranks if r["status"] != "complete"]
    meta = {k: run.meta.get(k) for k in ("run_id", "workload", "preset", "launcher", "status", "profiled", "command_line")}
    rank0 = run.ranks[min(run.ranks)].get("metadata") or {}
    summary = {
        "schema_version": schema.SCHEMA_VERSION,
        "run": meta | {"config": rank0},
        "source": run.source(),
        "coverage": summary_coverage(run_coverage(run)),
        "world_size": expected,
        "hosts": sorted({r["host"] for r in ranks if r["host"]}),
        "complete": not missing and not not_complete and run.meta.get("status", "complete") == "complete",
        "missing_ranks": missing,
        "incomplete_ranks": not_complete,
        "ranks_without_steps": steps["ranks_without_steps"],
        "problems": run.problems,
        "warmup_steps": steps.get("warmup_steps"),
        "steps": steps.get("steps", 0),
        "throughput": {"per_s": steps.get("throughput_per_s"), "unit": steps["unit"]},
        "throughput_samples_per_s": steps.get("throughput_samples_per_s"),
        "step_time_s": steps.get("step_time_s", {}),
        "step_time_spread": steps.get("step_time_spread", {}),
        "wall_s": steps.get("wall_s"),
        "phase_fraction": breakdown["phase_fraction"],
        "comm_fraction": breakdown["comm_fraction"],
        "stack_s_per_step": breakdown["stack_s_per_step"],
        "breakdown": breakdown["per_rank"],
        "memory_bytes": memory["memory_bytes"],
        "memory": memory["per_rank"],
        "utilization": utilization(run),
        "gpu": gpu_figures(run),
        "network": {"interfaces": network_usage(run)} | collective_bandwidth(run, link_bytes_per_s),
        "io": io_figures(run),
        "system": system_figures(run),
        "environment": environment_table(run),
        "ranks": ranks,
        "per_rank_steps": steps.get("per_rank", {}),
        "profiling_cost": profiling_cost(run),
        "hangs": hang_summary(run),  # null unless a rank hung, failed or died (analysis/hangs.py)
        "operators": operators_section(run),  # null unless the run has deep windows (analysis/ops.py)
    }
    summary["rank_outliers"] = rank_outliers(run, summary)  # null up to outliers.LARGE_RANKS ranks
    return summary


def report(run_dir: str | Path, json_only: bool = False, html_report: bool = True, link_bytes_per_s: float | None = None,
           source: str = "auto") -> dict:
    """Analyse ``run_dir``; write summary.json and report.html into it; print the summary.

    Raises :class:`~.load.RunError` (one line, exit 2 from the CLI) only when
    nothing of the run is readable; every other defect is listed in
    ``problems`` and the rest is reported.
    """
    run_dir = Path(run_dir)

    def build(run: Run) -> tuple[dict, str | None]:
        summary = summarize(run, link_bytes_per_s)
        return summary, render_html(run, summary) if html_report else None

    summary, page = analyse(run_dir, build, source)
    written = [run_dir / SUMMARY_FILE] + [run_dir / REPORT_FILE] * html_report
    try:
        store.write_json_atomic(run_dir / SUMMARY_FILE, summary)
        if page is not None:
            (run_dir / REPORT_FILE).write_text(page, encoding="utf-8")
    except OSError as e:
        print(f"tbdprof: cannot write the report into {run_dir} ({e.strerror}); printing only", file=sys.stderr)
        written = []
    if json_only:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_summary(summary, run_dir)
        if written:
            print("wrote " + " and ".join(map(str, written)))
    return summary

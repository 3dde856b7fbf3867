"""``tbdprof diagnose``: why is training slow? Findings with severity, ranks, evidence and a fix.

A thin front door over the rules in :mod:`tbdprof.analysis.findings`: each
rule is a function from the run's figures (a
:class:`~.findings.context.Context`, computed in DuckDB once and only when a
rule asks) to zero or more :class:`~.findings.Finding`. A healthy run gives
no findings; a run with fewer than ``MIN_STEADY_STEPS`` steady-state steps
gives one ``too_short`` notice instead of guesses. What the recording did not
cover (:mod:`.coverage`) comes first: a ``coverage`` finding, and in the
terminal one line per item, so a run is never called healthy without saying
which checks could not run. Thresholds and their reasons: docs/diagnose.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tbdprof import schema

from . import coverage
from .findings import Finding
from .findings.communication import communication_bound
from .findings.contention import cpu_contention
from .findings.context import Context
from .findings.device import fp32_math, low_device_utilization
from .findings.hang import hang
from .findings.input_bound import input_bound
from .findings.memory import memory_leak, memory_pressure
from .findings.profiler_cost import profiler_overhead
from .findings.slowdown import slowdown
from .findings.sync import imbalance, straggler
from .fmt import fmt_bytes, fmt_pct, fmt_rate, fmt_s
from .load import Run, analyse

MIN_STEADY_STEPS = 5

# The rule table: finding kind -> rule. Every rule sees the same Context.
RULES = {
    "input_bound": input_bound,
    "communication_bound": communication_bound,
    "straggler": straggler,
    "imbalance": imbalance,
    "slowdown": slowdown,
    "cpu_contention": cpu_contention,
    "memory_pressure": memory_pressure,
    "memory_leak": memory_leak,
    "low_device_utilization": low_device_utilization,
    "fp32_math": fp32_math,
    "profiler_overhead": profiler_overhead,
}


def diagnose_run(run: Run, link_bytes_per_s: float | None = None) -> list[Finding]:
    """The findings of an opened run, most severe first (empty: healthy).

    A ``coverage`` finding joins them when an item was not recorded (see
    :mod:`.coverage`): the checks that needed it could not run."""
    ctx = Context(run, link_bytes_per_s)
    gap = _coverage_finding(run, ctx)
    stopped = hang(ctx)  # a hang or a dead rank is said however short the run (findings/hang.py)
    if ctx.steady_steps < MIN_STEADY_STEPS:
        return stopped + [_too_short(ctx)] + gap
    findings = [f for rule in RULES.values() for f in rule(ctx)]
    return sorted(findings + gap + stopped, key=Finding.sort_key)


# What each coverage item's absence keeps the diagnosis from checking.
_CHECKS = {
    schema.COVERAGE_STEPS: ["every per-step check on those ranks"],
    schema.COVERAGE_PHASES: ["input (data wait)"],
    schema.COVERAGE_COMM: ["communication", "imbalance"],
    schema.COVERAGE_MEMORY: [],  # the report's memory breakdown only; leaks and pressure read RSS and host memory
}
_ADVICE = {
    schema.COVERAGE_STEPS: "mark the steps on every rank (iterate prof.loader(loader), or `with prof.step():`)",
    schema.COVERAGE_PHASES: ("time the step's parts (prof.loader for the data wait, `with prof.phase(\"forward\")` and "
                             "backward/optimizer, or tbdprof.instrument(prof, model, optimizer))"),
    schema.COVERAGE_COMM: ("record the collectives: prof.watch(model, optimizer) on the DDP model or Horovod optimizer "
                           "(before registering a comm hook of your own), or `with prof.comm(nbytes=n):` around "
                           "collectives the script calls itself"),
    schema.COVERAGE_MEMORY: "call prof.watch(model, optimizer) to record the memory breakdown",
}


def unchecked(cov: dict[str, dict]) -> list[tuple[list[str], str, dict]]:
    """(checks that could not run, item, its coverage entry) for each item missing or unknown."""
    gaps = coverage.gaps(cov)
    out = []
    for item, e in gaps.items():
        checks = list(_CHECKS.get(item, []))
        if item == schema.COVERAGE_COMM and schema.COVERAGE_PHASES in gaps:
            checks.append("stragglers")  # neither arrival times nor the phase composition
        out.append((checks, item, e))
    return out


def unchecked_text(cov: dict[str, dict]) -> str | None:
    """``communication, imbalance (comm missing: why); ...`` or None when every check could run."""
    parts = [f"{', '.join(checks)} ({item} {coverage.STATE_TEXT[e['state']]}: {e['how']})"
             for checks, item, e in unchecked(cov) if checks]
    return "; ".join(parts) or None


def _coverage_finding(run: Run, ctx: Context) -> list[Finding]:
    cov = coverage.run_coverage(run)
    missing = {item: e for item, e in cov.items() if e["state"] == schema.COVERAGE_MISSING}
    if not missing:
        return []
    checks = [c for cs, item, _ in unchecked(cov) for c in cs]
    blocking = any(_CHECKS[item] for item in missing)
    names = ", ".join(coverage.LABEL.get(i, i) for i in missing)
    return [Finding(
        kind="coverage", severity="warning" if blocking else "info",
        ranks=sorted({r for e in missing.values() for r in e["ranks"]}), time_range_s=ctx.window_s, score=1.0,
        title=(f"not recorded: {names}; " + (f"the diagnosis could not check {', '.join(checks)}" if checks
                                              else "every check could still run")),
        evidence={"missing": {item: e["how"] for item, e in missing.items()},
                  "unknown": {item: e["how"] for item, e in cov.items() if e["state"] == coverage.UNKNOWN},
                  "could_not_check": checks, "coverage": {item: e["state"] for item, e in cov.items()}},
        recommendation="To see it: " + "; ".join(_ADVICE[item] for item in missing) + ".")]


def _too_short(ctx: Context) -> Finding:
    per = {r: p["steps"] for r, p in ctx.per_rank.items()}
    short = sorted(r for r in ctx.run.ranks if per.get(r, 0) < MIN_STEADY_STEPS)
    return Finding(
        kind="too_short", severity="info", ranks=short, time_range_s=ctx.window_s,
        title=(f"too short to judge: {min(per.values(), default=0)} steady-state steps after {ctx.run.warmup_steps} "
               f"warm-up (at least {MIN_STEADY_STEPS} needed on every rank)"),
        evidence={"steady_steps": per, "warmup_steps": ctx.run.warmup_steps, "needed": MIN_STEADY_STEPS},
        recommendation=_too_short_advice(ctx.run))


def _too_short_advice(run: Run) -> str:
    need = run.warmup_steps + MIN_STEADY_STEPS
    if run.meta.get("launcher") == "profile":  # tbdprof profile runs the user's command: it has no --steps
        return (f"Run the script for more steps: at least {need} optimizer steps ({run.warmup_steps} warm-up + "
                f"{MIN_STEADY_STEPS}), e.g. with its own max-steps or epochs option.")
    return f"Run at least {need} steps (--steps), or lower --warmup."


def diagnose(run_dir: str | Path, link_bytes_per_s: float | None = None) -> list[Finding]:
    """Open ``run_dir`` and diagnose it. Raises :class:`~.load.RunError` when nothing is readable."""
    return analyse(run_dir, lambda run: diagnose_run(run, link_bytes_per_s))


def diagnose_with_coverage(run_dir: str | Path, link_bytes_per_s: float | None = None,
                           source: str = "auto") -> tuple[dict, list[Finding]]:
    """The run's coverage (:func:`.coverage.run_coverage`) and its findings (``source``: :data:`.load.SOURCES`)."""
    return analyse(run_dir, lambda run: (coverage.run_coverage(run), diagnose_run(run, link_bytes_per_s)), source)


def diagnose_command(run_dir: str | Path, json_out: bool = False, link_bytes_per_s: float | None = None, file=None,
                     source: str = "auto") -> int:
    """Print the diagnosis of ``run_dir`` (JSON list of findings, or rich text); returns the exit status."""
    cov, findings = diagnose_with_coverage(run_dir, link_bytes_per_s, source)
    out = file or sys.stdout
    if json_out:
        print(json.dumps([f.to_dict() for f in findings], indent=2, default=str), file=out)
    else:
        _print(findings, Path(run_dir), out, cov)
    return 0


_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def _print(findings: list[Finding], run_dir: Path, out, cov: dict | None = None) -> None:
    from rich.markup import escape
    from rich.panel import Panel

    from .terminal import console, print_coverage

    con = console(out)
    con.print(f"[bold]tbdprof diagnose[/bold]  {escape(run_dir.name)}")
    if cov:
        print_coverage(con, cov)
    gaps = unchecked_text(cov) if cov else None
    shown = [f for f in findings if f.kind != "coverage"]  # the coverage lines above say it
    if not shown:
        if gaps:
            con.print("[yellow]no bottleneck found in what was recorded;[/yellow] could not check: " + escape(gaps))
        else:
            con.print("[green]healthy:[/green] no bottleneck found (input, communication, stragglers, imbalance, "
                      "a slowdown mid-run, CPU, memory, device utilization, FP32 math off the tensor cores)")
        return
    for f in shown:
        when = f"  [dim]{f.time_range_s[0]:.1f}-{f.time_range_s[1]:.1f} s[/dim]" if f.time_range_s else ""
        body = "\n".join([escape(f.title), "", *_evidence_lines(f.evidence), "", f"[bold]fix:[/bold] {escape(f.recommendation)}"])
        con.print(Panel(body, title=f"[{_STYLE[f.severity]}]{f.severity.upper()}[/] {f.kind}{when}",
                        title_align="left", border_style=_STYLE[f.severity]))
    if gaps:
        con.print("[yellow]could not check:[/yellow] " + escape(gaps))


def _evidence_lines(evidence: dict, indent: str = "", unit_key: str | None = None) -> list[str]:
    """One line per figure, nested dicts indented; a dict of plain values takes its units from its own key."""
    from rich.markup import escape

    lines = []
    for key, value in evidence.items():
        if value is None or value == [] or value == {}:
            continue
        if isinstance(value, dict):
            nested = any(isinstance(v, dict) for v in value.values())
            lines += [f"{indent}{key}:", *_evidence_lines(value, indent + "  ", None if nested else str(key))]
        else:
            lines.append(escape(f"{indent}{key}: {_fmt(unit_key or str(key), value)}"))
    return lines


def _fmt(key: str, value) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    if key.endswith("_per_s"):
        return fmt_rate(value)
    if key.endswith("_bytes") or key.endswith("_bytes_per_step") or key == "bytes_per_step":
        return fmt_bytes(value)
    if key.endswith("_fraction") or key.endswith("_share") or key == "last_share":
        return fmt_pct(value)
    if key.endswith("_s") or key.endswith("_s_per_step") or key.startswith("late_by"):
        return fmt_s(value)
    return f"{value:.3g}" if isinstance(value, float) else str(value)

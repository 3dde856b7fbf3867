"""``tbdprof diagnose``: why is training slow? Findings with severity, ranks, evidence and a fix.

A thin front door over the rules in :mod:`tbdprof.analysis.findings`: each
rule is a function from the run's figures (a
:class:`~.findings.context.Context`, computed in DuckDB once and only when a
rule asks) to zero or more :class:`~.findings.Finding`. A healthy run gives
no findings; a run with fewer than ``MIN_STEADY_STEPS`` steady-state steps
gives one ``too_short`` notice instead of guesses. Thresholds and their
reasons: docs/diagnose.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .findings import Finding
from .findings.communication import communication_bound
from .findings.contention import cpu_contention
from .findings.context import Context
from .findings.device import fp32_math, low_device_utilization
from .findings.input_bound import input_bound
from .findings.memory import memory_leak, memory_pressure
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
    "cpu_contention": cpu_contention,
    "memory_pressure": memory_pressure,
    "memory_leak": memory_leak,
    "low_device_utilization": low_device_utilization,
    "fp32_math": fp32_math,
}


def diagnose_run(run: Run, link_bytes_per_s: float | None = None) -> list[Finding]:
    """The findings of an opened run, most severe first (empty: healthy)."""
    ctx = Context(run, link_bytes_per_s)
    if ctx.steady_steps < MIN_STEADY_STEPS:
        return [_too_short(ctx)]
    findings = [f for rule in RULES.values() for f in rule(ctx)]
    return sorted(findings, key=Finding.sort_key)


def _too_short(ctx: Context) -> Finding:
    per = {r: p["steps"] for r, p in ctx.per_rank.items()}
    short = sorted(r for r in ctx.run.ranks if per.get(r, 0) < MIN_STEADY_STEPS)
    return Finding(
        kind="too_short", severity="info", ranks=short, time_range_s=ctx.window_s,
        title=(f"too short to judge: {min(per.values(), default=0)} steady-state steps after {ctx.run.warmup_steps} "
               f"warm-up (at least {MIN_STEADY_STEPS} needed on every rank)"),
        evidence={"steady_steps": per, "warmup_steps": ctx.run.warmup_steps, "needed": MIN_STEADY_STEPS},
        recommendation=f"Run at least {ctx.run.warmup_steps + MIN_STEADY_STEPS} steps (--steps), or lower --warmup.")


def diagnose(run_dir: str | Path, link_bytes_per_s: float | None = None) -> list[Finding]:
    """Open ``run_dir`` and diagnose it. Raises :class:`~.load.RunError` when nothing is readable."""
    return analyse(run_dir, lambda run: diagnose_run(run, link_bytes_per_s))


def diagnose_command(run_dir: str | Path, json_out: bool = False, link_bytes_per_s: float | None = None, file=None) -> int:
    """Print the diagnosis of ``run_dir`` (JSON list of findings, or rich text); returns the exit status."""
    findings = diagnose(run_dir, link_bytes_per_s)
    out = file or sys.stdout
    if json_out:
        print(json.dumps([f.to_dict() for f in findings], indent=2, default=str), file=out)
    else:
        _print(findings, Path(run_dir), out)
    return 0


_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def _print(findings: list[Finding], run_dir: Path, out) -> None:
    from rich.markup import escape
    from rich.panel import Panel

    from .terminal import console

    con = console(out)
    con.print(f"[bold]tbdprof diagnose[/bold]  {run_dir.name}")
    if not findings:
        con.print("[green]healthy:[/green] no bottleneck found (input, communication, stragglers, imbalance, CPU, "
                  "memory, device utilization, FP32 math off the tensor cores)")
        return
    for f in findings:
        when = f"  [dim]{f.time_range_s[0]:.1f}-{f.time_range_s[1]:.1f} s[/dim]" if f.time_range_s else ""
        body = "\n".join([escape(f.title), "", *_evidence_lines(f.evidence), "", f"[bold]fix:[/bold] {escape(f.recommendation)}"])
        con.print(Panel(body, title=f"[{_STYLE[f.severity]}]{f.severity.upper()}[/] {f.kind}{when}",
                        title_align="left", border_style=_STYLE[f.severity]))


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

"""The report front door: compose the analyses into a terminal summary,
``summary.json`` (stable keys, see docs/report.md) and a self-contained ``report.html``."""

from __future__ import annotations

import html
import json
import sys
import time
from pathlib import Path

from tbdprof import schema, store

from . import plots
from .breakdown import phase_breakdown
from .environment import environment_table
from .load import Run, open_run
from .memory import memory_breakdown, memory_series
from .steps import step_series, step_stats
from .system import series, system_figures

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"


def _rank_entries(run: Run, steps: dict) -> list[dict]:
    out = []
    for rank, m in sorted(run.ranks.items()):
        pr = steps.get("per_rank", {}).get(str(rank), {})
        out.append({
            "rank": rank,
            "host": m.get("host"),
            "local_rank": m.get("local_rank"),
            "pid": m.get("pid"),
            "launcher": m.get("launcher"),
            "status": m.get("status", "unknown"),
            "steps_recorded": m.get("steps"),
            "median_step_s": pr.get("median_s"),
            "clock_offset_ns": ((m.get("clock") or {}).get("start") or {}).get("offset_ns"),
            "clock_uncertainty_ns": ((m.get("clock") or {}).get("start") or {}).get("uncertainty_ns"),
        })
    return out


def summarize(run: Run) -> dict:
    """All figures of one run as a JSON-ready dict."""
    steps = step_stats(run)
    breakdown = phase_breakdown(run)
    memory = memory_breakdown(run)
    system = system_figures(run)
    ranks = _rank_entries(run, steps)
    expected = run.world_size
    missing = sorted(set(range(expected)) - set(run.ranks))
    not_complete = [r["rank"] for r in ranks if r["status"] != "complete"]
    meta = {k: run.meta.get(k) for k in ("run_id", "workload", "preset", "launcher", "status", "profiled")}
    rank0 = run.ranks.get(min(run.ranks), {}).get("metadata", {})
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "run": meta | {"config": rank0},
        "world_size": expected,
        "hosts": sorted({r["host"] for r in ranks if r["host"]}),
        "complete": not missing and not not_complete and run.meta.get("status", "complete") == "complete",
        "missing_ranks": missing,
        "incomplete_ranks": not_complete,
        "problems": run.problems,
        "warmup_steps": steps.get("warmup_steps"),
        "steps": steps.get("steps", 0),
        "throughput_samples_per_s": steps.get("throughput_samples_per_s"),
        "step_time_s": steps.get("step_time_s", {}),
        "wall_s": steps.get("wall_s"),
        "phase_fraction": breakdown["phase_fraction"],
        "breakdown": breakdown["per_rank"],
        "memory_bytes": memory["memory_bytes"],
        "memory": memory["per_rank"],
        "system": system,
        "environment": environment_table(run),
        "ranks": ranks,
        "per_rank_steps": steps.get("per_rank", {}),
    }


# --- terminal ----------------------------------------------------------------------


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _fmt_s(x) -> str:
    return "-" if x is None else f"{x * 1e3:.1f} ms"


def print_summary(summary: dict, run_dir: Path, file=None) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(file=file or sys.stdout, width=110)
    run = summary["run"]
    con.print(f"[bold]tbdprof report[/bold]  {run.get('run_id') or run_dir.name}  "
              f"workload={run.get('workload') or '-'} preset={run.get('preset') or '-'}  "
              f"ranks={summary['world_size']} hosts={len(summary['hosts'])}")
    for p in summary["problems"]:
        con.print(f"[yellow]note:[/yellow] {p}", markup=True, highlight=False)
    if summary["missing_ranks"]:
        con.print(f"[yellow]missing ranks:[/yellow] {summary['missing_ranks']}")
    if summary["incomplete_ranks"]:
        con.print(f"[yellow]ranks that did not finish cleanly:[/yellow] {summary['incomplete_ranks']}")
    if not summary["steps"]:
        con.print("no training steps were recorded (after warm-up); system timelines only")
    else:
        st = summary["step_time_s"]
        tp = summary["throughput_samples_per_s"]
        con.print(f"throughput [bold]{tp:,.1f}[/bold] samples/s   step time median {_fmt_s(st['median'])}  "
                  f"p90 {_fmt_s(st['p90'])}  p99 {_fmt_s(st['p99'])}   ({summary['steps']} steps after {summary['warmup_steps']} warm-up)")
    t = Table(title="step breakdown (fraction of step time)", title_justify="left")
    phases = list(summary["phase_fraction"])
    t.add_column("rank")
    for p in phases:
        t.add_column(p, justify="right")
    t.add_column("step", justify="right")
    t.add_column("allreduce/step", justify="right")
    for rank, b in summary["breakdown"].items():
        comm = b["comm"].get(schema.COMM_ALLREDUCE)
        t.add_row(rank, *[f"{b['phase_fraction'].get(p, 0) * 100:.1f}%" for p in phases], _fmt_s(b["step_s"]),
                  f"{_fmt_s(comm['s_per_step'])} {_fmt_bytes(comm['bytes_per_step'])}" if comm else "-")
    con.print(t)
    if summary["memory"]:
        t = Table(title="memory per step (median after warm-up)", title_justify="left")
        cols = [*schema.MEMORY_CATEGORIES, "peak"]
        t.add_column("rank")
        for c in cols:
            t.add_column(c, justify="right")
        for rank, m in summary["memory"].items():
            t.add_row(rank, *[_fmt_bytes(m[c]) for c in cols])
        con.print(t)
    sysf = summary["system"]
    if sysf:
        t = Table(title="system", title_justify="left")
        for c in ("who", "CPU avg", "RSS max", "read (syscalls)", "net sent", "net recv"):
            t.add_column(c, justify="right" if c != "who" else "left")
        for rank, f in sysf.get("per_rank", {}).items():
            t.add_row(f"rank {rank}", f"{f.get('cpu.process_pct', {}).get('avg', 0):.0f}%",
                      _fmt_bytes(f.get("mem.rss_bytes", {}).get("max")), _fmt_bytes(f.get("io.read_chars", {}).get("total")), "", "")
        for host, f in sysf.get("per_host", {}).items():
            net = sysf["network"].get(host, {})
            t.add_row(f"host {host}", f"{f.get('cpu.system_pct', {}).get('avg', 0):.0f}%",
                      _fmt_bytes(f.get("mem.used_bytes", {}).get("max")), "",
                      _fmt_bytes(net.get("bytes_sent")), _fmt_bytes(net.get("bytes_recv")))
        con.print(t)


# --- HTML -------------------------------------------------------------------------------

_CSS = """body{font:14px system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left}.diff{background:#fff3cd}.note{color:#8a6d3b}
.kpi{display:inline-block;margin:0 2em 1em 0}.kpi b{display:block;font-size:1.6em}figure{margin:1em 0}"""


def _table(header: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><tr>{h}</tr>{''.join(body)}</table>"


def _figure(svg: str | None, caption: str) -> str:
    if not svg:
        return f'<p class="note">{html.escape(caption)}: nothing recorded.</p>'
    return f'<figure role="img" aria-label="{html.escape(caption)}">{svg}</figure>'


def render_html(run: Run, summary: dict) -> str:
    run_meta = summary["run"]
    title = f"tbdprof report: {run_meta.get('run_id') or run.path.name}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    parts.append(f"<h1>{html.escape(title)}</h1>")
    parts.append(f"<p>workload {html.escape(str(run_meta.get('workload')))}, preset {html.escape(str(run_meta.get('preset')))}, "
                 f"{summary['world_size']} ranks on {len(summary['hosts'])} host(s); generated {html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>")
    for p in summary["problems"] + [f"missing ranks: {summary['missing_ranks']}"] * bool(summary["missing_ranks"]):
        parts.append(f'<p class="note">{html.escape(p)}</p>')
    st = summary["step_time_s"]
    tp = summary["throughput_samples_per_s"]
    kpis = [("throughput (samples/s)", f"{tp:,.1f}" if tp else "-"), ("median step", _fmt_s(st.get("median"))),
            ("p90 step", _fmt_s(st.get("p90"))), ("steps (after warm-up)", summary["steps"]),
            ("peak memory / rank", _fmt_bytes(summary["memory_bytes"].get("peak")))]
    parts.append("<h2>Overview</h2>" + "".join(f'<div class="kpi">{html.escape(k)}<b>{html.escape(str(v))}</b></div>' for k, v in kpis))

    parts.append("<h2>Step time</h2>")
    parts.append(_figure(plots.lines({f"rank {r}": v for r, v in step_series(run).items()}, "step time per step", "step", "ms", 1e-3), "step time per step"))
    parts.append("<h2>Step breakdown</h2>")
    bars = {f"rank {r}": b["phase_s_per_step"] for r, b in summary["breakdown"].items()}
    parts.append(_figure(plots.stacked_bars(bars, "seconds per step by phase", "ms per step", 1e-3), "step breakdown per rank"))
    phases = list(summary["phase_fraction"])
    parts.append(_table(["rank", *phases, "allreduce ms/step", "allreduce bytes/step"], [
        [r, *[f"{b['phase_fraction'].get(p, 0) * 100:.1f}%" for p in phases],
         f"{b['comm'].get('allreduce', {}).get('s_per_step', 0) * 1e3:.2f}", _fmt_bytes(b["comm"].get("allreduce", {}).get("bytes_per_step"))]
        for r, b in summary["breakdown"].items()]))

    parts.append("<h2>Memory</h2>")
    mem_bars = {f"rank {r}": {c: m[c] for c in schema.MEMORY_CATEGORIES} for r, m in summary["memory"].items()}
    parts.append(_figure(plots.stacked_bars(mem_bars, "memory breakdown (median step)", "MiB", plots.MB), "memory breakdown per rank"))
    parts.append(_table(["rank", *schema.MEMORY_CATEGORIES, "peak"], [[r, *[_fmt_bytes(m[c]) for c in (*schema.MEMORY_CATEGORIES, "peak")]] for r, m in summary["memory"].items()]))
    parts.append(_figure(plots.lines(series(run, "mem.rss_bytes"), "resident memory", "s", "MiB", plots.MB), "resident memory over time"))

    parts.append("<h2>CPU</h2>")
    parts.append(_figure(plots.lines(series(run, "cpu.process_pct"), "rank CPU (100% = one core)", "s", "%"), "rank CPU over time"))
    parts.append(_figure(plots.lines(series(run, "cpu.core_pct"), "per-core busy", "s", "%"), "per-core CPU over time"))
    gpu = series(run, "gpu.util_pct")
    if gpu:
        parts.append("<h2>GPU</h2>")
        parts.append(_figure(plots.lines(gpu, "GPU utilization", "s", "%"), "GPU utilization"))
        parts.append(_figure(plots.lines(series(run, "gpu.mem_used_bytes"), "GPU memory used", "s", "MiB", plots.MB), "GPU memory"))
        parts.append(_figure(plots.lines(series(run, "gpu.power_w"), "GPU power", "s", "W"), "GPU power"))

    parts.append("<h2>Network</h2>")
    parts.append(_figure(plots.lines(series(run, "net.bytes_sent"), "bytes sent per interface", "s", "MiB/s", plots.MB), "network sent over time"))
    parts.append(_figure(plots.lines(series(run, "net.bytes_recv"), "bytes received per interface", "s", "MiB/s", plots.MB), "network received over time"))
    net = summary["system"].get("network", {})
    parts.append(_table(["host", "sent", "received"], [[h, _fmt_bytes(v["bytes_sent"]), _fmt_bytes(v["bytes_recv"])] for h, v in net.items()]))

    parts.append("<h2>I/O</h2>")
    parts.append(_figure(plots.lines(series(run, "io.read_chars"), "bytes read by rank and loader workers", "s", "MiB/s", plots.MB), "process reads over time"))
    parts.append(_figure(plots.lines(series(run, "disk.read_bytes"), "disk reads", "s", "MiB/s", plots.MB), "disk reads over time"))

    parts.append("<h2>Environment</h2>")
    env = summary["environment"]
    if env["rows"]:
        parts.append(_table(["setting", *[f"rank {r}" for r in env["ranks"]]],
                            [[row["key"], *row["values"]] for row in env["rows"]],
                            ["diff" if row["differs"] else "" for row in env["rows"]]))
        parts.append('<p class="note">Highlighted rows differ between ranks.</p>')
    parts.append("<h2>Ranks</h2>")
    parts.append(_table(["rank", "host", "status", "steps", "median step", "clock offset (us)", "+-"],
                        [[r["rank"], r["host"], r["status"], r["steps_recorded"], _fmt_s(r["median_step_s"]),
                          "-" if r["clock_offset_ns"] is None else f"{r['clock_offset_ns'] / 1e3:.1f}",
                          "-" if r["clock_uncertainty_ns"] is None else f"{r['clock_uncertainty_ns'] / 1e3:.1f}"] for r in summary["ranks"]]))
    parts.append("</body></html>")
    return "\n".join(parts)


def report(run_dir: str | Path, json_only: bool = False, html_report: bool = True) -> dict:
    """Analyse ``run_dir``; write summary.json and report.html into it; print the summary."""
    run_dir = Path(run_dir)
    run = open_run(run_dir)
    summary = summarize(run)
    try:
        store.write_json_atomic(run_dir / SUMMARY_FILE, summary)
        if html_report:
            (run_dir / REPORT_FILE).write_text(render_html(run, summary), encoding="utf-8")
    except OSError as e:
        print(f"tbdprof: cannot write the report into {run_dir} ({e.strerror}); printing only", file=sys.stderr)
    if json_only:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_summary(summary, run_dir)
        print(f"wrote {run_dir / SUMMARY_FILE} and {run_dir / REPORT_FILE}")
    return summary

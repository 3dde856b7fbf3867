"""The terminal summary of a run: rich tables over the dict :func:`.report.summarize` returns."""

from __future__ import annotations

import sys
from pathlib import Path

from tbdprof import schema

from .fmt import fmt_bytes, fmt_num, fmt_pct, fmt_rate, fmt_s, stopped_ranks_note
from .gpu import GPU_TABLE_HEADER, gpu_table_rows


def console(file=None, width: int = 120):
    """A rich console on ``file`` (stdout): as wide as ``COLUMNS`` says, else as the terminal
    when ``file`` is one, else ``width`` (stable output in files and pipes)."""
    import os
    import shutil

    from rich.console import Console

    file = file or sys.stdout
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) >= 40:
        width = int(columns)
    elif getattr(file, "isatty", lambda: False)():
        width = shutil.get_terminal_size((width, 24)).columns
    return Console(file=file, width=width, highlight=False)


def table(title: str, header: list[str], rows: list[list[str]], compact: bool = False, left: tuple[int, ...] = (0,)):
    """A rich table: the columns at ``left`` (indices, negative from the end) left-aligned, the others right-aligned;
    ``compact``: no frame, only a rule under the header (the large-job view)."""
    from rich import box
    from rich.table import Table

    t = Table(title=title, title_justify="left", **({"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False} if compact else {}))
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i in left or i - len(header) in left else "right")
    for row in rows:
        t.add_row(*row)
    return t


_COVERAGE_STYLE = {schema.COVERAGE_RECORDED: "green", schema.COVERAGE_MISSING: "bold red", schema.COVERAGE_NOT_APPLICABLE: "dim"}


def print_coverage(con, cov: dict) -> None:
    """One line per coverage item: ✓ / ✗ (– not applicable, ? unknown), the item and how or why not."""
    from rich.markup import escape

    from .coverage import coverage_lines

    con.print("coverage (what the recording saw):")
    width = max(len(item) for item in cov) if cov else 0
    for (symbol, item, text), e in zip(coverage_lines(cov), cov.values()):
        con.print(f"  [{_COVERAGE_STYLE.get(e['state'], 'yellow')}]{symbol}[/] {item:<{width}}  {escape(text)}")


def header_subject(run: dict) -> str:
    """``workload=resnet50 preset=tiny``, or for a profiled command (no workload) ``command=python train.py``."""
    if not run.get("workload") and run.get("command_line"):
        return f"command={run['command_line']}"
    return f"workload={run.get('workload') or '-'} preset={run.get('preset') or '-'}"


def _after_warmup(summary: dict) -> str:
    """How the step count treats warm-up: the rollups of scale mode count the warm-up steps too."""
    if (summary.get("source") or {}).get("mode") == "rollups":
        return f"with {summary['warmup_steps']} warm-up"
    return f"after {summary['warmup_steps']} warm-up"


def print_summary(summary: dict, run_dir: Path, file=None) -> None:
    """Print the headline figures and one table per analysis."""
    from rich.markup import escape

    con = console(file)
    run = summary["run"]
    con.print(f"[bold]tbdprof report[/bold]  {escape(str(run.get('run_id') or run_dir.name))}  "
              f"{escape(header_subject(run))}  ranks={summary['world_size']} hosts={len(summary['hosts'])}", markup=True)
    from .hangs import print_hangs

    print_hangs(con, summary.get("hangs"))  # a hang or a dead rank first: its title and where each rank is
    if summary.get("coverage"):
        print_coverage(con, summary["coverage"])
    source = summary.get("source") or {}
    if source.get("mode") == "rollups":  # one line: what scale mode changes is in summary.json's source note
        first, last = source["zoom_steps"]
        con.print(f"read from rollups ({source['rank_hours']:g} rank-hours): per-minute figures, raw spans of steps "
                  f"{first}-{last} only (summary.json: source)")
    notes = list(summary["problems"])
    notes += [f"missing ranks: {summary['missing_ranks']}"] * bool(summary["missing_ranks"])
    notes += [n for n in [stopped_ranks_note(summary)] if n]
    notes += [f"ranks with no steady-state steps: {summary['ranks_without_steps']}"] * bool(summary["ranks_without_steps"] and summary["steps"])
    for note in notes:
        con.print("note: " + note, markup=False, style="yellow")
    if not summary["steps"]:
        con.print("no training steps were seen (after warm-up): system and process timelines only")
    else:
        st, tp, sp = summary["step_time_s"], summary["throughput"], summary["step_time_spread"]
        con.print(f"throughput {fmt_num(tp['per_s'])} {tp['unit']}/s   step time median {fmt_s(st['median'])}  "
                  f"p90 {fmt_s(st['p90'])}  p99 {fmt_s(st['p99'])}  cv {fmt_pct(sp.get('cv'))}  "
                  f"rank spread {fmt_pct(sp.get('rank_spread'))}   ({summary['steps']} steps {_after_warmup(summary)})",
                  markup=False)
    from .cost import cost_line

    if (line := cost_line(summary.get("profiling_cost"))) is not None:
        con.print(line, markup=False)
    from .ops import print_operators

    print_operators(con, summary.get("operators"))  # deep windows: what they cost, top operators and layers
    if summary.get("rank_outliers"):
        print_large(con, summary)
    else:
        _print_per_rank(con, summary)
    _print_collectives(con, summary["network"], compact=bool(summary.get("rank_outliers")))


def fmt_figure(name: str, v) -> str:
    """A value of the large-job distribution table (:data:`.outliers.FIGURE_UNITS`: bytes, percent, rate; else seconds)."""
    from .outliers import FIGURE_UNITS

    unit = FIGURE_UNITS.get(name)
    return fmt_bytes(v) if unit == "bytes" else fmt_num(v, 0) + "%" if unit == "pct" else fmt_rate(v) if unit == "rate" else fmt_s(v)


def outlier_rows(large: dict, hosts: int | None = None) -> tuple[list[list[str]], list[list[str]]]:
    """The rows of the slowest-ranks and slowest-hosts tables (at most ``hosts`` hosts), for the terminal and HTML."""
    ranks = [[str(r["rank"]), r["host"] or "-", fmt_s(r["median_step_s"]), f"{r['over_median']:+.1%}",
              fmt_s(r["late_by_s"]) if r["late_by_s"] is not None else "-", r["cause"]] for r in large["slowest_ranks"]]
    host_rows = [[h["host"], str(h["ranks"]), fmt_s(h["median_step_s"]), f"{h['over_median']:+.1%}", str(h["slowest_rank"]), h["cause"]]
                 for h in large["slowest_hosts"][:hosts]]
    return ranks, host_rows


RANK_HEADER = ["rank", "host", "median step", "vs median", "late at collectives", "cause"]
HOST_HEADER = ["host", "ranks", "median step", "vs median", "slowest rank", "cause"]
TERMINAL_HOSTS = 5  # slowest hosts in the terminal (the HTML report lists outliers.TOP_HOSTS)


def print_large(con, summary: dict) -> None:
    """Past outliers.LARGE_RANKS ranks: one distribution table over ranks, then the slowest ranks and hosts."""
    large = summary["rank_outliers"]
    con.print(table(f"per rank, over {large['ranks']} ranks (steady state; per-rank figures: summary.json)",
                    ["figure", "min", "p50", "p90", "max"],
                    [[k, *[fmt_figure(k, q[c]) for c in ("min", "p50", "p90", "max")]] for k, q in large["distribution"].items()],
                    compact=True))
    ranks, hosts = outlier_rows(large, TERMINAL_HOSTS)
    con.print(table(f"slowest ranks (of {large['ranks']})", RANK_HEADER, ranks, compact=True, left=(0, 1, -1)))
    con.print(table(f"slowest hosts (of {len(summary['hosts'])})", HOST_HEADER, hosts, compact=True, left=(0, -1)))


def _print_per_rank(con, summary: dict) -> None:
    """One row per rank (and host, GPU, interface): the tables of runs up to outliers.LARGE_RANKS ranks."""
    phases = list(summary["phase_fraction"])
    if not summary["breakdown"]:
        con.print("step breakdown: no steps recorded")
    else:
        con.print(table("step breakdown (fraction of step time; comm runs beside the phases)",
                         ["rank", *phases, "mean step", "comm", "overlapped", "exposed"],
                         [[rank, *[fmt_pct(b["phase_fraction"].get(p, 0)) for p in phases], fmt_s(b["step_s"]),
                           fmt_s(b["comm_s_per_step"]["total"]), fmt_s(b["comm_s_per_step"]["overlapped"]),
                           fmt_s(b["comm_s_per_step"]["exposed"])] for rank, b in summary["breakdown"].items()]))
    if summary["memory"]:
        cols = [*schema.MEMORY_CATEGORIES, "peak"]
        con.print(table("memory per step (median after warm-up)", ["rank", *cols],
                         [[rank, *[fmt_bytes(m[c]) for c in cols]] for rank, m in summary["memory"].items()]))
    util, io = summary["utilization"], summary["io"]["per_rank"]
    rows = [[f"rank {r}", fmt_num(u.get("cpu.process_pct", {}).get("avg"), 0) + "%", fmt_num(u.get("cores", {}).get("avg"), 2),
             fmt_rate(io.get(r, {}).get("read_chars", {}).get("per_s")), fmt_pct(io.get(r, {}).get("data_wait", {}).get("fraction"))]
            for r, u in util["per_rank"].items()]
    rows += [[f"host {h}", fmt_num(u.get("cpu.system_pct", {}).get("avg"), 0) + "%", fmt_num(u.get("cores"), 0), "", ""]
             for h, u in util["per_host"].items()]
    rows += [[f"gpu {g}", fmt_num(u.get("util_pct", {}).get("avg"), 0) + "%", "", "", ""] for g, u in util["gpus"].items()]
    con.print(table("utilization (steady-state average)", ["who", "CPU / GPU", "cores", "read (syscalls)", "data wait"], rows))
    if summary["gpu"]["gpu_recorded"]:
        con.print(table("GPU per rank (steady-state average; n/a: no GPM counters, which need Hopper or newer)",
                        GPU_TABLE_HEADER, gpu_table_rows(summary["gpu"], unavailable="n/a")))
    net = summary["network"]
    rows = [[f"{h} {nic}", fmt_rate(v.get("sent_bytes_per_s")), fmt_rate(v.get("recv_bytes_per_s")),
             fmt_bytes(v.get("sent_bytes_per_step")), fmt_bytes(v.get("bytes_sent"))]
            for h, nics in net["interfaces"].items() for nic, v in nics.items() if v.get("bytes_sent") or v.get("bytes_recv")]
    if rows:
        con.print(table("network (steady state)", ["host interface", "sent", "received", "sent / step", "sent total"], rows))


def _print_collectives(con, net: dict, compact: bool = False) -> None:
    link = net["link_bytes_per_s"]
    rows = [[name, str(c["calls"]), fmt_bytes(c["bytes"]), fmt_rate(c["algbw_bytes_per_s"]), fmt_rate(c["busbw_bytes_per_s"]),
             fmt_pct(c["link_fraction"]) if link else "unknown"] for name, c in net["collectives"].items()]
    if rows:
        con.print(table(f"collectives (link {fmt_rate(link) if link else 'unknown'})",
                         ["collective", "calls", "bytes", "algbw", "busbw", "busbw / link"], rows, compact=compact))

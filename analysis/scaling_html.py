"""Rendering of the scaling report: terminal tables, the self-contained ``scaling.html`` and plot files.

Works on the dict :func:`.scaling.scaling` returns. The tables are built once
(:func:`tables`) and drawn both by rich and as HTML; every string in the page
goes through :func:`html.escape` (the report's helpers), plot labels through
matplotlib's SVG writer.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import plots
from .fmt import fmt_bytes, fmt_num, fmt_pct, fmt_rate, fmt_s
from .html_report import _CSS, _esc, _figure, _table

HTML_FILE = "scaling.html"
NOISE = "~"  # marks a difference within the run-to-run spread
LABELS = {"compute": "compute", "comm_exposed": "exposed comm", "data_wait": "data wait", "sync_wait": "sync wait", "other": "other"}


def _cfg(c: dict) -> str:
    return f"{c['nproc']} ranks / {c['hosts']} host{'s' * (c['hosts'] > 1)}"


def _range(s: dict, fmt=fmt_num) -> str:
    if s["n"] > 1 and s["min"] != s["max"]:
        return f"{fmt(s['median'])} [{fmt(s['min'])}-{fmt(s['max'])}]"
    return fmt(s["median"])


def _pp(x: float, noise: bool = False) -> str:
    return f"{x * 100:+.1f}" + (NOISE if noise else "")


def tables(result: dict, series: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each table of one series: scaling, attribution, communication, projection."""
    unit = result["unit"]
    causes = result["causes"]
    configs = series["configs"]
    out = [(f"{series['label']}: throughput and step time split (ms per step; {NOISE} = within the spread of repeats)",
            ["configuration", "runs", f"{unit}/s", "speedup", "ideal", "efficiency", "step", *[LABELS[c] for c in causes]],
            [[_cfg(c), str(c["repeats"]), _range(c["throughput"]) + (NOISE if c["noise_vs_previous"] else ""),
              f"{c['attribution']['speedup']:.2f}x", f"{c['attribution']['ideal_speedup']:.0f}x",
              _range(c["attribution"]["efficiency"], fmt_pct) + (NOISE if c["attribution"]["noise"]["gap"] else ""),
              fmt_s(c["period_s"]["median"]), *[fmt_s(c["split_s_per_step"][k]["median"]) for k in causes]] for c in configs])]
    out.append((f"{series['label']}: efficiency gap by cause (percentage points of ideal throughput, vs "
                f"n={series['baseline']['nproc']})",
                ["configuration", "efficiency", "gap", *[LABELS[c] for c in causes], "sum of causes"],
                [[_cfg(c), fmt_pct(a["efficiency"]["median"]), _pp(a["gap"], a["noise"]["gap"]),
                  *[_pp(a["causes"][k], a["noise"][k]) for k in causes], _pp(a["sum"])]
                 for c in configs[1:] for a in [c["attribution"]]]))
    out.append((f"{series['label']}: allreduce per step vs the ring lower bound 2(n-1)/n x bytes / link + 2(n-1) x latency",
                ["configuration", "fabric", "gradients", "sent per rank", "link", "latency / hop", "bound", "measured", "comm busy",
                 "measured / bound"],
                [[_cfg(c), m["fabric"] or "-", fmt_bytes(m["grad_bytes"]), fmt_bytes(m["ring_bytes"]), fmt_rate(m["link_bytes_per_s"]),
                  "-" if m["latency_s"] is None else f"{m['latency_s'] * 1e6:.0f} us",
                  fmt_s(m["bound_s"]), fmt_s(m["transfer_s"]), fmt_s(m["busy_s"]), fmt_num(m["ratio"], 2)]
                 for c in configs if c["nproc"] > 1 for m in [c["comm_model"]]]))
    proj = series["projection"]
    out.append((f"{series['label']}: projection (fit on n={proj['fit']})",
                ["size", "hosts", "step", f"{unit}/s", "efficiency", "measured", "projected vs measured"],
                [[str(p["nproc"]), str(p["hosts"]), fmt_s(p["step_s"]), fmt_num(p["throughput"]), fmt_pct(p["efficiency"]),
                  _range(p["measured"]) if "measured" in p else "not run", f"{p['error'] * 100:+.1f}%" if "error" in p else "-"]
                 for p in proj["sizes"]]))
    return out


def print_scaling(result: dict, file=None) -> None:
    """The tables of every series, and the projection's assumptions, with rich."""
    from .terminal import console, table

    con = console(file, width=160)
    con.print(f"[bold]tbdprof scaling[/bold]  workload={result['workload'] or '-'} preset={result['preset'] or '-'}  "
              f"{result['scaling']} scaling", markup=True)
    for note in result["problems"]:
        con.print("note: " + note, markup=False, style="yellow")
    for s in result["series"]:
        for title, header, rows in tables(result, s):
            con.print(table(title, header, rows))
        for a in s["projection"]["assumptions"]:
            con.print("  assumption: " + a, markup=False)


def _point(x: float, s: dict) -> tuple[float, float, float, float]:
    return x, s["median"], s["min"], s["max"]


def _figures(result: dict, s: dict) -> dict[str, tuple[object, str]]:
    """name -> (matplotlib figure, caption) for one series."""
    unit, configs, proj = result["unit"], s["configs"], s["projection"]
    by_hosts: dict[str, list] = {}
    for c in configs:
        by_hosts.setdefault(f"measured, {c['hosts']} host(s)", []).append(_point(c["nproc"], c["throughput"]))
    projected = [(p["nproc"], p["throughput"], p["throughput"], p["throughput"]) for p in proj["sizes"]]
    base = configs[0]
    xs = sorted({c["nproc"] for c in configs} | {p["nproc"] for p in proj["sizes"]})
    ideal = [(x, base["throughput"]["median"] * x / base["nproc"]) for x in xs]
    eff = {"measured": [_point(c["nproc"], c["attribution"]["efficiency"]) for c in configs],
           "projected": [(p["nproc"], p["efficiency"], p["efficiency"], p["efficiency"]) for p in proj["sizes"]]}
    split = {_cfg(c): {LABELS[k]: c["split_s_per_step"][k]["median"] for k in result["causes"]} for c in configs}
    gap = {_cfg(c): {LABELS[k]: c["attribution"]["causes"][k] * 100 for k in result["causes"]} for c in configs[1:]}
    return {
        "throughput": (plots.curves(by_hosts | {"projected": projected}, f"throughput vs ranks ({s['label']})", "ranks",
                                    f"{unit}/s", ideal, dashed=("projected",)), "throughput vs ranks, ideal and projection"),
        "efficiency": (plots.curves(eff, "scaling efficiency", "ranks", "efficiency (1 = linear)", [(x, 1.0) for x in xs],
                                    dashed=("projected",)), "scaling efficiency vs ranks"),
        "split": (plots.columns(split, "time per step by cause", "ms per step", 1e-3), "per-step time split by configuration"),
        "attribution": (plots.columns(gap, "efficiency gap by cause", "percentage points"), "efficiency gap attributed to causes"),
    }


def render_html(result: dict, figures: list[dict[str, str]]) -> str:
    """The page: per series, its plots (inline SVG) and tables, and the projection's assumptions."""
    title = f"tbdprof scaling: {result['workload'] or 'runs'}"
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_esc(title)}</h1>",
             f"<p>preset {_esc(result['preset'])}, {_esc(result['scaling'])} scaling, throughput in {_esc(result['unit'])}/s; "
             f"generated {_esc(time.strftime('%Y-%m-%d %H:%M:%S'))}. Method: docs/scaling.md. "
             f"{_esc(NOISE)} marks a difference within the spread of repeated runs.</p>"]
    parts += [f'<p class="note">{_esc(p)}</p>' for p in result["problems"]]
    for s, svgs in zip(result["series"], figures):
        parts.append(f"<h2>{_esc(s['label'])}</h2>")
        parts += [_figure(svg, caption) for caption, svg in svgs.items()]
        for table_title, header, rows in tables(result, s):
            parts += [f"<h3>{_esc(table_title)}</h3>", _table(header, rows)]
        parts.append("<ul>" + "".join(f"<li>{_esc(a)}</li>" for a in s["projection"]["assumptions"]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(result: dict, folder: Path, plot_format: str = "png") -> list[Path]:
    """Write ``scaling.html`` and (unless ``plot_format`` is ``none``) one plot file per figure; the paths written."""
    written, pages = [], []
    for i, s in enumerate(result["series"]):
        svgs = {}
        for name, (fig, caption) in _figures(result, s).items():
            path = folder / f"scaling-{name}{f'-{i + 1}' * (len(result['series']) > 1)}.{plot_format}"
            svgs[caption] = plots.export(fig, [path] if plot_format != "none" else [])
            written += [path] * (plot_format != "none")
        pages.append(svgs)
    (folder / HTML_FILE).write_text(render_html(result, pages), encoding="utf-8")
    return [folder / HTML_FILE, *written]

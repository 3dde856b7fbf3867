"""The self-contained ``report.html``: one file, plots inline as SVG, no scripts, no external resources.

Every string that comes from the run (host names, environment values,
options, problems) goes through :func:`html.escape`; plot labels are escaped
by matplotlib's SVG writer.
"""

from __future__ import annotations

import html
import time

from tbdprof import schema

from . import plots
from .fmt import fmt_bytes, fmt_num, fmt_pct, fmt_rate, fmt_s, stopped_ranks_note
from .gpu import GPU_TABLE_HEADER, gpu_table_rows
from .cost import cost_line
from .coverage import coverage_lines
from .heatmap import rank_heatmap
from .load import Run
from .steps import step_series
from .terminal import HOST_HEADER, RANK_HEADER, fmt_figure, outlier_rows
from .timeline import metric_series, span_series

_CSS = """body{font:14px system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left}.diff{background:#fff3cd}.note{color:#8a6d3b}
.kpi{display:inline-block;margin:0 2em 1em 0}.kpi b{display:block;font-size:1.6em}figure{margin:1em 0}
figure svg{max-width:100%;height:auto}nav a{margin-right:1em}
.coverage td{text-align:left}.cov-mark{font-weight:bold;width:1.5em}.cov-recorded .cov-mark{color:#2e7d32}
.cov-missing .cov-mark,.cov-missing .cov-how{color:#c62828}.cov-unknown .cov-mark{color:#8a6d3b}
.hang-title{font-weight:bold;color:#c62828;font-size:1.1em}.hang-info{color:#8a6d3b}
.hang-ranks td,.hang-ranks th{text-align:left}pre.stack{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:12px}"""

HANG_SECTION = "Hang"  # first, only when a rank hung, failed or died (summary["hangs"])
OPERATORS_SECTION = "Operators"  # after the step breakdown, only when the run has deep windows (summary["operators"])
SECTIONS = ("Coverage", "Overview", "Step time", "Step breakdown", "Utilization", "Memory", "Network", "I/O", "Environment", "Ranks")


def _esc(x) -> str:
    return html.escape(str(x))


def _table(header: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    if not rows:
        return '<p class="note">nothing recorded.</p>'
    h = "".join(f"<th>{_esc(c)}</th>" for c in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>")
    return f"<table><tr>{h}</tr>{''.join(body)}</table>"


def _figure(svg: str | None, caption: str) -> str:
    if not svg:
        return f'<p class="note">{_esc(caption)}: nothing recorded.</p>'
    return f'<figure role="img" aria-label="{_esc(caption)}">{svg}</figure>'


PLOT_POINTS = 500  # per series: more than a 7.5-inch figure can show
HOSTS_LISTED = 8  # the page header names at most this many hosts, else their count, first and last


def _timeline(run: Run, summary: dict, metric: str, title: str, unit: str, scale: float = 1.0, per_host: bool = False) -> str:
    """``metric`` over time; with ``per_host`` past outliers.LARGE_RANKS ranks, the ranks' series summed per host."""
    bands = _hang_bands(summary, f"hang-band-{metric.replace('.', '-')}")
    series = metric_series(run, metric, PLOT_POINTS, scale)
    if per_host and summary.get("rank_outliers"):
        series, title = _sum_per_host(series, {f"rank {r['rank']}": r["host"] for r in summary["ranks"]}), f"{title}, summed per host"
    return _figure(plots.lines(series, title, "s since run start", unit, bands=bands), title)


def _sum_per_host(series: dict, host_of: dict[str, str]) -> dict:
    """Series named ``rank R [device]`` summed per host (points at the same x added)."""
    out: dict[str, dict[float, float]] = {}
    for name, pts in series.items():
        head = " ".join(name.split()[:2])
        acc = out.setdefault(host_of.get(head, head), {})
        for x, y in pts:
            acc[x] = acc.get(x, 0.0) + y
    return {h: sorted(acc.items()) for h, acc in out.items()}


def _slug(name: str) -> str:
    return name.lower().replace(" ", "-").replace("/", "")


def _section(name: str) -> str:
    return f'<h2 id="{_slug(name)}">{_esc(name)}</h2>'


def _overview(summary: dict) -> list[str]:
    st, tp, sp = summary["step_time_s"], summary["throughput"], summary["step_time_spread"]
    kpis = [(f"throughput ({tp['unit']}/s)", fmt_num(tp["per_s"])), ("median step", fmt_s(st.get("median"))),
            ("p90 step", fmt_s(st.get("p90"))), ("p99 step", fmt_s(st.get("p99"))),
            ("rank spread", fmt_pct(sp.get("rank_spread"))), ("steps (after warm-up)", summary["steps"]),
            ("exposed comm", fmt_pct(summary["comm_fraction"].get("exposed"))),
            ("peak memory / rank", fmt_bytes(summary["memory_bytes"].get("peak")))]
    out = [_section("Overview")]
    notes = summary["problems"] + [f"missing ranks: {summary['missing_ranks']}"] * bool(summary["missing_ranks"])
    notes += [f"ranks with no steady-state steps: {summary['ranks_without_steps']}"] * bool(summary["ranks_without_steps"])
    notes += [n for n in [stopped_ranks_note(summary)] if n]
    source = summary.get("source") or {}
    if source.get("mode") == "rollups":
        notes.append(f"read from rollups ({source['rank_hours']:g} rank-hours): {source['note']}")
    out += [f'<p class="note">{_esc(p)}</p>' for p in notes]
    out.append("".join(f'<div class="kpi">{_esc(k)}<b>{_esc(v)}</b></div>' for k, v in kpis))
    if (line := cost_line(summary.get("profiling_cost"))) is not None:
        out.append(f'<p class="cost">{_esc(line)}</p>')  # the terminal's line: what the recording cost
    return out


def _coverage(summary: dict) -> list[str]:
    """What the recording saw, before any figure: one row per item, ✓ / ✗ and how or why not."""
    cov = summary.get("coverage") or {}
    out = [_section("Coverage")]
    rows = "".join(
        f'<tr class="cov-{_esc(e["state"])}"><td class="cov-mark">{_esc(symbol)}</td><td>{_esc(item)}</td>'
        f'<td class="cov-how">{_esc(text)}</td></tr>'
        for (symbol, item, text), e in zip(coverage_lines(cov), cov.values()))
    out.append(f'<table class="coverage">{rows}</table>' if rows else '<p class="note">coverage: unknown.</p>')
    gaps = [item for item, e in cov.items() if e["state"] not in (schema.COVERAGE_RECORDED, schema.COVERAGE_NOT_APPLICABLE)]
    if gaps:
        out.append(f'<p class="note">Figures that need {_esc(", ".join(gaps))} are incomplete or absent in this report '
                   f'(✗ missing: there to see, not recorded; ? unknown: this recording does not say).</p>')
    return out


def _hang_rows(hangs: dict) -> list[dict]:
    """The lanes of the hang timeline (plots.rank_timeline), one per rank."""
    rows = []
    for r, h in hangs["per_rank"].items():
        row = {"name": f"rank {r}", "id": f"hang-rank-{r}", "first_s": h.get("first_s"), "last_s": h.get("last_seen_s"),
               "label": h.get("label"), "tick": h.get("at_s") if h["state"] == "hung" else None}
        if h["state"] in ("hung", "resumed", "failed", "dead") and h.get("no_progress_since_s") is not None:
            row["band"] = (h["no_progress_since_s"], h.get("until_s") or h["no_progress_since_s"])
        if h["state"] == "dead":
            row["ended"] = True
            row["end_label"] = f"recording ends ({h['exit']})" if h.get("exit") else "recording ends: rank died"
        rows.append(row)
    return rows


def _hang(summary: dict) -> list[str]:
    """The hang first: the finding's title, each rank's lane on one time axis, a table and the stuck rank's stack."""
    hangs = summary.get("hangs")
    if not hangs:
        return []
    out = [_section(HANG_SECTION)]
    cls = "hang-title" if hangs.get("severity") != "info" else "hang-title hang-info"
    if hangs.get("title"):
        out.append(f'<p class="{cls}" data-severity="{_esc(hangs.get("severity"))}">{_esc(hangs["title"])}</p>')
    svg = plots.rank_timeline(_hang_rows(hangs), "progress per rank", "s since run start")
    ranks = ",".join(r for r, h in hangs["per_rank"].items() if h.get("label"))
    out.append(f'<figure class="hang-timeline" data-hang-ranks="{_esc(ranks)}" role="img" aria-label="progress per rank">{svg}'
               '<figcaption class="note">Grey: the rank\'s recording. Red: no progress, from its last step end to the resume, '
               'else to the end of its recording; the tick is when the hang was seen; a cross, where a dead rank\'s '
               'recording ends.</figcaption></figure>' if svg else "")
    header = ["rank", "state", "step", "place", "location", "no progress since", "no progress for"]
    body = []
    for r, h in hangs["per_rank"].items():
        state = h["state"] + (" (culprit)" if h.get("culprit") else "")
        cells = [r, state, h.get("step"), h.get("label") or "-", h.get("location") or "-",
                 "-" if h.get("no_progress_since_s") is None else f"{h['no_progress_since_s']:.1f} s",
                 "-" if h.get("no_progress_for_s") is None else f"{h['no_progress_for_s']:.1f} s"]
        body.append(f'<tr data-rank="{_esc(r)}" data-state="{_esc(h["state"])}" data-place="{_esc(h.get("label") or "")}">'
                    + "".join(f"<td>{_esc('-' if c is None else c)}</td>" for c in cells) + "</tr>")
    out.append('<table class="hang-ranks"><tr>' + "".join(f"<th>{_esc(c)}</th>" for c in header) + "</tr>" + "".join(body) + "</table>")
    for r, text in hangs.get("stack_excerpt", {}).items():
        out.append(f"<p>Stack of rank {_esc(r)} (the part that names the place; every thread's: the rank's <code>hangs</code> table):</p>")
        out.append(f'<pre class="stack" data-rank="{_esc(r)}">{_esc(text)}</pre>')
    return out


def _hang_bands(summary: dict, gid: str = "hang-band-steps") -> list[tuple[float, float, str, str]]:
    """The bands of the figures over time: each stretch in which some rank made no progress (every hang episode,
    a dead rank's silence), overlapping ones merged; SVG groups ``gid``, ``gid-2``..., the legend on the first."""
    hangs = summary.get("hangs") or {}
    spans = []
    for h in hangs.get("per_rank", {}).values():
        spans += [(e["no_progress_since_s"], e["until_s"]) for e in h.get("episodes") or []]
        if h.get("no_progress_since_s") is not None:
            spans.append((h["no_progress_since_s"], h.get("until_s") or h["no_progress_since_s"]))
    merged: list[list[float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    what = "no progress (hang, resumed)" if hangs.get("resumed") else "no progress (hang)"
    return [(a, b, what if i == 0 else "", gid if i == 0 else f"{gid}-{i + 1}") for i, (a, b) in enumerate(merged)]


def _shown(summary: dict, per_rank: dict) -> dict:
    """``per_rank`` (by rank), past outliers.LARGE_RANKS ranks only its slowest ranks (summary["rank_outliers"])."""
    large = summary.get("rank_outliers")
    if not large:
        return per_rank
    keep = {str(r["rank"]) for r in large["slowest_ranks"]}
    return {r: v for r, v in per_rank.items() if str(r) in keep}


def _shown_hosts(summary: dict, per_host: dict) -> dict:
    """``per_host`` (by host), past outliers.LARGE_RANKS ranks only the slowest hosts and those of the slowest
    ranks (summary["rank_outliers"])."""
    large = summary.get("rank_outliers")
    if not large:
        return per_host
    keep = {h["host"] for h in large["slowest_hosts"]} | {r["host"] for r in large["slowest_ranks"]}
    return {h: v for h, v in per_host.items() if h in keep}


def _hosts_text(hosts: list[str]) -> str:
    """The hosts by name, or past ``HOSTS_LISTED`` their count and first and last name."""
    if len(hosts) <= HOSTS_LISTED:
        return f"{len(hosts)} host(s): {', '.join(hosts)}"
    return f"{len(hosts)} hosts ({hosts[0]} to {hosts[-1]})"


def _large_note(summary: dict, what: str) -> list[str]:
    """Past outliers.LARGE_RANKS ranks, the note under a table that shows some ranks or hosts only."""
    if not summary.get("rank_outliers"):
        return []
    return [f'<p class="note">{_esc(what)}; every one: summary.json.</p>']


def _large(summary: dict) -> list[str]:
    """Past outliers.LARGE_RANKS ranks: the distribution over ranks, the slowest ranks and hosts with their cause."""
    large = summary.get("rank_outliers")
    if not large:
        return []
    ranks, hosts = outlier_rows(large)
    return [f'<p class="note large-note">{large["ranks"]} ranks: per-rank tables show the {len(ranks)} slowest ranks '
            "(every rank: summary.json); the distribution over ranks:</p>",
            '<div class="rank-distribution">' + _table(["figure", "min", "p50", "p90", "max"], [
                [k, *[fmt_figure(k, q[c]) for c in ("min", "p50", "p90", "max")]] for k, q in large["distribution"].items()]) + "</div>",
            f"<p>Slowest ranks (of {large['ranks']}):</p>", '<div class="slowest-ranks">' + _table(RANK_HEADER, ranks) + "</div>",
            f"<p>Slowest hosts (of {len(summary['hosts'])}):</p>", '<div class="slowest-hosts">' + _table(HOST_HEADER, hosts) + "</div>"]


def _heatmaps(run: Run, summary: dict) -> list[str]:
    """Past outliers.LARGE_RANKS ranks: the rank x time heatmaps (analysis/heatmap.py), one per metric."""
    if not summary.get("rank_outliers") or not (heat := rank_heatmap(run)):
        return []
    out = []
    for m, h in heat["metrics"].items():
        svg = plots.heatmap(heat["rows"], heat["x_s"], heat["bucket_s"], h["values"], h["median"],
                            f"{h['title']} per rank, relative to the median ({fmt_s(h['median'])})", h["hot_ranks"], h["hot_hosts"],
                            gid=f"heatmap-{m}")
        out.append(f'<figure class="heatmap" data-metric="{_esc(m)}" data-hot-ranks="{_esc(",".join(map(str, h["hot_ranks"])))}" '
                   f'data-hot-hosts="{_esc(",".join(h["hot_hosts"]))}" role="img" aria-label="{_esc(h["title"])} heatmap">{svg}</figure>')
    out.append('<p class="note">One row per rank, grouped by host; time buckets across. Red: slower than the median cell '
               '(saturated at 2x), blue: faster, grey: no step started in the bucket.</p>')
    return out


def _breakdown(summary: dict) -> list[str]:
    out = [_section("Step breakdown")]
    if not summary["breakdown"]:
        out.append('<p class="note">no steps recorded.</p>')
        return out
    out += _large(summary)
    bars = {f"rank {r}": b["stack_s_per_step"] for r, b in _shown(summary, summary["breakdown"]).items()}
    out.append(_figure(plots.stacked_bars(bars, "ms per step: phases, exposed comm outside phases, idle", "ms per step", 1e-3),
                       "step breakdown per rank"))
    phases = list(summary["phase_fraction"])
    out.append(_table(["rank", *phases, "mean step"], [
        [r, *[f"{fmt_s(b['phase_s_per_step'].get(p))} ({fmt_pct(b['phase_fraction'].get(p, 0))})" for p in phases], fmt_s(b["step_s"])]
        for r, b in _shown(summary, summary["breakdown"]).items()]))
    out.append("<p>Communication runs beside the phases: <i>overlapped</i> is the part inside backward, "
               "<i>exposed</i> the part no compute phase covers (docs/methodology.md).</p>")
    out.append(_table(["rank", "comm / step", "overlapped", "hidden (any compute)", "exposed", "exposed share of step", "bytes / step"], [
        [r, fmt_s(c["total"]), fmt_s(c["overlapped"]), fmt_s(c["hidden"]), fmt_s(c["exposed"]), fmt_pct(b["comm_fraction"]["exposed"]),
         fmt_bytes(sum(v["bytes_per_step"] for v in b["comm"].values()) if b["comm"] else None)]
        for r, b in _shown(summary, summary["breakdown"]).items() for c in [b["comm_s_per_step"]]]))
    return out


def _operators(summary: dict) -> list[str]:
    """Deep windows: what they cost and wrote, then the top operators and layers of each phase."""
    ops = summary.get("operators")
    if not ops:
        return []
    cost, size = ops["cost"], ops["bytes"]
    out = [_section(OPERATORS_SECTION)]
    said = f"{cost['windows']} deep windows ({ops['window_steps']} rank-steps recorded with torch.profiler, left out of every figure above)"
    if cost.get("window_step_ms") is not None and cost.get("neighbour_step_ms") is not None:
        said += (f"; a window step took {cost['window_step_ms']:.1f} ms against {cost['neighbour_step_ms']:.1f} ms in the "
                 f"steps around it ({fmt_pct(cost['extra_fraction'])} more)")
    if cost.get("start_call_s") is not None:
        said += (f"; the profiler's start and stop took {fmt_s(cost['start_call_s'])} and {fmt_s(cost['stop_call_s'])} "
                 f"on the training thread, the writer {fmt_s(cost['process_cpu_s'])} of CPU per window")
    said += (f". They wrote {fmt_bytes(size['total'])}: {fmt_bytes(size['traces'])} of Kineto traces and "
             f"{fmt_bytes(size['rows'])} of rows, {fmt_bytes(size['per_window_step'])} per window step.")
    out.append(f'<p class="deep-cost">{_esc(said)}</p>')
    out.append(f'<p class="note deep-kernels">GPU kernels: {_esc(ops["kernels"])}.</p>')
    header = ["phase", "operator", "self ms / step", "share of step", "layer", "self ms / step", "share of step"]
    rows = []
    for ph, d in ops["phases"].items():
        for i in range(max(len(d["operators"]), len(d["layers"]))):
            o = d["operators"][i] if i < len(d["operators"]) else None
            m = d["layers"][i] if i < len(d["layers"]) else None
            rows.append([ph if i == 0 else "", o["name"] if o else "", f"{o['self_ms']:.2f}" if o else "",
                         fmt_pct(o["share"]) if o else "", m["module"] if m else "", f"{m['self_ms']:.2f}" if m else "",
                         fmt_pct(m["share"]) if m else ""])
    out.append(_table(header, rows))
    out.append('<p class="note">Self time per window step, all ranks together; a layer is the module path its operators ran '
               'under (backward included). Per rank, the layer tree and what a slow rank does differently: '
               '<code>tbdprof ops RUN_DIR</code>.</p>')
    return out


def _utilization(run: Run, summary: dict) -> list[str]:
    util = summary["utilization"]
    out = [_section("Utilization")]
    out.append(_table(["rank", "host", "CPU avg (100% = 1 core)", "CPU max", "threads"], [
        [r, u.get("host"), fmt_num(u.get("cpu.process_pct", {}).get("avg")) + "%", fmt_num(u.get("cpu.process_pct", {}).get("max")) + "%",
         fmt_num(u.get("cpu.process_threads", {}).get("avg"), 0)] for r, u in _shown(summary, util["per_rank"]).items()]))
    out.append(_table(["host", "cores", "system CPU avg", "iowait avg", "per-core avg"], [
        [h, u.get("cores") or "-", fmt_num(u.get("cpu.system_pct", {}).get("avg")) + "%", fmt_num(u.get("cpu.iowait_pct", {}).get("avg")) + "%",
         " ".join(f"{c}:{v['avg']:.0f}%" for c, v in u.get("per_core_pct", {}).items())]
        for h, u in _shown_hosts(summary, util["per_host"]).items()]))
    out += _large_note(summary, "Ranks and hosts shown: the slowest ones and their hosts")
    out.append(_timeline(run, summary, "cpu.process_pct", "rank CPU (100% = one core)", "%"))
    out.append(_timeline(run, summary, "cpu.system_pct", "host CPU (100% = all cores)", "%"))
    out.append(_timeline(run, summary, "cpu.core_pct", "per-core busy", "%"))
    if not util["gpu_recorded"]:
        out.append('<p class="note">GPU: not recorded in this run (no NVML device). FP32 utilization: unavailable.</p>')
        return out
    figures = summary["gpu"]
    out.append(_table(GPU_TABLE_HEADER, gpu_table_rows(figures | {"per_rank": _shown(summary, figures["per_rank"])})))
    out.append('<p class="note">GPU util: NVML, the share of time a kernel ran. SM occupancy, tensor, FP32 and DRAM '
               'bandwidth: NVML GPM counters (Hopper and newer); "unavailable" where the rank recorded none, never estimated. '
               'Fragmentation: free bytes in the caching allocator\'s split blocks over its reserved bytes.</p>')
    out.append(_timeline(run, summary, "gpu.util_pct", "GPU compute utilization", "%"))
    if any(isinstance(f["tensor_util_pct"], float) for f in figures["per_rank"].values()):
        out.append(_timeline(run, summary, "gpu.tensor_util_pct", "tensor-core utilization (GPM)", "%"))
    out.append(_timeline(run, summary, "gpu.power_w", "GPU power", "W"))
    return out


def _memory(run: Run, summary: dict) -> list[str]:
    out = [_section("Memory")]
    mem_bars = {f"rank {r}": {c: m[c] for c in schema.MEMORY_CATEGORIES} for r, m in _shown(summary, summary["memory"]).items()}
    out.append(_figure(plots.stacked_bars(mem_bars, "memory breakdown (median step)", "MiB", plots.MB), "memory breakdown per rank"))
    cols = (*schema.MEMORY_CATEGORIES, "peak")
    out.append(_table(["rank", "device", *cols], [[r, m["device"], *[fmt_bytes(m[c]) for c in cols]] for r, m in _shown(summary, summary["memory"]).items()]))
    out.append(_timeline(run, summary, "mem.rss_bytes", "resident memory (RSS) per rank", "MiB", plots.MB))
    if summary["utilization"]["gpu_recorded"]:
        out.append(_timeline(run, summary, "gpu.mem_used_bytes", "GPU memory used", "MiB", plots.MB))
        out.append(_timeline(run, summary, "torch.allocated_bytes", "torch allocator: allocated", "MiB", plots.MB))
    return out


def _network(run: Run, summary: dict) -> list[str]:
    net = summary["network"]
    out = [_section("Network")]
    out.append(_timeline(run, summary, "net.bytes_sent", "bytes sent per host and interface", "MiB/s", plots.MB))
    out.append(_timeline(run, summary, "net.bytes_recv", "bytes received per host and interface", "MiB/s", plots.MB))
    out.append(_table(["host", "interface", "sent", "received", "sent/s", "received/s", "sent / step", "received / step"], [
        [h, nic, fmt_bytes(v.get("bytes_sent")), fmt_bytes(v.get("bytes_recv")), fmt_rate(v.get("sent_bytes_per_s")),
         fmt_rate(v.get("recv_bytes_per_s")), fmt_bytes(v.get("sent_bytes_per_step")), fmt_bytes(v.get("recv_bytes_per_step"))]
        for h, nics in _shown_hosts(summary, net["interfaces"]).items() for nic, v in nics.items()]))
    out += _large_note(summary, "Hosts shown: the slowest ones and those of the slowest ranks")
    link = net["link_bytes_per_s"]
    out.append(f"<p>Achieved collective bandwidth from the communication spans (nccl-tests definitions); link capacity: "
               f"{_esc(fmt_rate(link) if link else 'unknown (pass --link-bandwidth)')}.</p>")
    out.append(_table(["collective", "rank", "calls", "bytes", "busy", "algbw", "busbw", "busbw / link"], [
        [name, r, c["calls"], fmt_bytes(c["bytes"]), fmt_s(c["busy_s"]), fmt_rate(c["algbw_bytes_per_s"]),
         fmt_rate(c["busbw_bytes_per_s"]), fmt_pct(c["link_fraction"]) if link else "unknown"]
        for name, coll in net["collectives"].items() for r, c in [("all", coll), *_shown(summary, coll["per_rank"]).items()]]))
    return out


def _io(run: Run, summary: dict) -> list[str]:
    out = [_section("I/O")]
    out.append(_table(["rank", "data wait / step", "data wait share", "read (syscalls)/s", "read (storage)/s", "written/s"], [
        [r, fmt_s(v.get("data_wait", {}).get("s_per_step")), fmt_pct(v.get("data_wait", {}).get("fraction")),
         fmt_rate(v.get("read_chars", {}).get("per_s")), fmt_rate(v.get("read_bytes", {}).get("per_s")),
         fmt_rate(v.get("write_bytes", {}).get("per_s"))] for r, v in _shown(summary, summary["io"]["per_rank"]).items()]))
    out.append(_figure(plots.lines(span_series(run, schema.KIND_PHASE, schema.PHASE_DATA), "data wait per step",
                                   "s since run start", "ms", 1e-3), "data wait over time"))
    out.append(_timeline(run, summary, "io.read_chars", "bytes read by rank and loader workers (syscalls)", "MiB/s", plots.MB, per_host=True))
    out.append(_timeline(run, summary, "io.write_bytes", "bytes written to storage by rank and loader workers", "MiB/s", plots.MB,
                         per_host=True))
    out.append(_timeline(run, summary, "disk.read_bytes", "disk reads", "MiB/s", plots.MB))
    out.append(_timeline(run, summary, "disk.write_bytes", "disk writes", "MiB/s", plots.MB))
    return out


def _environment(summary: dict) -> list[str]:
    env = summary["environment"]
    out = [_section("Environment")]
    shown = _shown(summary, {str(r): 1 for r in env["ranks"]})
    cols = [i for i, r in enumerate(env["ranks"]) if str(r) in shown]
    out.append(_table(["setting", *[f"rank {env['ranks'][i]}" for i in cols]], [[row["key"], *[row["values"][i] for i in cols]]
                                                                               for row in env["rows"]],
                      ["diff" if row["differs"] else "" for row in env["rows"]]))
    if env["differences"]:
        out.append(f'<p class="note">Highlighted rows differ between ranks: {_esc(", ".join(env["differences"]))}.</p>')
    out.append(_section("Ranks"))
    shown = _shown(summary, {r["rank"]: r for r in summary["ranks"]})
    out.append(_table(["rank", "host", "status", "steps", "median step", "clock offset (us)", "+-"], [
        [r["rank"], r["host"], r["status"], r["steps_recorded"], fmt_s(r["median_step_s"]),
         "-" if r["clock_offset_ns"] is None else f"{r['clock_offset_ns'] / 1e3:.1f}",
         "-" if r["clock_uncertainty_ns"] is None else f"{r['clock_uncertainty_ns'] / 1e3:.1f}"]
        for r in summary["ranks"] if r["rank"] in shown or r["status"] != "complete"]))
    return out


def _subject(run_meta: dict) -> str:
    """``workload W, preset P``; for a ``tbdprof profile`` run (no workload) the command it profiled."""
    if not run_meta.get("workload") and run_meta.get("command_line"):
        return f"command <code>{_esc(run_meta['command_line'])}</code>"
    if not run_meta.get("workload"):
        return "no workload"
    return f"workload {_esc(run_meta.get('workload'))}, preset {_esc(run_meta.get('preset') or '-')}"


def render_html(run: Run, summary: dict) -> str:
    """The report as one HTML string."""
    run_meta = summary["run"]
    title = f"tbdprof report: {run_meta.get('run_id') or run.path.name}"
    sections = ((HANG_SECTION,) if summary.get("hangs") else ()) + SECTIONS
    if summary.get("operators"):
        at = sections.index("Step breakdown") + 1
        sections = sections[:at] + (OPERATORS_SECTION,) + sections[at:]
    nav = "".join(f'<a href="#{_slug(s)}">{_esc(s)}</a>' for s in sections)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_esc(title)}</h1>",
             f"<p>{_subject(run_meta)}, {summary['world_size']} ranks on "
             f"{_esc(_hosts_text(summary['hosts']))}; generated {_esc(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
             f"<nav>{nav}</nav>"]
    parts += _hang(summary) + _coverage(summary) + _overview(summary)
    parts.append(_section("Step time"))
    parts.append(_figure(plots.lines(step_series(run), "step time", "s since run start", "ms", 1e-3, bands=_hang_bands(summary)),
                         "step time over the run"))
    parts += _heatmaps(run, summary)
    parts += _breakdown(summary) + _operators(summary) + _utilization(run, summary) + _memory(run, summary) + _network(run, summary)
    parts += _io(run, summary) + _environment(summary)
    parts.append("</body></html>")
    return "\n".join(parts)

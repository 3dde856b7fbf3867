"""Figures for the HTML report, drawn with matplotlib into inline SVG strings.

Plotting is kept apart from computing: every function takes plain data that
the analysis modules returned.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})

MB = 1024 * 1024


def _plain(text: str) -> str:
    """Text shown literally: a '$' from the run must not start matplotlib mathtext."""
    return str(text).replace("$", r"\$")


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


MAX_LINES = 12  # more series than this are drawn as a median line in a min-max band


def _envelope(series: dict[str, list[tuple[float, float]]]) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per x (the series share time buckets): min, median and max across series."""
    by_x: dict[float, list[float]] = {}
    for pts in series.values():
        for x, y in pts:
            by_x.setdefault(x, []).append(y)
    xs = sorted(by_x)
    lo, mid, hi = [], [], []
    for x in xs:
        ys = sorted(by_x[x])
        lo.append(ys[0])
        mid.append(ys[len(ys) // 2])
        hi.append(ys[-1])
    return xs, lo, mid, hi


def lines(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str, scale: float = 1.0,
          bands: list[tuple[float, float, str, str]] = ()) -> str | None:
    """One line per key of ``series`` ((x, y) points), or, for many series, their median in a
    min-max band; None when there is nothing to draw. ``bands``: (x0, x1, label, id) spans of x
    shaded behind the lines (a hang: no progress from x0 to x1), the SVG group named ``id``."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    if len(series) > MAX_LINES:
        xs, lo, mid, hi = _envelope(series)
        ax.fill_between(xs, [y / scale for y in lo], [y / scale for y in hi], alpha=0.3, label=f"min-max of {len(series)} series")
        ax.plot(xs, [y / scale for y in mid], linewidth=1.2, label="median")
        series = {"": []}  # two legend entries
    for label, pts in sorted(series.items()):
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, [y / scale for y in ys], label=_plain(label), linewidth=1.2)
    for x0, x1, text, gid in bands:
        ax.axvspan(x0, max(x1, x0), color=HANG_COLOR, alpha=0.15, linewidth=0, gid=gid, label=_plain(text))
    ax.set_title(_plain(title), loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, frameon=False, ncol=4)
    return _svg(fig)


HANG_COLOR = "#c62828"


def rank_timeline(rows: list[dict], title: str, xlabel: str) -> str | None:
    """One lane per rank: its recording (``first_s`` to ``last_s``), a band of no progress
    (``band``: (x0, x1)) with ``label`` written over it and a tick at ``tick`` (when the hang was
    seen), and, where ``ended`` (a dead rank), a cross where its recording stops. SVG groups are
    named ``{id}-band``, ``{id}-label``, ``{id}-end`` so a reader (or a test) can find them."""
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.5 * min(24, len(rows))))
    names = [_plain(r["name"]) for r in rows]
    xmax = max([r.get("last_s") or 0 for r in rows] + [(r.get("band") or (0, 0))[1] for r in rows])
    for i, r in enumerate(rows):
        first, last = r.get("first_s") or 0.0, r.get("last_s") or 0.0
        ax.barh(i, max(0.0, last - first), left=first, height=0.35, color="#90a4ae", gid=f"{r['id']}-recording")
        if r.get("band"):
            x0, x1 = r["band"]
            color = "#9e9e9e" if r.get("ended") else HANG_COLOR  # after a death: nothing recorded
            ax.barh(i, max(x1 - x0, xmax * 0.002), left=x0, height=0.7, color=color, alpha=0.35, hatch="xx" if r.get("ended") else "//",
                    edgecolor=color, linewidth=0.5, gid=f"{r['id']}-band")
            ax.text(x0, i - 0.42, _plain(r.get("label") or ""), fontsize=7, color=HANG_COLOR, va="bottom", ha="left",
                    gid=f"{r['id']}-label", clip_on=False)
        if r.get("tick") is not None:
            ax.plot([r["tick"], r["tick"]], [i - 0.35, i + 0.35], color=HANG_COLOR, linewidth=1.5)
        if r.get("ended"):
            ax.plot([last], [i], marker="X", markersize=9, color="black", gid=f"{r['id']}-end")
            ax.text(last, i + 0.45, _plain(r.get("end_label") or "recording ends"), fontsize=7, va="top",
                    ha="right" if last > xmax * 0.6 else "left", gid=f"{r['id']}-end-label")
    ax.set_yticks(range(len(rows)), names)
    ax.set_ylim(len(rows) - 0.4, -0.9)
    ax.set_xlim(left=0, right=xmax * 1.02 if xmax else 1)
    ax.set_title(_plain(title), loc="left")
    ax.set_xlabel(xlabel)
    return _svg(fig)


def stacked_bars(rows: dict[str, dict[str, float]], title: str, ylabel: str, scale: float = 1.0) -> str | None:
    """One stacked bar per key of ``rows`` (bar label -> {segment: value})."""
    if not rows:
        return None
    segments: list[str] = []
    for parts in rows.values():
        segments += [s for s in parts if s not in segments]
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + min(12.0, 0.45 * max(2, len(rows)))))
    labels = [_plain(k) for k in rows]
    left = [0.0] * len(labels)
    cmap = plt.get_cmap("tab10")
    for i, seg in enumerate(segments):
        vals = [parts.get(seg, 0.0) / scale for parts in rows.values()]
        ax.barh(labels, vals, left=left, label=_plain(seg), color=cmap(i % 10))
        left = [a + b for a, b in zip(left, vals)]
    ax.invert_yaxis()
    ax.set_title(_plain(title), loc="left")
    ax.set_xlabel(ylabel)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _svg(fig)



def curves(series: dict[str, list[tuple[float, float, float, float]]], title: str, xlabel: str, ylabel: str,
           ideal: list[tuple[float, float]] | None = None, dashed: tuple[str, ...] = ()):
    """A figure with one line per key of ``series``, points (x, median, min, max) drawn with min-max
    error bars; ``ideal`` as a dotted reference line; series named in ``dashed`` drawn dashed."""
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    if ideal:
        xs, ys = zip(*sorted(ideal))
        ax.plot(xs, ys, ":", color="grey", label="ideal (linear)")
    for label, pts in series.items():
        if not pts:
            continue
        xs, mid, lo, hi = zip(*sorted(pts))
        ax.errorbar(xs, mid, yerr=[[m - a for m, a in zip(mid, lo)], [b - m for m, b in zip(mid, hi)]], marker="o",
                    capsize=3, linestyle="--" if label in dashed else "-", label=_plain(label))
    ax.set_title(_plain(title), loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, frameon=False)
    return fig


def columns(rows: dict[str, dict[str, float]], title: str, ylabel: str, scale: float = 1.0):
    """A figure with one stacked column per key of ``rows`` (label -> {segment: value}); negative
    segments stack downwards from zero."""
    segments: list[str] = []
    for parts in rows.values():
        segments += [s for s in parts if s not in segments]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    labels = [_plain(k) for k in rows]
    up, down = [0.0] * len(labels), [0.0] * len(labels)
    cmap = plt.get_cmap("tab10")
    for i, seg in enumerate(segments):
        vals = [parts.get(seg, 0.0) / scale for parts in rows.values()]
        bottoms = [u if v >= 0 else d for v, u, d in zip(vals, up, down)]
        ax.bar(labels, vals, bottom=bottoms, label=_plain(seg), color=cmap(i % 10))
        up = [u + max(v, 0) for u, v in zip(up, vals)]
        down = [d + min(v, 0) for d, v in zip(down, vals)]
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title(_plain(title), loc="left")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def export(fig, paths=()) -> str:
    """Write ``fig`` to each path (format from the suffix: .png, .svg) and return it as inline SVG."""
    for path in paths:
        fig.savefig(path, bbox_inches="tight", dpi=120)
    return _svg(fig)


HEAT_RANGE = 2.0  # colours saturate at this many times the median (and its inverse)


def heatmap(rows: list[tuple[str, int]], x_s: list[float], bucket_s: float, values: list[list[float | None]], mid: float,
            title: str, hot_ranks: list[int] = (), hot_hosts: list[str] = (), gid: str = "heatmap") -> str:
    """Rank x time: one row per (host, rank) of ``rows`` (grouped by host, host names on the left, thin lines
    between hosts), one column per time bucket; colour = value / ``mid`` on a log scale, white at the median,
    red slower, blue faster, grey where nothing was recorded. ``hot_hosts`` and the ``hot_ranks`` on other hosts
    are named on the right (SVG groups ``{gid}-host-H``, ``{gid}-rank-R``); the image is the SVG group ``gid``."""
    import numpy as np
    from matplotlib.colors import LogNorm

    grid = np.array([[np.nan if v is None else v / mid for v in row] for row in values], dtype=float)
    fig, ax = plt.subplots(figsize=(7.5, 2.4 + min(6.0, len(rows) / 64)))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#e0e0e0")
    extent = (x_s[0], x_s[-1] + bucket_s, len(rows) - 0.5, -0.5)
    im = ax.imshow(np.clip(grid, 1 / HEAT_RANGE, HEAT_RANGE), aspect="auto", interpolation="nearest", cmap=cmap, extent=extent,
                   norm=LogNorm(1 / HEAT_RANGE, HEAT_RANGE))
    im.set_gid(gid)
    hosts: list[tuple[str, int, int]] = []  # (host, first row, last row)
    for i, (h, _) in enumerate(rows):
        if hosts and hosts[-1][0] == h:
            hosts[-1] = (h, hosts[-1][1], i)
        else:
            hosts.append((h, i, i))
    every = max(1, -(-len(hosts) // 32))
    ax.set_yticks([(a + b) / 2 for _, a, b in hosts[::every]], [_plain(h) for h, _, _ in hosts[::every]], fontsize=6)
    if 1 < len(hosts) <= 128:  # one line collection, not an artist per host
        ax.hlines([a - 0.5 for _, a, _ in hosts[1:]], extent[0], extent[1], colors="white", linewidth=0.4)
    where = {r: (h, i) for i, (h, r) in enumerate(rows)}
    labels = [(f"host {h}", (a + b) / 2, f"{gid}-host-{h}") for h, a, b in hosts if h in hot_hosts]
    labels += [(f"rank {r}", where[r][1], f"{gid}-rank-{r}") for r in hot_ranks if where[r][0] not in hot_hosts]
    for text, y, label_gid in labels:
        ax.annotate(_plain(text), (extent[1], y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7,
                    color=HANG_COLOR, annotation_clip=False, gid=label_gid)
    ticks = [t for t in (0.5, 0.75, 1.0, 1.5, 2.0) if 1 / HEAT_RANGE <= t <= HEAT_RANGE]
    bar = fig.colorbar(im, ax=ax, pad=0.11, fraction=0.04, ticks=ticks)
    bar.ax.set_yticklabels([f"{t:g}x" for t in ticks])
    bar.ax.minorticks_off()
    bar.set_label("of the median", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    ax.set_title(_plain(title), loc="left")
    ax.set_xlabel("s since run start")
    ax.set_ylabel(f"{len(rows)} ranks by host")
    return _svg(fig)

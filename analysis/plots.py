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


def lines(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str, scale: float = 1.0) -> str | None:
    """One line per key of ``series`` ((x, y) points), or, for many series, their median in a
    min-max band; None when there is nothing to draw."""
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
    ax.set_title(_plain(title), loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, frameon=False, ncol=4)
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

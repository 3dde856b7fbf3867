"""Whole-run figures from the rollups (table ``rollups``, tbdprof/rollup.py) instead of every span.

Each rank's writer summed its spans per minute; here the rows of every rank
and interval are merged by adding (a histogram by adding its counts per
bucket). Counts, sums and bytes are those of the raw spans exactly; quantiles
come from the merged histograms and are within 1 % of the raw ones (the
nearest-rank quantile, DuckDB's ``quantile_disc``). The figures cover every
span the writers drained, warm-up and deep-window steps included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tbdprof import schema

from .load import Run

QUANTILES = {"median": 0.5, "p90": 0.9, "p99": 0.99}


@dataclass
class Merged:
    """The spans of one kind and name (on one rank, or all), merged from their rollup rows."""

    count: int = 0
    sum_ns: int = 0
    min_ns: int | None = None
    max_ns: int | None = None
    bytes: int | None = None
    items: int | None = None
    units: int | None = None
    hist: dict[int, int] = field(default_factory=dict)  # duration bucket -> spans
    start_ns: int | None = None  # earliest span start
    end_ns: int | None = None  # latest span end

    def add(self, other: Merged) -> None:
        """Merge ``other`` into this one (ranks into a whole run)."""
        self.count += other.count
        self.sum_ns += other.sum_ns
        self.min_ns = other.min_ns if self.min_ns is None else min(self.min_ns, other.min_ns)
        self.max_ns = other.max_ns if self.max_ns is None else max(self.max_ns, other.max_ns)
        for f in ("bytes", "items", "units"):
            if getattr(other, f) is not None:
                setattr(self, f, (getattr(self, f) or 0) + getattr(other, f))
        for b, n in other.hist.items():
            self.hist[b] = self.hist.get(b, 0) + n
        self.start_ns = other.start_ns if self.start_ns is None else min(self.start_ns, other.start_ns)
        self.end_ns = other.end_ns if self.end_ns is None else max(self.end_ns, other.end_ns)

    def quantile_ns(self, q: float) -> float | None:
        """The nearest-rank ``q`` quantile of the durations (the one at rank ceil(q * count)), from the
        histogram: the middle of its bucket, kept within [min, max]; None without spans."""
        if not self.count:
            return None
        rank, seen = max(1, math.ceil(q * self.count)), 0
        for b in sorted(self.hist):
            seen += self.hist[b]
            if seen >= rank:
                return min(max(schema.bucket_value(b), self.min_ns), self.max_ns)
        return float(self.max_ns)

    def stdev_ns(self) -> float:
        """The sample standard deviation of the durations, from the histogram (each span at its bucket's middle)."""
        if self.count < 2:
            return 0.0
        mean = self.sum_ns / self.count
        sq = sum(n * (schema.bucket_value(b) - mean) ** 2 for b, n in self.hist.items())
        return math.sqrt(sq / (self.count - 1))

    def figures(self) -> dict:
        """count, sums, min/max and the QUANTILES of the durations, in ns."""
        out = {"count": self.count, "sum_ns": self.sum_ns, "min_ns": self.min_ns, "max_ns": self.max_ns,
               "bytes": self.bytes, "items": self.items, "units": self.units}
        out.update({f"{name}_ns": self.quantile_ns(q) for name, q in QUANTILES.items()})
        return out


def merged(run: Run, kind: str) -> dict[tuple[int, str], Merged]:
    """Per (rank, name) the merged rollups of the spans of ``kind`` (a schema span kind); once per run."""
    return run.cached(("rollups", kind), lambda: _merged(run, kind))


def stats_row(m: Merged) -> tuple:
    """``m`` as the row :func:`analysis.steps.step_stats` reads from SQL: count, [median, p90, p99], min, max,
    mean, stdev (seconds), items, first start, last end (ns), units."""
    s = 1e9
    return (m.count, [m.quantile_ns(q) / s for q in (0.5, 0.9, 0.99)], m.min_ns / s, m.max_ns / s, m.sum_ns / m.count / s,
            m.stdev_ns() / s, m.items, m.start_ns, m.end_ns, m.units)


def all_ranks(by_rank: dict[tuple[int, str], Merged]) -> dict[str, Merged]:
    """Per name, ``by_rank``'s rows of every rank merged."""
    out: dict[str, Merged] = {}
    for (_, name), m in sorted(by_rank.items()):
        out.setdefault(name, Merged()).add(m)
    return out


def _merged(run: Run, kind: str) -> dict[tuple[int, str], Merged]:
    out: dict[tuple[int, str], Merged] = {}
    for rank, name, count, sum_ns, lo, hi, nbytes, items, units, start, end in run.sql(
            "SELECT rank, name, sum(count), sum(sum_ns), min(min_ns), max(max_ns), sum(bytes), sum(items), sum(units), "
            "min(start_ns), max(end_ns) FROM rollups WHERE kind = ? GROUP BY rank, name", [kind]):
        out[(rank, name)] = Merged(int(count), int(sum_ns), lo, hi, _int(nbytes), _int(items), _int(units), start_ns=start, end_ns=end)
    for rank, name, bucket, n in run.sql(
            "SELECT rank, name, b, sum(c) FROM (SELECT rank, name, unnest(hist_bucket) AS b, unnest(hist_count) AS c "
            "FROM rollups WHERE kind = ?) GROUP BY rank, name, b", [kind]):
        out[(rank, name)].hist[bucket] = int(n)
    return out


def memory_rows(run: Run) -> list[tuple]:
    """Per rank, the memory breakdown from its memory rollups, in the row :func:`analysis.memory.memory_breakdown`
    reads from SQL: rank, device, the mean of each category, the highest peak, the mean total, the rows (each
    rank's every measured step, warm-up included)."""
    means = ", ".join(f"sum(value_sum) FILTER (WHERE name = '{c}') / sum(count) FILTER (WHERE name = '{c}')"
                      for c in schema.MEMORY_CATEGORIES)
    return run.sql(f"SELECT rank, any_value(device), {means}, max(value_max) FILTER (WHERE name = 'peak'), "
                   "sum(value_sum) FILTER (WHERE name = 'total') / sum(count) FILTER (WHERE name = 'total'), "
                   "sum(count) FILTER (WHERE name = 'total') FROM rollups WHERE kind = ? GROUP BY rank ORDER BY rank",
                   [schema.ROLLUP_MEMORY])


def _int(v) -> int | None:
    return None if v is None else int(v)


def whole_run(run: Run) -> dict | None:
    """The run's figures from its rollups, or None when it has none (a store from before rollups):
    ``ranks`` {rank: step figures}, ``steps`` (all ranks merged), ``phases`` and ``comm``
    {name: figures, all ranks merged}, ``phases_by_rank`` {rank: {phase: sum_ns}}. Durations in ns."""
    if not run.has(schema.ROLLUPS):
        return None
    steps = merged(run, schema.KIND_STEP)
    every = Merged()
    for m in steps.values():
        every.add(m)
    out = {"ranks": {rank: m.figures() for (rank, _), m in sorted(steps.items())}, "steps": every.figures()}
    phases = merged(run, schema.KIND_PHASE)
    out["phases"] = {name: m.figures() for name, m in all_ranks(phases).items()}
    out["phases_by_rank"] = {}
    for (rank, name), m in sorted(phases.items()):
        out["phases_by_rank"].setdefault(rank, {})[name] = m.sum_ns
    out["comm"] = {name: m.figures() for name, m in all_ranks(merged(run, schema.KIND_COMM)).items()}
    return out


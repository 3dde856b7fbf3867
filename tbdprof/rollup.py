"""Rollups at write time: each rank's writer sums the spans, samples and memory rows it drains into
per-interval rows of table ``rollups`` (:class:`tbdprof.schema.RollupRow`).

Everything in a rollup is mergeable by adding: counts, sums, bytes, the
histogram's counts per bucket (log-spaced, ``schema.ROLLUP_RATIO``), a
counter's increase; min and max merge by min and max. So merging the rows of
any set of ranks and intervals gives the figures the raw rows would: counts
and sums exactly, quantiles within 1 % (the middle of a bucket is within 1 %
of everything in it). Analysis of a whole run reads these instead of every span.

The functions here are pure (rows in, summaries out); :class:`Rollups` holds
what the writer carries from one flush to the next: the intervals still open
and each counter's last reading. Horovod's own timeline (kind ``hvd``, one name
per tensor) is not rolled up.
"""

from __future__ import annotations

import logging
import math

from . import schema

log = logging.getLogger("tbdprof")

SPAN_KINDS = (schema.KIND_STEP, schema.KIND_PHASE, schema.KIND_COMM, schema.KIND_MARK)


class SpanStats:
    """The spans of one (interval, kind, name): times, totals, step range and duration histogram."""

    __slots__ = ("start", "end", "count", "sum", "min", "max", "bytes", "items", "units", "first_step", "last_step", "hist")

    def __init__(self) -> None:
        self.start = self.min = self.first_step = math.inf
        self.end = self.max = self.last_step = -math.inf
        self.count = self.sum = 0
        self.bytes = self.items = self.units = None
        self.hist: dict[int, int] = {}

    def add(self, step: int, start: int, end: int, nbytes, items, units) -> None:
        d = end - start
        self.count += 1
        self.sum += d
        self.start, self.end = min(self.start, start), max(self.end, end)
        self.min, self.max = min(self.min, d), max(self.max, d)
        self.first_step, self.last_step = min(self.first_step, step), max(self.last_step, step)
        b = schema.duration_bucket(d)
        self.hist[b] = self.hist.get(b, 0) + 1
        if nbytes is not None:
            self.bytes = (self.bytes or 0) + nbytes
        if items is not None:
            self.items = (self.items or 0) + items
        if units is not None:
            self.units = (self.units or 0) + units

    def merge(self, other: SpanStats) -> None:
        self.count += other.count
        self.sum += other.sum
        self.start, self.end = min(self.start, other.start), max(self.end, other.end)
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.first_step, self.last_step = min(self.first_step, other.first_step), max(self.last_step, other.last_step)
        for b, n in other.hist.items():
            self.hist[b] = self.hist.get(b, 0) + n
        for f in ("bytes", "items", "units"):
            if getattr(other, f) is not None:
                setattr(self, f, (getattr(self, f) or 0) + getattr(other, f))

    def row(self, interval: int, kind: str, name: str) -> schema.RollupRow:
        buckets = sorted(self.hist)
        return schema.RollupRow(interval, kind, name, "", self.start, self.end, self.count, self.sum, self.min,
                                self.max, self.bytes, self.items, self.units, self.first_step, self.last_step,
                                buckets, [self.hist[b] for b in buckets])


class ValueStats:
    """The readings of one (interval, metric, device): count, sum (a counter: its increase), min, max."""

    __slots__ = ("start", "end", "count", "sum", "min", "max")

    def __init__(self) -> None:
        self.start, self.end = math.inf, -math.inf
        self.count, self.sum = 0, 0.0
        self.min, self.max = math.inf, -math.inf

    def add(self, ts: int, value: float, amount: float) -> None:
        self.count += 1
        self.sum += amount
        self.start, self.end = min(self.start, ts), max(self.end, ts)
        self.min, self.max = min(self.min, value), max(self.max, value)

    def merge(self, other: ValueStats) -> None:
        self.count += other.count
        self.sum += other.sum
        self.start, self.end = min(self.start, other.start), max(self.end, other.end)
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)

    def row(self, interval: int, kind: str, name: str, device: str) -> schema.RollupRow:
        return schema.RollupRow(interval, kind, name, device, self.start, self.end, self.count,
                                value_sum=self.sum, value_min=self.min, value_max=self.max)


Key = tuple  # (interval_ns: the interval's start, kind, name, device)


def summarize_spans(rows, every_ns: int = schema.ROLLUP_INTERVAL_NS) -> dict[Key, SpanStats]:
    """Per (interval start, kind, name, "") the stats of ``rows`` (SpanRows or tuples in its column order).

    A span's interval is that of its step's end when the step's own span is among ``rows`` (so an
    interval's phases belong to its steps), else that of its own end."""
    step_interval = {r[0]: r[4] - r[4] % every_ns for r in rows if r[2] == schema.KIND_STEP}
    out: dict[Key, SpanStats] = {}
    for step, name, kind, start, end, nbytes, items, units in rows:
        if kind not in SPAN_KINDS:
            continue
        own = end - end % every_ns
        key = (step_interval.get(step, own) if step >= 0 else own, kind, name, "")
        stats = out.get(key)
        if stats is None:
            stats = out[key] = SpanStats()
        stats.add(step, start, end, nbytes, items, units)
    return out


def summarize_samples(rows, last: dict[tuple[str, str], float],
                      every_ns: int = schema.ROLLUP_INTERVAL_NS) -> dict[Key, ValueStats]:
    """Per (interval start, gauge or counter, metric, device) the stats of ``rows`` (SampleRows or tuples).

    ``last`` holds each counter's latest reading before ``rows`` and is updated: a counter's sum is its
    increase from that reading (its first reading adds nothing), so the sums of all intervals add up to
    the last reading minus the first. NaN readings are left out."""
    out: dict[Key, ValueStats] = {}
    for ts, metric, device, value in rows:
        if value != value:
            continue
        m = schema.METRICS.get(metric)
        if m is not None and m.counter:
            kind = schema.ROLLUP_COUNTER
            amount = value - last.get((metric, device), value)
            last[(metric, device)] = value
        else:
            kind, amount = schema.ROLLUP_GAUGE, value
        key = (ts - ts % every_ns, kind, metric, device)
        stats = out.get(key)
        if stats is None:
            stats = out[key] = ValueStats()
        stats.add(ts, value, amount)
    return out


MEMORY_COLUMNS = (*schema.MEMORY_CATEGORIES, "total", "peak")  # the memory row's columns rolled up, as gauges


def summarize_memory(rows, every_ns: int = schema.ROLLUP_INTERVAL_NS) -> dict[Key, ValueStats]:
    """Per (interval start, ROLLUP_MEMORY, column, device) the stats of the memory breakdown ``rows``
    (MemoryRows or tuples in its column order) by ``ts_ns``: each column's sum, min and max over the rows."""
    out: dict[Key, ValueStats] = {}
    index = {c: schema.MemoryRow._fields.index(c) for c in MEMORY_COLUMNS}
    for row in rows:
        ts, device = row[1], row[2]
        for column, i in index.items():
            key = (ts - ts % every_ns, schema.ROLLUP_MEMORY, column, device)
            stats = out.get(key)
            if stats is None:
                stats = out[key] = ValueStats()
            stats.add(ts, row[i], row[i])
    return out


def merge(into: dict[Key, SpanStats | ValueStats], other: dict[Key, SpanStats | ValueStats]) -> None:
    """Add ``other``'s stats into ``into``, key by key."""
    for key, stats in other.items():
        mine = into.get(key)
        if mine is None:
            into[key] = stats
        else:
            mine.merge(stats)


def to_rows(stats: dict[Key, SpanStats | ValueStats]) -> list[schema.RollupRow]:
    """The rollup rows of ``stats``, in key order."""
    rows = []
    for key in sorted(stats):
        interval, kind, name, device = key
        s = stats[key]
        rows.append(s.row(interval, kind, name) if isinstance(s, SpanStats) else s.row(interval, kind, name, device))
    return rows


class Rollups:
    """What the writer carries between flushes: the open intervals and each counter's last reading.

    ``add`` the rows of each flush; ``take`` returns the rows of the intervals that are over (an
    interval is over once a later one has been seen) or, at the end, of all. It never raises: a row it
    cannot read stops the rollups with one warning, and the raw rows are written as always."""

    def __init__(self, every_ns: int = schema.ROLLUP_INTERVAL_NS) -> None:
        self.every_ns = every_ns
        self.open: dict[Key, SpanStats | ValueStats] = {}
        self.latest = -math.inf  # the start of the latest interval seen
        self.counters: dict[tuple[str, str], float] = {}
        self.failed: str | None = None

    def add(self, table: str, rows) -> None:
        if self.failed or not rows or table not in (schema.SPANS, schema.SAMPLES, schema.MEMORY):
            return
        try:
            stats = (summarize_spans(rows, self.every_ns) if table == schema.SPANS
                     else summarize_memory(rows, self.every_ns) if table == schema.MEMORY
                     else summarize_samples(rows, self.counters, self.every_ns))
        except (TypeError, ValueError, OverflowError) as e:
            self.failed = f"{e.__class__.__name__}: {e}"
            log.warning("tbdprof: rollups stopped (%s); spans and samples are still recorded", self.failed)
            return
        merge(self.open, stats)
        self.latest = max([self.latest, *(k[0] for k in stats)])

    def take(self, final: bool = False) -> list[schema.RollupRow]:
        done = {k: s for k, s in self.open.items() if final or k[0] < self.latest}
        for k in done:
            del self.open[k]
        return to_rows(done)

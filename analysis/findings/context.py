"""The figures the rules judge, computed once per run, in DuckDB, on first use.

Everything per step comes from one pass over the spans into a small table
``diag_step`` (one row per rank and steady-state step: step time, items,
time in each standard phase, and the rank's communication: when it handed
its last gradient bucket over, when its collectives completed, bytes).
Cross-rank figures aggregate that table in SQL; only per-rank and run-level
rows reach Python, so the cost does not grow with the run's length in Python.

Synchronisation figures (see docs/diagnose.md): a rank's *arrival* in a step
is the start of its last communication span, the moment its own gradients
were ready; its *tail* is from arrival to the end of its collectives, the
time it could not hide behind its own compute (with DDP, ``backward``
blocks for it). The last rank to arrive waits for nobody, so its tail is
pure communication; the others' tails add the wait for the late rank. A
rank's *lateness* in a step is the later of its arrival and of the start of
its forward phase, each against the earliest rank: a rank slow to load its
batch starts forward late, and models whose forward opens with a collective
(DDP's buffer broadcast) make the others wait there, before any gradient.
"""

from __future__ import annotations

from functools import cached_property
from statistics import median

from tbdprof import schema

from ..load import Run

PHASES = (schema.PHASE_DATA, schema.PHASE_H2D, schema.PHASE_FORWARD, schema.PHASE_BACKWARD, schema.PHASE_OPTIMIZER)
# The step's parts the phase-composition comparison looks at (then: other phases, outside any phase).
COMPOSITION_PHASES = (*PHASES, schema.PHASE_COMM)
COMPOSITION_STEPS = 2000  # at most this many steady steps (evenly spaced) enter the comparison
OTHER_PHASES, OUTSIDE_PHASES = "other_phases", "outside_phases"
PARTS = (*COMPOSITION_PHASES, OTHER_PHASES, OUTSIDE_PHASES)
# Phases in which a rank blocks for the others' collectives (DDP: backward; Horovod: optimizer.step()),
# in the order they come in a step.
BLOCKING = (schema.PHASE_BACKWARD, schema.PHASE_COMM, schema.PHASE_OPTIMIZER)
GAUGES = ("cpu.process_pct", "cpu.system_pct", "cpu.iowait_pct", "cpu.runnable", "mem.used_bytes", "mem.swap_used_bytes",
          "gpu.util_pct", "gpu.mem_used_bytes", "gpu.mem_total_bytes", "gpu.fp32_util_pct", "gpu.tensor_util_pct",
          "torch.alloc_retries")
RSS = "mem.rss_bytes"
READS = ("io.read_chars", "io.read_bytes")


class Context:
    """Lazily computed figures of one run for the diagnosis rules."""

    def __init__(self, run: Run, link_bytes_per_s: float | None = None):
        self.run = run
        self.link_bytes_per_s = link_bytes_per_s
        run.sql("SET preserve_insertion_order = false")  # the temp tables are aggregated, never read in order

    # --- steps ----------------------------------------------------------------

    @cached_property
    def window_s(self) -> tuple[float, float] | None:
        """The steady-state window in seconds since the run's first timestamp."""
        w = self.run.steady_window
        return None if w is None else ((w[0] - self.run.t0_ns) / 1e9, (w[1] - self.run.t0_ns) / 1e9)

    @cached_property
    def _step_table(self) -> str:
        """``diag_step``: one row per rank and steady step: ``step_ns``, ``items``, ``units`` and, where the rank
        communicated in the step, ``arrival`` (last bucket handed over), ``tail`` (arrival to its last
        completion), ``busy`` (first bucket to last completion), ``comm_bytes``; ``fwd_start``."""
        step, comm, fwd = "kind = $step", "kind = $comm", "kind = $phase AND name = $forward"
        units = f"sum(units) FILTER (WHERE {step})"  # null in segments written before the column existed
        self.run.sql(
            "CREATE OR REPLACE TEMP TABLE diag_step AS SELECT rank, step, "
            f"sum(end_ns - start_ns) FILTER (WHERE {step}) AS step_ns, sum(items) FILTER (WHERE {step}) AS items, {units} AS units, "
            f"max(start_ns) FILTER (WHERE {comm}) AS arrival, max(end_ns) FILTER (WHERE {comm}) - max(start_ns) FILTER (WHERE {comm}) AS tail, "
            f"max(end_ns) FILTER (WHERE {comm}) - min(start_ns) FILTER (WHERE {comm}) AS busy, sum(bytes) FILTER (WHERE {comm}) AS comm_bytes, "
            f"min(start_ns) FILTER (WHERE {fwd}) AS fwd_start FROM steady_spans WHERE {step} OR {comm} OR ({fwd}) "
            f"GROUP BY rank, step HAVING count(*) FILTER (WHERE {step}) > 0",
            {"step": schema.KIND_STEP, "comm": schema.KIND_COMM, "phase": schema.KIND_PHASE, "forward": schema.PHASE_FORWARD})
        return "diag_step"

    @cached_property
    def per_rank(self) -> dict[int, dict]:
        """Per rank: ``host``, ``steps``, ``step_s`` (median), ``data_wait_fraction`` (of step time),
        ``phase_s`` (mean seconds per step of each standard phase), ``tail_s`` (median communication
        tail, 0 without collectives)."""
        counts = {r: (n, med) for r, n, med in self.run.sql(
            f"SELECT rank, count(*), median(step_ns) / 1e9 FROM {self._step_table} GROUP BY rank")}
        rows = self.run.sql(
            "SELECT rank, any_value(host), name, sum(end_ns - start_ns) / 1e9 FROM steady_spans "
            "WHERE kind = $step OR (kind = $phase AND list_contains($phases, name)) GROUP BY rank, name",
            {"step": schema.KIND_STEP, "phase": schema.KIND_PHASE, "phases": list(PHASES)})
        totals: dict[int, dict] = {}
        for rank, host, name, secs in rows:
            totals.setdefault(rank, {"host": host})[name] = secs
        tails = {r: v["tail_s"] for r, v in self.sync.get("per_rank", {}).items()}
        return {rank: {"host": t["host"], "steps": counts[rank][0], "step_s": counts[rank][1],
                       "data_wait_fraction": t.get(schema.PHASE_DATA, 0) / t[schema.KIND_STEP],
                       "phase_s": {p: t.get(p, 0) / counts[rank][0] for p in PHASES}, "tail_s": tails.get(rank, 0.0)}
                for rank, t in sorted(totals.items()) if rank in counts and t.get(schema.KIND_STEP)}

    @cached_property
    def steady_steps(self) -> int:
        """Steady-state steps of the rank that ran fewest (0 when a rank has none)."""
        per = self.per_rank
        return min((p["steps"] for p in per.values()), default=0) if len(per) == len(self.run.ranks) else 0

    # --- synchronisation across ranks -----------------------------------------------

    @cached_property
    def sync(self) -> dict:
        """How ranks meet in their collectives, over the steady steps every communicating rank recorded.

        Run level: ``ranks``, ``steps``, ``step_s`` (median), ``step_cv`` (of all
        steady steps of all ranks), ``spread_s`` and
        ``spread_fraction`` (median of the latest minus the earliest rank's
        lateness, and of it over step time), ``comm_tail_s``/``comm_tail_fraction`` (median tail of the
        last rank to arrive: pure communication), ``comm_bytes`` and
        ``comm_busy_s`` (median per step: bytes, and first bucket to last
        completion), ``work_cv`` (median over steps of the coefficient of
        variation of work across ranks; work = the step's units (tokens,
        frames) where it recorded them, else its items), ``work_lateness_corr`` (correlation
        of a rank's extra work with its lateness). ``per_rank``: ``lateness_s``
        (median lateness beyond the step's earliest rank), ``last_share``
        (share of steps it arrived last), ``tail_s`` (median).
        Empty when fewer than two ranks communicate.
        """
        self.run.sql(
            "CREATE OR REPLACE TEMP TABLE diag_first AS SELECT * FROM (SELECT step, count(*) AS n, min(arrival) AS a0, "
            f"min(fwd_start) AS f0 FROM {self._step_table} WHERE arrival IS NOT NULL GROUP BY step) "
            "WHERE n = (SELECT count(DISTINCT rank) FROM diag_step WHERE arrival IS NOT NULL)")
        # One row per rank and step that every communicating rank recorded (not materialized: it is as long as the run).
        late = ("(SELECT d.rank, d.step, d.step_ns, d.tail, d.busy, d.comm_bytes, d.arrival, coalesce(d.units, d.items) AS work, "
                "greatest(d.arrival - f.a0, coalesce(d.fwd_start - f.f0, 0)) AS late FROM diag_step d JOIN diag_first f USING (step))")
        self.run.sql(
            "CREATE OR REPLACE TEMP TABLE diag_meet AS SELECT step, max(late) - min(late) AS spread, min(late) AS late0, "
            "arg_max(rank, late) AS last_rank, arg_max(tail, arrival) AS last_tail, median(step_ns) AS step_med, "
            f"stddev_pop(work) / nullif(avg(work), 0) AS work_cv, avg(work) AS mean_work FROM {late} GROUP BY step")
        run_row = self.run.sql(
            "SELECT count(*), median(step_med) / 1e9, median(spread) / 1e9, median(spread / step_med), median(last_tail) / 1e9, "
            "median(last_tail / step_med), median(work_cv) FROM diag_meet")[0]
        ranks, step_cv = self.run.sql("SELECT count(DISTINCT rank) FILTER (WHERE arrival IS NOT NULL), "
                                      "stddev_samp(step_ns) / avg(step_ns) FROM diag_step")[0]
        if ranks < 2 or not run_row[0]:
            return {}
        per_rank = self.run.sql(
            "SELECT d.rank, median(d.late - m.late0) / 1e9, avg(CASE WHEN d.rank = m.last_rank THEN 1 ELSE 0 END), "
            "median(d.tail) / 1e9, median(d.comm_bytes), median(d.busy) / 1e9, regr_sxy(d.work - m.mean_work, d.late), "
            "regr_sxx(d.work - m.mean_work, d.late), regr_syy(d.work - m.mean_work, d.late), count(*) "
            f"FROM {late} d JOIN diag_meet m USING (step) GROUP BY d.rank ORDER BY d.rank")
        keys = ("steps", "step_s", "spread_s", "spread_fraction", "comm_tail_s", "comm_tail_fraction", "work_cv")
        out = {"ranks": ranks, **dict(zip(keys, run_row)), "step_cv": step_cv,
               "comm_bytes": median(r[4] or 0 for r in per_rank), "comm_busy_s": median(r[5] or 0 for r in per_rank),
               "work_lateness_corr": _pooled_corr([r[6:10] for r in per_rank])}
        out["per_rank"] = {r: {"lateness_s": late, "last_share": share, "tail_s": tail} for r, late, share, tail, *_ in per_rank}
        return out

    @cached_property
    def composition(self) -> dict:
        """How each rank's steps divide into phases, compared across ranks (no comm spans needed).

        Over the steady steps every rank recorded with phases (at most
        ``COMPOSITION_STEPS`` of them, evenly spaced), per step, rank and
        *part* (each of :data:`COMPOSITION_PHASES`, ``other_phases``,
        ``outside_phases`` = step time no phase covers), ``d`` is the rank's
        time minus the median of the other ranks'. In synchronous data-parallel
        training every rank's step takes as long; the rank that spends its time
        elsewhere makes the others wait in a *blocking* phase (:data:`BLOCKING`:
        backward with DDP, the optimizer with Horovod, a comm phase). A rank's
        *wait* in a step is the most the others spend beyond it in one blocking
        phase, its *extra work* the sum of its positive ``d`` over the other
        parts (leaving out the wait phase and the blocking phases after it),
        its *lateness* the smaller of the two (the two must agree).

        Returns {} with fewer than two ranks or no such step; else ``ranks``,
        ``steps``, ``step_s`` (median) and ``per_rank``: ``late_s`` (median
        lateness), ``last_share`` (share of steps it was the latest), ``excess_s``
        {part: median d}, ``share`` {part: mean fraction of the step},
        ``wait_phase`` (the blocking phase where the others spend most beyond
        it) and ``others_wait_s`` (median wait).
        """
        import numpy as np

        t = self._step_table
        n, last = self.run.sql(f"SELECT count(DISTINCT rank), max(step) FROM {t}")[0]
        if n < 2:
            return {}
        # Every k-th steady step (a filter the scan applies), then only steps every rank recorded with phases.
        warm = self.run.warmup_steps
        every = max(1, -(-(last - warm + 1) // COMPOSITION_STEPS))
        cols = ", ".join([f"coalesce(sum(end_ns - start_ns) FILTER (WHERE kind = $phase AND name = $p{i}), 0) AS ph_{i}"
                          for i in range(len(COMPOSITION_PHASES))]
                         + ["coalesce(sum(end_ns - start_ns) FILTER (WHERE kind = $phase AND NOT list_contains($parts, name)), 0) "
                            "AS ph_other"])
        res = self.run.con.execute(
            f"WITH c AS (SELECT rank, step, sum(end_ns - start_ns) FILTER (WHERE kind = $step) AS step_ns, {cols}, "
            "count(*) FILTER (WHERE kind = $phase) AS phases FROM steady_spans WHERE (step - $warm) % $every = 0 "
            "AND (kind = $step OR kind = $phase) GROUP BY rank, step), "
            "ok AS (SELECT step FROM c WHERE step_ns > 0 AND phases > 0 GROUP BY step HAVING count(*) = $ranks) "
            "SELECT c.* FROM c JOIN ok USING (step) ORDER BY step, rank",
            {f"p{i}": p for i, p in enumerate(COMPOSITION_PHASES)}
            | {"step": schema.KIND_STEP, "phase": schema.KIND_PHASE, "parts": list(COMPOSITION_PHASES), "warm": warm,
               "every": every, "ranks": n}).fetchnumpy()
        if not len(res["step"]):
            return {}
        steps = len(res["step"]) // n
        ranks = [int(r) for r in res["rank"][:n]]
        step_ns = np.asarray(res["step_ns"], dtype=float).reshape(steps, n)
        parts = np.stack([np.asarray(res[f"ph_{i}"], dtype=float) for i in range(len(COMPOSITION_PHASES))]
                         + [np.asarray(res["ph_other"], dtype=float)], axis=-1).reshape(steps, n, -1)
        outside = np.maximum(0.0, step_ns - parts.sum(axis=2))
        c = np.concatenate([parts, outside[..., None]], axis=2)  # (steps, ranks, parts)
        d = c - _median_of_others(c)
        blocking = [PARTS.index(p) for p in BLOCKING]
        wait_by = -d[..., blocking]
        wait = np.maximum(0.0, wait_by.max(axis=2))
        pos = np.maximum(0.0, d)
        # Extra work: every part but the wait phase and the blocking phases after it (DDP's optimizer never
        # blocks; so a rank spending more in it while the others spend more in backward is no straggler).
        after = np.zeros((len(blocking), len(PARTS)), dtype=bool)
        for i, b in enumerate(BLOCKING):
            after[i, [PARTS.index(q) for q in BLOCKING[i:]]] = True
        work = (pos * ~after[wait_by.argmax(axis=2)]).sum(axis=2)
        late = np.minimum(work, wait)
        latest = np.where(late.max(axis=1) > 0, late.argmax(axis=1), -1)
        share = (c / step_ns[..., None]).mean(axis=0)
        med_d = np.median(d, axis=0)
        per_rank = {}
        for j, r in enumerate(ranks):
            wp = blocking[int(np.argmax(-med_d[j, blocking]))]
            per_rank[r] = {"late_s": float(np.median(late[:, j])) / 1e9, "last_share": float(np.mean(latest == j)),
                           "excess_s": {p: float(med_d[j, k]) / 1e9 for k, p in enumerate(PARTS)},
                           "share": {p: float(share[j, k]) for k, p in enumerate(PARTS)},
                           "wait_phase": PARTS[wp], "others_wait_s": float(np.median(wait[:, j])) / 1e9}
        return {"ranks": n, "steps": steps, "step_s": float(np.median(step_ns)) / 1e9, "per_rank": per_rank}

    # --- samples and environment ------------------------------------------------

    @cached_property
    def gauges(self) -> dict[tuple, tuple[float, float]]:
        """(metric, host for host metrics else rank, device) -> (avg, max) of the readings in the steady
        window (the whole run when it holds none). One direct scan: the report's bucketed
        ``gauge_stats`` builds a timeline table first, several times the cost for these few averages."""
        if not self.run.has(schema.SAMPLES):
            return {}
        query = ("SELECT metric, host, rank, device, avg(value), max(value) FROM samples "
                 "WHERE list_contains(?, metric) AND ts_ns BETWEEN ? AND ? GROUP BY ALL")
        w = self.run.steady_window
        rows = (self.run.sql(query, [list(GAUGES), *w]) if w else []) or self.run.sql(query, [list(GAUGES), -(2**62), 2**62])
        return {(m, h if schema.METRICS[m].scope == "host" else r, d): (avg, mx) for m, h, r, d, avg, mx in rows}

    def gauge(self, metric: str, who, device: str = "", stat: int = 0) -> float | None:
        """One figure of :attr:`gauges`: ``stat`` 0 = average, 1 = maximum."""
        v = self.gauges.get((metric, who, device))
        return None if v is None else v[stat]

    @cached_property
    def hosts(self) -> dict[str, dict]:
        """Per host, from rank.json: ``ranks``, ``cores`` (usable logical CPUs), ``torch_threads``
        (summed over its ranks), ``omp_num_threads`` (as set), ``loader_workers`` (summed), ``mem_total_bytes``."""
        out: dict[str, dict] = {}
        for rank, m in sorted(self.run.ranks.items()):
            env, meta = m.get("env") or {}, m.get("metadata") or {}
            h = out.setdefault(m.get("host"), {"ranks": [], "cores": None, "torch_threads": 0, "omp_num_threads": [],
                                               "loader_workers": 0, "mem_total_bytes": None})
            h["ranks"].append(rank)
            h["cores"] = h["cores"] or env.get("cpu_affinity") or env.get("cpu_logical")
            h["torch_threads"] += int(env.get("torch_threads") or 0)
            h["omp_num_threads"].append((env.get("env") or {}).get("OMP_NUM_THREADS"))
            h["loader_workers"] += int(meta.get("num_workers") or 0)
            h["mem_total_bytes"] = h["mem_total_bytes"] or env.get("mem_total_bytes")
        return out

    @cached_property
    def rss_trend(self) -> dict[int, dict]:
        """Per rank, a least-squares line through its RSS readings over the last three quarters of the
        steady window (the first quarter still fills caches and allocator pools): ``slope_bytes_per_s``,
        ``r2``, ``growth_bytes`` (slope x span), ``median_bytes``, ``span_s``, ``readings``, and
        ``bytes_per_step``: the growth over the readings' span divided by the steps that ended in it
        (time between steps counts, as it does for the memory)."""
        w = self.run.steady_window
        if w is None or not self.run.has(schema.SAMPLES):
            return {}
        start = w[0] + (w[1] - w[0]) // 4
        rows = self.run.sql(
            "WITH r AS (SELECT rank, regr_slope(value, ts_ns / 1e9) AS slope, regr_r2(value, ts_ns / 1e9) AS r2, "
            "median(value) AS med, min(ts_ns) AS t0, max(ts_ns) AS t1, count(*) AS n FROM samples "
            "WHERE metric = ? AND ts_ns BETWEEN ? AND ? GROUP BY rank) "
            "SELECT r.rank, slope, r2, med, (t1 - t0) / 1e9, n, "
            "(SELECT count(*) FROM steady_steps s WHERE s.rank = r.rank AND s.end_ns BETWEEN t0 AND t1) "
            "FROM r ORDER BY r.rank", [RSS, start, w[1]])
        out = {}
        for r, slope, r2, med, span, n, steps in rows:
            growth = (slope or 0) * span
            out[r] = {"slope_bytes_per_s": slope, "r2": r2, "growth_bytes": growth, "median_bytes": med,
                      "span_s": span, "readings": n, "bytes_per_step": growth / steps if steps else None}
        return out

    def read_rates(self) -> dict[int, dict[str, float]]:
        """Per rank, bytes/s over the steady window of each of :data:`READS` (first to last reading)."""
        w = self.run.steady_window
        if w is None:
            return {}
        out: dict[int, dict] = {}
        for r, metric, rate in self.run.sql(
                "SELECT rank, metric, (arg_max(value, ts_ns) - arg_min(value, ts_ns)) / nullif((max(ts_ns) - min(ts_ns)) / 1e9, 0) "
                "FROM samples WHERE list_contains(?, metric) AND ts_ns BETWEEN ? AND ? GROUP BY ALL", [list(READS), *w]):
            out.setdefault(r, {})[metric.split(".", 1)[1] + "_per_s"] = rate
        return out


def _pooled_corr(parts: list) -> float | None:
    """The correlation over all rows from per-group sums of products (sxy, sxx, syy, n) about each group's own means.

    Lateness is centred per rank, so a rank that is always a little late
    (a straggler) adds nothing: only work that varies with lateness does."""
    sxy, sxx, syy = (sum(p[i] or 0 for p in parts) for i in range(3))
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else None


def _median_of_others(x):
    """For each element of ``x`` (steps, ranks, parts), the median over axis 1 of the *other* elements."""
    import numpy as np

    n = x.shape[1]
    order = np.argsort(x, axis=1, kind="stable")
    srt = np.take_along_axis(x, order, axis=1)
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.broadcast_to(np.arange(n)[None, :, None], order.shape), axis=1)

    def at(i: int):  # the i-th smallest of the others: skip the element's own position
        return np.take_along_axis(srt, np.where(i < pos, i, i + 1), axis=1)

    m = n - 1
    return at((m - 1) // 2) if m % 2 else (at(m // 2 - 1) + at(m // 2)) / 2

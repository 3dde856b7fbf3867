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
pure communication; the others' tails add the wait for the late rank.
"""

from __future__ import annotations

from functools import cached_property

import pyarrow as pa

from tbdprof import schema

from ..load import Run
from ..steps import step_stats
from ..utilization import gauge_stats

PHASES = (schema.PHASE_DATA, schema.PHASE_H2D, schema.PHASE_FORWARD, schema.PHASE_BACKWARD, schema.PHASE_OPTIMIZER)
GAUGES = ("cpu.process_pct", "cpu.system_pct", "cpu.iowait_pct", "cpu.runnable", "mem.rss_bytes", "mem.used_bytes",
          "mem.available_bytes", "mem.swap_used_bytes", "gpu.util_pct", "gpu.mem_used_bytes", "gpu.mem_total_bytes",
          "torch.alloc_retries")


class Context:
    """Lazily computed figures of one run for the diagnosis rules."""

    def __init__(self, run: Run, link_bytes_per_s: float | None = None):
        self.run = run
        self.link_bytes_per_s = link_bytes_per_s

    # --- steps ----------------------------------------------------------------

    @cached_property
    def steps(self) -> dict:
        """:func:`tbdprof.analysis.steps.step_stats`."""
        return step_stats(self.run)

    @cached_property
    def window_s(self) -> tuple[float, float] | None:
        """The steady-state window in seconds since the run's first timestamp."""
        w = self.run.steady_window
        return None if w is None else ((w[0] - self.run.t0_ns) / 1e9, (w[1] - self.run.t0_ns) / 1e9)

    @cached_property
    def _step_table(self) -> str:
        phases = ", ".join(f"coalesce(sum(end_ns - start_ns) FILTER (WHERE kind = 'phase' AND name = '{p}'), 0) AS {p}"
                           for p in PHASES)
        comm = f"kind = '{schema.KIND_COMM}'"
        self.run.sql(
            "CREATE OR REPLACE TEMP TABLE diag_step AS SELECT rank, step, any_value(host) AS host, "
            f"sum(end_ns - start_ns) FILTER (WHERE kind = '{schema.KIND_STEP}') AS step_ns, "
            f"sum(items) FILTER (WHERE kind = '{schema.KIND_STEP}') AS items, {phases}, "
            f"min(start_ns) FILTER (WHERE {comm}) AS comm_first, max(start_ns) FILTER (WHERE {comm}) AS arrival, "
            f"max(end_ns) FILTER (WHERE {comm}) AS comm_done, sum(bytes) FILTER (WHERE {comm}) AS comm_bytes "
            f"FROM spans WHERE step >= ? AND kind IN ('{schema.KIND_STEP}', '{schema.KIND_PHASE}', '{schema.KIND_COMM}') "
            f"GROUP BY rank, step HAVING count(*) FILTER (WHERE kind = '{schema.KIND_STEP}') > 0",
            [self.run.warmup_steps],
        )
        return "diag_step"

    @cached_property
    def per_rank(self) -> dict[int, dict]:
        """Per rank: ``host``, ``steps``, ``step_s`` (median), ``data_wait_fraction`` (of step time),
        ``phase_s`` (mean seconds per step of each standard phase), ``tail_s`` (median)."""
        avgs = ", ".join(f"avg({p}) / 1e9" for p in PHASES)
        rows = self.run.sql(
            f"SELECT rank, any_value(host), count(*), median(step_ns) / 1e9, sum(data_wait) / nullif(sum(step_ns), 0), "
            f"median(comm_done - arrival) / 1e9, {avgs} FROM {self._step_table} GROUP BY rank ORDER BY rank"
        )
        return {r: {"host": h, "steps": n, "step_s": st, "data_wait_fraction": dw, "tail_s": tail,
                    "phase_s": dict(zip(PHASES, ph))} for r, h, n, st, dw, tail, *ph in rows}

    @cached_property
    def steady_steps(self) -> int:
        """Steady-state steps of the rank that ran fewest (0 when a rank has none)."""
        per = self.per_rank
        return min((p["steps"] for p in per.values()), default=0) if len(per) == len(self.run.ranks) else 0

    # --- synchronisation across ranks -----------------------------------------------

    @cached_property
    def _units_table(self) -> str:
        """``diag_units(rank, step, units)`` from the runner's ``units_per_step`` metadata (tokens, frames...)."""
        rows = [(r, i, float(u)) for r, m in self.run.ranks.items()
                for i, u in enumerate((m.get("metadata") or {}).get("units_per_step") or []) if isinstance(u, (int, float))]
        table = pa.table({"rank": pa.array([r[0] for r in rows], pa.int64()), "step": pa.array([r[1] for r in rows], pa.int64()),
                          "units": pa.array([r[2] for r in rows], pa.float64())})
        self.run.con.register("diag_units_arrow", table)
        self.run.sql("CREATE OR REPLACE TEMP TABLE diag_units AS SELECT * FROM diag_units_arrow")
        self.run.con.unregister("diag_units_arrow")
        return "diag_units"

    @cached_property
    def sync(self) -> dict:
        """How ranks meet in their collectives, over the steady steps every communicating rank recorded.

        Run level: ``ranks``, ``steps``, ``step_s`` (median), ``spread_s`` and
        ``spread_fraction`` (median of last minus first arrival, and of it over
        step time), ``comm_tail_s``/``comm_tail_fraction`` (median tail of the
        last rank to arrive: pure communication), ``comm_bytes`` and
        ``comm_busy_s`` (median per step: bytes, and first bucket to last
        completion), ``work_cv`` (median over steps of the coefficient of
        variation of work across ranks; work = units per step where the
        runner recorded them, else items), ``work_lateness_corr`` (correlation
        of a rank's extra work with its lateness). ``per_rank``: ``lateness_s``
        (median of arrival minus the step's first arrival), ``last_share``
        (share of steps it arrived last), ``tail_s`` (median).
        Empty when fewer than two ranks communicate.
        """
        steps, units = self._step_table, self._units_table
        self.run.sql(
            "CREATE OR REPLACE TEMP TABLE diag_sync AS WITH s AS ("
            "SELECT d.rank, d.step, d.step_ns, d.arrival, d.comm_done - d.arrival AS tail, d.comm_done - d.comm_first AS busy, "
            f"d.comm_bytes, coalesce(u.units, d.items) AS work FROM {steps} d LEFT JOIN {units} u USING (rank, step) "
            "WHERE d.arrival IS NOT NULL), "
            "per_step AS (SELECT step, count(*) AS n, min(arrival) AS first, max(arrival) - min(arrival) AS spread, "
            "arg_max(rank, arrival) AS last_rank, arg_max(tail, arrival) AS last_tail, median(step_ns) AS step_ns, "
            "stddev_pop(work) / nullif(avg(work), 0) AS work_cv, avg(work) AS mean_work FROM s GROUP BY step) "
            "SELECT s.*, p.first, p.spread, p.last_rank, p.last_tail, p.step_ns AS step_med, p.work_cv, p.mean_work "
            "FROM s JOIN per_step p USING (step) WHERE p.n = (SELECT max(n) FROM per_step)"
        )
        run_row = self.run.sql(
            "SELECT count(DISTINCT rank), count(DISTINCT step), median(step_med) / 1e9, median(spread) / 1e9, "
            "median(spread / step_med), median(last_tail) / 1e9, median(last_tail / step_med), median(comm_bytes), "
            "median(busy) / 1e9, median(work_cv), corr(work - mean_work, arrival - first) FROM diag_sync"
        )[0]
        if not run_row[0] or run_row[0] < 2:
            return {}
        keys = ("ranks", "steps", "step_s", "spread_s", "spread_fraction", "comm_tail_s", "comm_tail_fraction",
                "comm_bytes", "comm_busy_s", "work_cv", "work_lateness_corr")
        out = dict(zip(keys, run_row))
        out["per_rank"] = {
            r: {"lateness_s": late, "last_share": share, "tail_s": tail}
            for r, late, share, tail in self.run.sql(
                "SELECT rank, median(arrival - first) / 1e9, avg(CASE WHEN rank = last_rank THEN 1 ELSE 0 END), "
                "median(tail) / 1e9 FROM diag_sync GROUP BY rank ORDER BY rank")
        }
        return out

    # --- samples and environment ------------------------------------------------

    @cached_property
    def gauges(self) -> dict[tuple, tuple[float, float]]:
        """(metric, host for host metrics else rank, device) -> (avg, max) over the steady window."""
        return {(m, h if schema.METRICS[m].scope == "host" else r, d): (avg, mx)
                for h, r, m, d, avg, mx, _n in gauge_stats(self.run, GAUGES)}

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
        ``r2``, ``growth_bytes`` (slope x span), ``median_bytes``, ``span_s``, ``readings``."""
        w = self.run.steady_window
        if w is None or not self.run.has(schema.SAMPLES):
            return {}
        start = w[0] + (w[1] - w[0]) // 4
        rows = self.run.sql(
            "SELECT rank, regr_slope(value, ts_ns / 1e9), regr_r2(value, ts_ns / 1e9), median(value), "
            "(max(ts_ns) - min(ts_ns)) / 1e9, count(*) FROM samples WHERE metric = 'mem.rss_bytes' AND ts_ns BETWEEN ? AND ? "
            "GROUP BY rank ORDER BY rank", [start, w[1]])
        return {r: {"slope_bytes_per_s": slope, "r2": r2, "growth_bytes": (slope or 0) * span, "median_bytes": med,
                    "span_s": span, "readings": n} for r, slope, r2, med, span, n in rows}

    def read_rates(self) -> dict[int, dict[str, float]]:
        """Per rank, bytes/s over the steady window of ``io.read_chars`` and ``io.read_bytes`` (first to last reading)."""
        w = self.run.steady_window
        if w is None:
            return {}
        out: dict[int, dict] = {}
        for r, metric, rate in self.run.sql(
                "SELECT rank, metric, (arg_max(value, ts_ns) - arg_min(value, ts_ns)) / nullif((max(ts_ns) - min(ts_ns)) / 1e9, 0) "
                "FROM samples WHERE metric IN ('io.read_chars', 'io.read_bytes') AND ts_ns BETWEEN ? AND ? GROUP BY ALL", list(w)):
            out.setdefault(r, {})[metric.split(".", 1)[1] + "_per_s"] = rate
        return out

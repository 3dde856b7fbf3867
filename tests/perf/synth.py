"""A deterministic synthetic run in the tbdprof store format, for scale tests.

``python tests/perf/synth.py --ranks 64 --hours 1 --out DIR`` writes what a
64-rank job would record in an hour at the defaults: 10 steps/s with
data_wait/h2d/forward/backward/optimizer phases and one allreduce per step,
10 Hz samples (process and GPU metrics on every rank, host metrics on each host's
local rank 0), and a memory row per step: about 70 million rows for 64 ranks. Files are laid out as the writer
leaves them after compaction (one range file per table per ``--file-minutes``).
Each table's columns are its row type (``tbdprof.schema``) holding numpy arrays,
converted to Arrow by the writer's own ``columns_to_table``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tbdprof import schema, store
from tbdprof.rollup import Rollups
from tbdprof.writer import PARQUET_OPTIONS, columns_to_table

T0_NS = 1_780_000_000_000_000_000  # a fixed epoch: same bytes on every run
PHASES = (("data_wait", 0.05), ("h2d", 0.02), ("forward", 0.30), ("backward", 0.45), ("optimizer", 0.08))
GRAD_BYTES = 25_557_032 * 4
SLOW_RANK = {"forward": 0.3}  # a planted slow rank: +30% of a step in forward (compute)
SLOW_HOST = {"data_wait": 0.2}  # every rank of a planted slow host: +20% of a step waiting for data


def _spans(rng, rank, first_step, n_steps, step_ns, slow=None):
    """``slow``: phase -> extra time in it, as a fraction of the nominal step (a planted straggler)."""
    slow = slow or {}
    steps = np.arange(first_step, first_step + n_steps, dtype=np.int64)
    jitter = rng.normal(1.0, 0.03, n_steps).clip(0.8, 1.5)
    dur = (step_ns * jitter).astype(np.int64)
    starts = T0_NS + steps * step_ns
    rows = []

    def add(name, kind, s, e, nbytes=None, items=None):  # units stay null: counted in samples, not tokens
        row = schema.SpanRow(steps, name, kind, s, e, nbytes, items)
        rows.append([v if isinstance(v, np.ndarray) else np.full(n_steps, v, dtype=None if isinstance(v, int) else object)
                     for v in row])

    add("step", schema.KIND_STEP, starts, starts + dur + int(sum(slow.values()) * step_ns), items=32)
    t = starts.copy()
    bwd = None
    for name, frac in PHASES:
        e = t + (dur * frac).astype(np.int64) + int(slow.get(name, 0.0) * step_ns)
        add(name, schema.KIND_PHASE, t, e)
        if name == "backward":
            bwd = (t, e)
        t = e
    add(schema.COMM_ALLREDUCE, schema.KIND_COMM, bwd[0] + (bwd[1] - bwd[0]) // 3, bwd[1], nbytes=GRAD_BYTES)
    return schema.SpanRow(*(np.concatenate(col) for col in zip(*rows)))


def _samples(rng, local: int, first_tick, n_ticks, tick_ns, cores: int, nics: tuple[str, ...]):
    ts = T0_NS + np.arange(first_tick, first_tick + n_ticks, dtype=np.int64) * tick_ns
    series: list[tuple[str, str, np.ndarray]] = []
    growth = np.arange(first_tick, first_tick + n_ticks, dtype=np.float64)
    series.append(("cpu.process_pct", "", rng.normal(95, 5, n_ticks)))
    series.append(("cpu.process_threads", "", np.full(n_ticks, 24.0)))
    series.append(("mem.rss_bytes", "", np.full(n_ticks, 3.2e9) + rng.normal(0, 1e6, n_ticks)))
    series.append(("io.read_bytes", "", growth * 4.9e6))
    series.append(("io.write_bytes", "", growth * 1e3))
    series.append(("io.read_chars", "", growth * 5e6))
    series.append(("io.write_chars", "", growth * 2e3))
    gpu = f"gpu{local}"
    series.append(("gpu.util_pct", gpu, rng.uniform(85, 100, n_ticks)))
    series.append(("gpu.mem_util_pct", gpu, rng.uniform(40, 60, n_ticks)))
    series.append(("gpu.mem_used_bytes", gpu, np.full(n_ticks, 61e9)))
    series.append(("gpu.mem_total_bytes", gpu, np.full(n_ticks, 80e9)))
    series.append(("gpu.power_w", gpu, rng.normal(550, 20, n_ticks)))
    series.append(("gpu.energy_j", gpu, growth * 55.0))
    series.append(("gpu.temp_c", gpu, rng.normal(65, 1, n_ticks)))
    series.append(("gpu.sm_clock_mhz", gpu, np.full(n_ticks, 1980.0)))
    series.append(("gpu.mem_clock_mhz", gpu, np.full(n_ticks, 2619.0)))
    series.append(("gpu.pcie_tx_bytes_s", gpu, rng.uniform(1e8, 2e8, n_ticks)))
    series.append(("gpu.pcie_rx_bytes_s", gpu, rng.uniform(5e8, 1e9, n_ticks)))
    series.append(("torch.allocated_bytes", f"cuda:{local}", np.full(n_ticks, 58e9)))
    series.append(("torch.reserved_bytes", f"cuda:{local}", np.full(n_ticks, 60e9)))
    if local == 0:
        for c in range(cores):
            series.append(("cpu.core_pct", str(c), rng.uniform(60, 100, n_ticks)))
        series.append(("cpu.system_pct", "", rng.uniform(70, 95, n_ticks)))
        series.append(("cpu.iowait_pct", "", rng.uniform(0, 2, n_ticks)))
        series.append(("cpu.runnable", "", rng.integers(8, 20, n_ticks).astype(np.float64)))
        series.append(("mem.used_bytes", "", np.full(n_ticks, 60e9)))
        series.append(("mem.available_bytes", "", np.full(n_ticks, 450e9)))
        for nic in nics:
            series.append(("net.bytes_sent", nic, growth * GRAD_BYTES * 1.75))
            series.append(("net.bytes_recv", nic, growth * GRAD_BYTES * 1.75))
            series.append(("net.packets_sent", nic, growth * 60_000))
            series.append(("net.packets_recv", nic, growth * 60_000))
        series.append(("disk.read_bytes", "nvme0n1", growth * 4.9e6 * 8))
        series.append(("disk.write_bytes", "nvme0n1", growth * 1e4))
    n = len(series)
    return schema.SampleRow(
        ts_ns=np.tile(ts, n),
        metric=np.repeat(np.array([m for m, _, _ in series], dtype=object), n_ticks),
        device=np.repeat(np.array([d for _, d, _ in series], dtype=object), n_ticks),
        value=np.concatenate([v for _, _, v in series]))


def _memory(rng, first_step, n_steps, step_ns):
    steps = np.arange(first_step, first_step + n_steps, dtype=np.int64)
    w = np.full(n_steps, GRAD_BYTES, dtype=np.int64)
    act = (rng.normal(5.2e9, 1e7, n_steps)).astype(np.int64)
    other = np.full(n_steps, 400_000_000, dtype=np.int64)
    total = 3 * w + act + other
    return schema.MemoryRow(
        step=steps, ts_ns=T0_NS + (steps + 1) * step_ns, device=np.full(n_steps, "cuda:0", dtype=object), weights=w,
        gradients=w, optimizer_state=2 * w, activations=act, other=other, total=total, peak=total + 100_000_000)


def generate(out: Path, ranks: int = 64, hours: float = 1.0, ranks_per_host: int = 8, steps_per_s: float = 10.0,
             sample_hz: float = 10.0, file_minutes: int = 10, seed: int = 0, slow_ranks=(), slow_hosts=(),
             rollups: bool = False) -> Path:
    """Write the synthetic run into ``out`` (must not exist) and return it. Ranks in ``slow_ranks`` spend
    ``SLOW_RANK`` longer in a phase each step, every rank of the hosts in ``slow_hosts`` ``SLOW_HOST``.
    ``rollups``: table ``rollups`` too, as the writer makes it (about 2 s per rank-hour more)."""
    out = Path(out)
    out.mkdir(parents=True)
    run_id = out.name
    duration_s = hours * 3600
    step_ns, tick_ns = int(1e9 / steps_per_s), int(1e9 / sample_hz)
    chunk_s = file_minutes * 60
    store.write_json_atomic(out / schema.RUN_FILE, {
        "run_id": run_id, "schema_version": schema.SCHEMA_VERSION, "world_size": ranks, "launcher": "synthetic",
        "workload": "resnet50", "preset": "full", "status": "complete", "profiled": True,
    })
    for rank in range(ranks):
        host, local = f"node{rank // ranks_per_host:03d}", rank % ranks_per_host
        rdir = store.rank_dir(out, host, rank)
        rdir.mkdir(parents=True)
        rng = np.random.default_rng((seed, rank))
        slow = (SLOW_RANK if rank in slow_ranks else {}) | (SLOW_HOST if host in slow_hosts else {})
        roll = Rollups() if rollups else None
        n_files = int(np.ceil(duration_s / chunk_s))
        for i in range(n_files):
            t_a, t_b = i * chunk_s, min(duration_s, (i + 1) * chunk_s)
            first_step, n_steps = int(t_a * steps_per_s), int((t_b - t_a) * steps_per_s)
            first_tick, n_ticks = int(t_a * sample_hz), int((t_b - t_a) * sample_hz)
            parts = {
                schema.SPANS: _spans(rng, rank, first_step, n_steps, step_ns, slow),
                schema.SAMPLES: _samples(rng, local, first_tick, n_ticks, tick_ns, 16, ("eth0", "ib0")),
                schema.MEMORY: _memory(rng, first_step, n_steps, step_ns),
            }
            if roll is not None:  # summed by the writer's own Rollups, from rows as the writer drains them
                for table in (schema.SPANS, schema.SAMPLES):
                    roll.add(table, list(zip(*(c.tolist() for c in parts[table]))))
                closed = roll.take(final=i == n_files - 1)
                if closed:
                    parts[schema.ROLLUPS] = schema.RollupRow(*zip(*closed))
            for table, columns in parts.items():
                sch = schema.table_schema(table, run_id, rank, host)
                name = store.segment_name(table, i * 100 + 1, i * 100 + 100)
                pq.write_table(columns_to_table(table, columns, sch), rdir / name, **PARQUET_OPTIONS)
        store.write_json_atomic(rdir / schema.RANK_FILE, {
            "schema_version": schema.SCHEMA_VERSION, "run_id": run_id, "rank": rank, "world_size": ranks,
            "local_rank": local, "local_world_size": ranks_per_host, "launcher": "synthetic", "host": host,
            "status": "complete", "start_ns": T0_NS, "end_ns": T0_NS + int(duration_s * 1e9), "warmup_steps": 2,
            "sample_hz": sample_hz, "steps": int(duration_s * steps_per_s),
            "clock": {"start": {"offset_ns": 0, "uncertainty_ns": 20_000, "at_ns": T0_NS, "rounds": 16}},
            "env": {"python": "3.11.7", "torch": "2.13.0", "env": {"OMP_NUM_THREADS": "8"}},
            "metadata": {"workload": "resnet50", "batch_size": 32, "global_batch_size": 32 * ranks, "params": 25_557_032},
        })
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="synth.py", description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=64)
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--ranks-per-host", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slow-rank", type=int, action="append", default=[], help="plant a slow rank (forward); repeatable")
    p.add_argument("--slow-host", action="append", default=[], help="plant a slow host, e.g. node003 (data wait); repeatable")
    p.add_argument("--rollups", action="store_true", help="write table rollups too, as the writer does")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.ranks < 1 or args.hours <= 0 or args.ranks_per_host < 1:
        print("synth.py: error: --ranks, --hours and --ranks-per-host must be positive", file=sys.stderr)
        return 2
    if Path(args.out).exists():
        print(f"synth.py: error: {args.out} already exists", file=sys.stderr)
        return 2
    generate(Path(args.out), args.ranks, args.hours, args.ranks_per_host, seed=args.seed, slow_ranks=args.slow_rank,
             slow_hosts=args.slow_host, rollups=args.rollups)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Figure 4: Parquet bytes per rank-hour at 10 Hz sampling and 10 steps/s.

    python tests/perf/storage.py [--json] [--seconds 60]

A synthetic training loop paced at 10 steps/s records what a real one does
per step (data wait, h2d, forward, backward, optimizer phases, one
communication span, a memory row on the sampled steps) with the default
samplers at 10 Hz, as local rank 0 (host samplers on: the largest rank).
The run's Parquet bytes are extrapolated linearly to one hour.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402

import tbdprof  # noqa: E402
from tbdprof import clock, schema  # noqa: E402

PHASES = ("h2d", "forward", "backward", "optimizer")


def record(out: Path, seconds: float, steps_per_s: float = 10.0) -> tuple[int, int, float]:
    prof = tbdprof.Profiler(out=out, run_id="storage", sample_hz=10)
    steps = int(seconds * steps_per_s)
    t0 = time.perf_counter()
    with prof:
        for i in range(steps):
            with prof.step(items=32):
                with prof.phase("data_wait"):
                    pass
                for name in PHASES:
                    with prof.phase(name):
                        pass
                now = clock.now_ns()
                prof.add_span(schema.COMM_ALLREDUCE, schema.KIND_COMM, now - 5_000_000, now, 102_228_128, step=i)
            time.sleep(max(0.0, t0 + (i + 1) / steps_per_s - time.perf_counter()))
    wall = time.perf_counter() - t0
    files = list((out / "storage").rglob("*.parquet"))
    return sum(f.stat().st_size for f in files), len(files), wall


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--seconds", type=float, default=60)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        nbytes, nfiles, wall = record(Path(tmp), args.seconds)
    emit({"mb_per_rank_hour": nbytes / 1e6 * 3600 / wall, "measured_bytes": nbytes, "measured_s": wall,
          "files": nfiles}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reliability: the recorder's memory stays flat over a long run at 100 Hz.

    python tests/perf/memory_flat.py [--minutes 10] [--json]

A synthetic loop (10 steps/s, five phases and a communication span per step)
runs under the profiler with 100 Hz sampling; the process RSS is read every
10 s. Reported: RSS at the first and last reading after a one-minute settle,
and the least-squares slope in MB per hour.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402

import psutil  # noqa: E402

import tbdprof  # noqa: E402
from tbdprof import clock, schema  # noqa: E402


def run(minutes: float) -> dict:
    proc = psutil.Process()
    readings: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        prof = tbdprof.Profiler(out=tmp, run_id="flat", sample_hz=100)
        t0 = time.perf_counter()
        next_read = t0
        i = 0
        with prof:
            while time.perf_counter() - t0 < minutes * 60:
                with prof.step(items=32):
                    for name in ("data_wait", "h2d", "forward", "backward", "optimizer"):
                        with prof.phase(name):
                            pass
                    now = clock.now_ns()
                    prof.add_span(schema.COMM_ALLREDUCE, schema.KIND_COMM, now - 1000, now, 4096, step=i)
                i += 1
                time.sleep(max(0.0, t0 + i / 10 - time.perf_counter()))
                if time.perf_counter() >= next_read:
                    readings.append((time.perf_counter() - t0, proc.memory_info().rss / 1e6))
                    next_read += 10
    settled = [r for r in readings if r[0] >= min(60.0, minutes * 60 / 2)] or readings
    n = len(settled)
    mx = sum(t for t, _ in settled) / n
    my = sum(m for _, m in settled) / n
    var = sum((t - mx) ** 2 for t, _ in settled)
    slope = sum((t - mx) * (m - my) for t, m in settled) / var if var else 0.0
    return {"minutes": minutes, "steps": i, "rss_first_mb": settled[0][1], "rss_last_mb": settled[-1][1],
            "rss_slope_mb_per_hour": slope * 3600, "readings": len(readings)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    emit(run(args.minutes), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

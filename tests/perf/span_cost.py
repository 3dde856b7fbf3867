"""Figure 2: cost of one span on the training thread (microbenchmark).

    python tests/perf/span_cost.py [--json]

Times ``with prof.phase(name): pass`` in a tight loop against an empty loop
of the same shape, with the sampler and writer threads running, and reports
the difference per span. Flushing happens on the writer thread only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402

import tbdprof  # noqa: E402


def per_span_us(n: int = 200_000) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        prof = tbdprof.Profiler(out=tmp, run_id="spans", flush_s=1.0)
        with prof:
            samples = []
            for _ in range(5):
                t = time.perf_counter()
                for _ in range(n):
                    with prof.phase("forward"):
                        pass
                spans = time.perf_counter() - t
                empty = _empty(n)
                samples.append((spans - empty) / n * 1e6)
        return statistics.median(samples)


class _Null:
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _empty(n: int) -> float:
    null = _Null()
    t = time.perf_counter()
    for _ in range(n):
        with null:
            pass
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    emit({"span_cost_us": per_span_us()}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Figure 3: CPU used by the sampler thread, as a fraction of one core.

    python tests/perf/sampler_cost.py [--json] [--seconds 20]

Runs the default sampler set (as local rank 0, so host samplers are on) at
10 Hz and at 100 Hz and reads the thread's own CPU time (``time.thread_time``
inside the thread).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402

from tbdprof.samplers import default_samplers  # noqa: E402
from tbdprof.sampling import SamplingThread  # noqa: E402


def core_fraction(hz: float, seconds: float) -> float:
    out: deque = deque()
    t = SamplingThread(default_samplers(0), out, hz)
    t.start()
    time.sleep(1.0)  # past start-up
    c0, w0 = t.cpu_s, time.perf_counter()
    time.sleep(seconds)
    c1, w1 = t.cpu_s, time.perf_counter()
    t.stop()
    return (c1 - c0) / (w1 - w0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--seconds", type=float, default=20)
    args = p.parse_args(argv)
    emit({"sampler_core_fraction": core_fraction(10, args.seconds),
          "sampler_core_fraction_100hz": core_fraction(100, args.seconds)}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

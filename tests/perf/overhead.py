"""Figure 1: profiled vs unprofiled step time, interleaved runs (A B A B ...).

    python tests/perf/overhead.py [--json] [--repeats 3] [--steps 60]

Each configuration (workload x ranks) runs ``--repeats`` pairs, alternating
profiled (default 10 Hz sampling, all phase and communication spans) and
``--no-profile``; the ratio is the median over pairs of the profiled median
step time over the unprofiled one, both timed by the runner itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, step_medians, tbdprof  # noqa: E402

CONFIGS = [("resnet50", 1), ("resnet50", 2), ("transformer", 1), ("transformer", 2)]


def measure(workload: str, nproc: int, repeats: int, steps: int, warmup: int, out: Path, threads: int) -> dict:
    ratios, prof_ms, base_ms = [], [], []
    for i in range(repeats):
        pair = {}
        for mode in ("base", "prof"):
            run_id = f"{workload}-{nproc}-{mode}-{i}"
            extra = ["--no-profile"] if mode == "base" else []
            tbdprof("run", workload, "--preset", "tiny", "--nproc", nproc, "--steps", steps, "--warmup", warmup,
                    "--out", out, "--run-id", run_id, "--no-report", *extra, env={"OMP_NUM_THREADS": str(threads)})
            pair[mode] = statistics.median(step_medians(out / run_id, warmup))
        ratios.append(pair["prof"] / pair["base"])
        prof_ms.append(pair["prof"] * 1e3)
        base_ms.append(pair["base"] * 1e3)
    return {"ratio": statistics.median(ratios), "ratios": ratios, "profiled_ms": prof_ms, "unprofiled_ms": base_ms}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS per rank (default 1: two ranks on two cores without oversubscription noise)")
    args = p.parse_args(argv)
    from tbdprof.workloads.registry import names

    configs = [(w, n) for w, n in CONFIGS if w in names()]
    with tempfile.TemporaryDirectory() as tmp:
        per = {f"{w} x{n}": measure(w, n, args.repeats, args.steps, args.warmup, Path(tmp), args.threads) for w, n in configs}
    emit({"overhead_ratio": max(v["ratio"] for v in per.values()), "configs": per}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Figure 5: `tbdprof report` and `tbdprof diagnose` on a synthetic cluster-sized run.

    python tests/perf/analysis_scale.py --ranks 64 --hours 1 [--json] [--sweep 8,16,32,64] [--keep DIR]

The run comes from ``tests/perf/synth.py`` (deterministic; 10 Hz samples,
10 steps/s). Each command runs in a fresh process; wall time and peak RSS are
that process's (``wait4``). ``--sweep`` repeats for several rank counts to show
how the cost grows.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, timed  # noqa: E402


def measure(ranks: int, hours: float, root: Path) -> dict:
    run = root / f"synth-{ranks}x{hours:g}h"
    if not run.exists():
        timed([sys.executable, str(Path(__file__).parent / "synth.py"), "--ranks", str(ranks), "--hours", str(hours), "--out", str(run)])
    report_s, report_mb = timed([sys.executable, "-m", "tbdprof", "report", str(run)])
    diagnose_s, diagnose_mb = timed([sys.executable, "-m", "tbdprof", "diagnose", str(run), "--json"])
    size = sum(f.stat().st_size for f in run.rglob("*.parquet"))
    return {"ranks": ranks, "hours": hours, "store_mb": size / 1e6, "report_s": report_s, "diagnose_s": diagnose_s,
            "peak_rss_mb": max(report_mb, diagnose_mb), "report_rss_mb": report_mb, "diagnose_rss_mb": diagnose_mb}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=64)
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--sweep", default=None, help="comma-separated rank counts, e.g. 8,16,32,64")
    p.add_argument("--keep", default=None, help="folder to keep (and reuse) the synthetic runs in")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tbdprof-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        sizes = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.ranks]
        results = [measure(n, args.hours, root) for n in sizes]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    out = dict(results[-1])
    if len(results) > 1:
        out["sweep"] = results
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

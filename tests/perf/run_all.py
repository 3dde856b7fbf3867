"""`make bench`: every benchmark, one table (figure, measured, goal, pass/fail), and bench.json.

    python tests/perf/run_all.py [--quick]

``--quick`` shortens the long ones (a few short overhead rounds, a 16-rank
analysis run, a 2-minute memory run) for a smoke check; the documented
figures come from the full run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

# (figure, script, args, quick args, key, goal, compare)
FIGURES = [
    ("overhead: worst tbdprof 90% upper bound minus its goal (1.01; 1.02 at 5 ms)", "overhead.py", [], ["--quick"],
     "overhead_hi90_over_goal", 0.0, "<="),
    ("span cost on the training thread (us)", "span_cost.py", [], [], "span_cost_us", 5.0, "<="),
    ("sampler thread, share of one core at 10 Hz", "sampler_cost.py", [], ["--seconds", "5"], "sampler_core_fraction", 0.005, "<="),
    ("sampler thread, share of one core at 100 Hz", "sampler_cost.py", [], ["--seconds", "5"], "sampler_core_fraction_100hz", 0.05, "<="),
    ("Parquet MB per rank-hour", "storage.py", [], ["--seconds", "20"], "mb_per_rank_hour", 8.0, "<="),
    ("report, 1,024 ranks x 1 h (s)", "analysis_scale.py", ["--ranks", "1024"], ["--ranks", "16", "--hours", "0.25"], "report_s", 15.0, "<="),
    ("diagnose, 1,024 ranks x 1 h (s)", "analysis_scale.py", ["--ranks", "1024"], ["--ranks", "16", "--hours", "0.25"], "diagnose_s", 15.0, "<="),
    ("analysis peak RSS (MB)", "analysis_scale.py", ["--ranks", "1024"], ["--ranks", "16", "--hours", "0.25"], "peak_rss_mb", 1500.0, "<="),
    ("deep window: bytes per window step (ops rows + gzip'd trace) / a plain Kineto JSON trace's per step", "deep_window_bytes.py",
     [], ["--steps", "30", "--every", "10", "--window", "3"], "window_vs_plain_kineto", 0.25, "<="),
    ("recorder RSS growth at 100 Hz (MB/hour)", "memory_flat.py", [], ["--minutes", "2"], "rss_slope_mb_per_hour", 10.0, "<="),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="bench.json")
    args = p.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    cache: dict[tuple, dict] = {}
    rows, results = [], {}
    for figure, script, full, quick, key, goal, cmp in FIGURES:
        extra = quick if args.quick else full
        call = (script, *extra)
        if call not in cache:
            out = subprocess.run([sys.executable, str(HERE / script), *extra, "--json"], capture_output=True, text=True)
            cache[call] = json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.strip().splitlines()[-1:]}
        data = cache[call]
        value = data.get(key)
        ok = value is not None and (value <= goal if cmp == "<=" else value >= goal)
        results[key] = {"figure": figure, "measured": value, "goal": goal, "pass": ok, "details": data}
        rows.append((figure, "error" if value is None else f"{value:.4g}", f"{cmp} {goal:g}", "pass" if ok else "FAIL"))
    table = Table(title="tbdprof benchmarks" + (" (quick)" if args.quick else ""))
    for col in ("figure", "measured", "goal", "result"):
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    Console().print(table)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

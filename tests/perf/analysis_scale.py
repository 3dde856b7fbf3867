"""Figure 5: `tbdprof report` and `tbdprof diagnose` on a synthetic cluster-sized run, with planted faults.

    python tests/perf/analysis_scale.py --ranks 1024 --hours 1 [--json] [--sweep 64,256,1024] [--keep DIR] [--jobs N]

The run comes from ``tests/perf/synth.py`` (deterministic; 10 Hz samples,
10 steps/s, 8 ranks a host, table rollups as the writer writes it), with one
slow rank (forward) and one slow host (data wait) planted: by default the rank
in the middle of the job and the last host, or the first where the slow rank
is on the last (``--slow-rank``, ``--slow-host``; -1 and ``none`` plant none).
Each command runs in a fresh process; wall time and peak RSS are that
process's (``wait4``). Each size reports whether ``tbdprof diagnose --json``
finds both faults (a straggler finding with the rank among its ranks; the host
among a finding's whole hosts, or in its title) and whether summary.json's
slowest rank and slowest host are the planted ones, and checks the goals:
report within 15 s and 1.5 GB, diagnose within 15 s. ``--sweep`` repeats for
several rank counts to show how the cost grows. ``--keep DIR`` keeps the runs
there and reuses them, named ``synth-<ranks>``, with the hours and the faults
appended where they are not the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, timed  # noqa: E402

SYNTH = Path(__file__).parent / "synth.py"
RANKS_PER_HOST = 8
GOALS = {"report_s": 15.0, "report_rss_mb": 1500.0, "diagnose_s": 15.0}  # each measured figure <= its goal


def host_of(rank: int) -> str:
    return f"node{rank // RANKS_PER_HOST:03d}"  # synth.py's host names


def default_faults(ranks: int) -> tuple[int, str | None]:
    """The planted slow rank (the middle one) and slow host (the last, or the first where that is the slow rank's;
    none with one host)."""
    rank, hosts = ranks // 2, -(-ranks // RANKS_PER_HOST)
    last = host_of((hosts - 1) * RANKS_PER_HOST)
    return rank, None if hosts == 1 else last if host_of(rank) != last else host_of(0)


def store_name(ranks: int, hours: float, slow_rank: int | None, slow_host: str | None) -> str:
    """``synth-<ranks>``, plus the hours unless 1 and the faults unless the defaults."""
    name = f"synth-{ranks}" + (f"-{hours:g}h" if hours != 1 else "")
    if (slow_rank, slow_host) != default_faults(ranks):
        name += f"-rank{slow_rank if slow_rank is not None else 'none'}-{slow_host or 'nohost'}"
    return name


def generate(run: Path, ranks: int, hours: float, slow_rank: int | None, slow_host: str | None, jobs: int) -> float:
    """Write the run with synth.py in a fresh process; its wall seconds. A run it could not finish is removed."""
    cmd = [sys.executable, str(SYNTH), "--ranks", str(ranks), "--hours", str(hours), "--ranks-per-host",
           str(RANKS_PER_HOST), "--jobs", str(jobs), "--out", str(run)]
    cmd += ["--slow-rank", str(slow_rank)] if slow_rank is not None else []
    cmd += ["--slow-host", slow_host] if slow_host else []
    try:
        return timed(cmd)[0]
    except BaseException:
        shutil.rmtree(run, ignore_errors=True)
        raise


def found(findings: list[dict], summary: dict, slow_rank: int | None, slow_host: str | None) -> dict:
    """Whether diagnose's findings and summary.json's outliers name the planted faults (None: none planted;
    summary.json has outliers only for large runs)."""
    out = {"diagnose_names_rank": None, "diagnose_names_host": None, "summary_slowest_rank": None, "summary_slowest_host": None}
    large = summary.get("rank_outliers") or {}
    if slow_rank is not None:
        out["diagnose_names_rank"] = any(f["kind"] == "straggler" and slow_rank in f["ranks"] for f in findings)
        if large.get("slowest_ranks"):
            out["summary_slowest_rank"] = large["slowest_ranks"][0]["rank"] == slow_rank
    if slow_host:
        out["diagnose_names_host"] = any(slow_host in ((f.get("evidence") or {}).get("whole_hosts") or []) or slow_host in f["title"]
                                         for f in findings)
        if large.get("slowest_hosts"):
            out["summary_slowest_host"] = large["slowest_hosts"][0]["host"] == slow_host
    return out


def measure(ranks: int, hours: float, root: Path, slow_rank: int | None, slow_host: str | None, jobs: int) -> dict:
    run = root / store_name(ranks, hours, slow_rank, slow_host)
    generation_s = None if run.exists() else generate(run, ranks, hours, slow_rank, slow_host, jobs)
    report_s, report_mb = timed([sys.executable, "-m", "tbdprof", "report", str(run)])
    with tempfile.TemporaryFile() as out:
        diagnose_s, diagnose_mb = timed([sys.executable, "-m", "tbdprof", "diagnose", str(run), "--json"], stdout=out)
        out.seek(0)
        findings = json.load(out)
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    size = sum(f.stat().st_size for f in run.rglob("*.parquet"))
    result = {"ranks": ranks, "hours": hours, "run": run.name, "slow_rank": slow_rank, "slow_host": slow_host,
              "store_mb": size / 1e6, "mb_per_rank_hour": size / 1e6 / (ranks * hours), "generation_s": generation_s,
              "report_s": report_s, "report_rss_mb": report_mb, "diagnose_s": diagnose_s, "diagnose_rss_mb": diagnose_mb,
              "peak_rss_mb": max(report_mb, diagnose_mb), **found(findings, summary, slow_rank, slow_host)}
    result["goals_met"] = {k: result[k] <= goal for k, goal in GOALS.items()}
    return result


def _mark(v) -> str:
    return "-" if v is None else "yes" if v is True else "NO" if v is False else f"{v:.1f}"


def print_table(results: list[dict]) -> None:
    cols = [("ranks", "ranks"), ("store_mb", "store MB"), ("mb_per_rank_hour", "MB/rank-h"), ("generation_s", "gen s"),
            ("report_s", "report s"), ("report_rss_mb", "report MB"), ("diagnose_s", "diag s"),
            ("diagnose_rss_mb", "diag MB"), ("diagnose_names_rank", "diag rank"), ("diagnose_names_host", "diag host"),
            ("summary_slowest_rank", "sum rank"), ("summary_slowest_host", "sum host")]
    rows = [[h for _, h in cols]] + [[str(r[k]) if k == "ranks" else _mark(r[k]) for k, _ in cols] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
    for r in results:
        print(f"{r['ranks']} ranks ({r['run']}): " + "; ".join(
            f"{k} {r[k]:.1f} <= {goal:g}: {'pass' if r['goals_met'][k] else 'FAIL'}" for k, goal in GOALS.items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=64)
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--sweep", default=None, help="comma-separated rank counts, e.g. 64,256,1024")
    p.add_argument("--keep", default=None, help="folder to keep (and reuse) the synthetic runs in")
    p.add_argument("--slow-rank", type=int, default=None, help="the planted slow rank (default: the middle one; -1: none)")
    p.add_argument("--slow-host", default=None, help="the planted slow host, e.g. node003 (default: see above; none: none)")
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="synth.py's --jobs: ranks written in parallel")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tbdprof-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        results = []
        for n in [int(x) for x in args.sweep.split(",")] if args.sweep else [args.ranks]:
            rank, host = default_faults(n)
            rank = rank if args.slow_rank is None else None if args.slow_rank < 0 else args.slow_rank
            host = host if args.slow_host is None else None if args.slow_host == "none" else args.slow_host
            results.append(measure(n, args.hours, root, rank, host, args.jobs))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        emit({**results[-1], "goals": GOALS} | ({"sweep": results} if len(results) > 1 else {}), True)
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

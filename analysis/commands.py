"""Analysis subcommands: ``tbdprof report``, ``tbdprof export``, ``tbdprof compare``, ``tbdprof diagnose``,
``tbdprof scaling``, ``tbdprof trace``."""

from __future__ import annotations

import argparse
import sys


def cmd_report(args) -> int:
    from .report import report

    report(args.run_dir, json_only=args.json, link_bytes_per_s=args.link_bandwidth, source=args.source)
    return 0


def cmd_export(args) -> int:
    from .export import export

    try:
        export(args.run_dir, args.format, args.output, ranks=args.ranks, start_s=args.start, end_s=args.end)
    except BrokenPipeError:  # `export -o - | head`: the reader has all it wants
        sys.stdout = None  # nothing left to flush into the closed pipe at exit
    return 0


def cmd_compare(args) -> int:
    from .compare import compare_command

    compare_command(args.run_a, args.run_b, json_out=args.json, link_bytes_per_s=args.link_bandwidth)
    return 0


def cmd_diagnose(args) -> int:
    from .diagnose import diagnose_command

    return diagnose_command(args.run_dir, json_out=args.json, link_bytes_per_s=args.link_bandwidth, source=args.source)


def cmd_ops(args) -> int:
    from .ops import ops_command

    return ops_command(args.run_dir, rank=args.rank, phase=args.phase, json_out=args.json)


def cmd_trace(args) -> int:
    from .trace import trace_command

    return trace_command(args.run_dir, steps=args.steps, timeout_s=args.timeout, json_out=args.json)


def cmd_status(args) -> int:
    from .live import status_command

    return status_command(args.run_dir, json_out=args.json)


def cmd_scaling(args) -> int:
    from .scaling import scaling_command

    return scaling_command(args.paths, out=args.out, json_out=args.json, plots=args.plots, force=args.force,
                           link_bytes_per_s=args.link_bandwidth, latency_s=None if args.link_latency_us is None else args.link_latency_us / 1e6,
                           fit=args.fit, sizes=args.project)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"wants comma-separated rank counts (1 or more), got {text!r}")
    return sizes


def _ranks(text: str) -> list[int]:
    try:
        return [int(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ranks wants comma-separated rank numbers, got {text!r}") from None


def _bandwidth(text: str) -> float:
    from tbdprof.errors import UserError

    from .bandwidth import parse_bandwidth

    try:
        return parse_bandwidth(text)
    except UserError as e:  # argparse prints an ArgumentTypeError's own words
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_source(parser) -> None:
    from .load import SCALE_RANK_HOURS, SOURCES

    parser.add_argument("--source", default="auto", choices=SOURCES,
                        help=f"read the raw rows, or the rollups with raw rows of a zoom window only (default auto: "
                             f"rollups from {SCALE_RANK_HOURS:g} rank-hours up)")


def add_parsers(sub) -> None:
    link_help = "the network link's capacity per rank, e.g. 10Gbit, 25Gbps, 1.25GB/s (default: unknown)"
    s = sub.add_parser("report", help="summarise a run: terminal tables, summary.json, report.html")
    s.add_argument("run_dir", help="a run folder (runs/<run_id>)")
    s.add_argument("--json", action="store_true", help="print summary.json to stdout instead of tables")
    s.add_argument("--link-bandwidth", type=_bandwidth, default=None, metavar="BW", help=link_help)
    _add_source(s)
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("export", help="export a run as a Chrome trace (Perfetto UI, chrome://tracing)")
    s.add_argument("run_dir", help="a run folder")
    s.add_argument("--format", default="chrome", choices=["chrome"], help="output format (default chrome)")
    s.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="output file; .gz compresses; - for stdout (default RUN_DIR/trace.json.gz)")
    s.add_argument("--ranks", type=_ranks, default=None, metavar="0,1", help="only these ranks")
    s.add_argument("--start", type=float, default=None, metavar="S", help="only from S seconds after the run's start")
    s.add_argument("--end", type=float, default=None, metavar="S", help="only up to S seconds after the run's start")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("compare", help="compare two runs figure by figure, with their environment differences")
    s.add_argument("run_a", help="the baseline run folder")
    s.add_argument("run_b", help="the run folder to compare with it")
    s.add_argument("--json", action="store_true", help="print the comparison as JSON")
    s.add_argument("--link-bandwidth", type=_bandwidth, default=None, metavar="BW", help=link_help)
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("diagnose", help="name the bottleneck: findings with severity, ranks, evidence and a fix")
    s.add_argument("run_dir", help="a run folder")
    s.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    s.add_argument("--link-bandwidth", type=_bandwidth, default=None, metavar="BW", help=link_help)
    _add_source(s)
    s.set_defaults(func=cmd_diagnose)

    s = sub.add_parser("status", help="where every rank of a running job is: step, phase, seconds since progress, hangs")
    s.add_argument("run_dir", help="a run folder (of a job running now, or stopped)")
    s.add_argument("--json", action="store_true", help="print one object per rank as a JSON list")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("ops", help="operators and layers of the deep windows per rank, and what a slow rank does differently")
    s.add_argument("run_dir", help="a run folder recorded with deep windows (--deep-every N)")
    s.add_argument("--rank", type=int, default=None, metavar="R", help="compare this rank with the others (default: the slowest)")
    s.add_argument("--phase", default=None, metavar="P", help="only operators that started in this phase (forward, backward...)")
    s.add_argument("--json", action="store_true", help="print the figures as JSON")
    s.set_defaults(func=cmd_ops)

    s = sub.add_parser("trace", help="ask the live ranks of a running job for a deep window now (torch.profiler, every rank)")
    s.add_argument("run_dir", help="the run folder of a job running now")
    s.add_argument("--steps", type=int, default=5, metavar="K", help="steps in the window (default 5)")
    s.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="seconds to wait for every rank to record it (default 120)")
    s.add_argument("--json", action="store_true", help="print where the window landed as JSON")
    s.set_defaults(func=cmd_trace)

    s = sub.add_parser("scaling", help="scaling report of a sweep or runs: efficiency, its causes, comm model, projection")
    s.add_argument("paths", nargs="+", metavar="SWEEP_DIR|RUN_DIR", help="a sweep folder (sweep.json) or run folders")
    s.add_argument("--out", default=None, metavar="DIR", help="where scaling.json/html and plots go (default: the sweep folder)")
    s.add_argument("--json", action="store_true", help="print scaling.json to stdout instead of tables")
    s.add_argument("--force", action="store_true", help="compare runs of different workloads or batch settings")
    s.add_argument("--link-bandwidth", type=_bandwidth, default=None, metavar="BW",
                   help="the network link's capacity (default: measured from the runs' allreduce calls)")
    s.add_argument("--link-latency-us", type=float, default=None, metavar="US",
                   help="latency per ring hop (default: measured by each run's clock alignment, else 0)")
    s.add_argument("--fit", type=_sizes, default=None, metavar="1,2", help="sizes the projection is fitted on (default: all)")
    s.add_argument("--project", type=_sizes, default=None, metavar="8,16", help="sizes to project (default: 2x and 4x the largest)")
    s.add_argument("--plots", default="png", choices=["png", "svg", "none"], help="plot files to write (default png)")
    s.set_defaults(func=cmd_scaling)

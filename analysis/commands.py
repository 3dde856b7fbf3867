"""Analysis subcommands: ``tbdprof report``, ``tbdprof export``, ``tbdprof compare``, ``tbdprof diagnose``."""

from __future__ import annotations

import argparse


def cmd_report(args) -> int:
    from .report import report

    report(args.run_dir, json_only=args.json, link_bytes_per_s=args.link_bandwidth)
    return 0


def cmd_export(args) -> int:
    from .export import export

    export(args.run_dir, args.format, args.output, ranks=args.ranks, start_s=args.start, end_s=args.end)
    return 0


def cmd_compare(args) -> int:
    from .compare import compare_command

    compare_command(args.run_a, args.run_b, json_out=args.json, link_bytes_per_s=args.link_bandwidth)
    return 0


def cmd_diagnose(args) -> int:
    from .diagnose import diagnose_command

    return diagnose_command(args.run_dir, json_out=args.json, link_bytes_per_s=args.link_bandwidth)


def _ranks(text: str) -> list[int]:
    try:
        return [int(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ranks wants comma-separated rank numbers, got {text!r}") from None


def _bandwidth(text: str) -> float:
    from .bandwidth import parse_bandwidth

    return parse_bandwidth(text)


def add_parsers(sub) -> None:
    link_help = "the network link's capacity per rank, e.g. 10Gbit, 25Gbps, 1.25GB/s (default: unknown)"
    s = sub.add_parser("report", help="summarise a run: terminal tables, summary.json, report.html")
    s.add_argument("run_dir", help="a run folder (runs/<run_id>)")
    s.add_argument("--json", action="store_true", help="print summary.json to stdout instead of tables")
    s.add_argument("--link-bandwidth", type=_bandwidth, default=None, metavar="BW", help=link_help)
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
    s.set_defaults(func=cmd_diagnose)

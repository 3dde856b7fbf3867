"""Analysis subcommands: ``tbdprof report``."""

from __future__ import annotations


def cmd_report(args) -> int:
    from .report import report

    report(args.run_dir, json_only=args.json)
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("report", help="summarise a run: terminal tables, summary.json, report.html")
    s.add_argument("run_dir", help="a run folder (runs/<run_id>)")
    s.add_argument("--json", action="store_true", help="print summary.json to stdout instead of tables")
    s.set_defaults(func=cmd_report)

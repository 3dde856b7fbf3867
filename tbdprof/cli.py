"""The ``tbdprof`` command: the front door that composes launch, workloads and analysis.

Each package contributes its subcommands through a ``commands`` module with
``add_parsers(subparsers)``. This is the one module of the ``tbdprof``
package that names the other packages; the recorder library never imports them.
A subcommand may ask for a report afterwards by setting ``args.then_report``
(``tbdprof run`` does), so launch code never imports analysis.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import UserError

EXIT_BAD_INPUT = 2

COMMAND_MODULES = (
    "tbdprof.launch.commands",
    "tbdprof.analysis.commands",
    "tbdprof.workloads.commands",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tbdprof", description="Distributed deep-learning training profiler.")
    p.add_argument("--version", action="version", version="tbdprof " + __import__("tbdprof").__version__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        then = getattr(args, "then_report", None)
        if code == 0 and then is not None:
            from .analysis.report import report

            report(then)
        return code
    except KeyboardInterrupt:
        print("tbdprof: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns errors into exit codes
        if isinstance(e, UserError):
            print(f"tbdprof: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if os.environ.get("TBDPROF_DEBUG"):
            raise
        print(f"tbdprof: internal error: {e.__class__.__name__}: {e} (set TBDPROF_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1

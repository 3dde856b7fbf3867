"""``tbdprof workloads``: what is registered."""

from __future__ import annotations


def cmd_workloads(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .registry import get, names

    table = Table(title="registered workloads", title_justify="left")
    for col in ("name", "domain", "presets", "parameters"):
        table.add_column(col)
    for name in names():
        wl = get(name)
        counts = ", ".join(f"{p} {wl.param_count(p):,}" for p in wl.presets)
        table.add_row(name, wl.domain, ", ".join(wl.presets), counts)
    Console().print(table)
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("workloads", help="list the registered workloads with domains, presets and parameter counts")
    s.set_defaults(func=cmd_workloads)

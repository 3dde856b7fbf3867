"""Bottleneck findings for ``tbdprof diagnose``: one small rule module per kind of problem.

Each rule is a function ``rule(ctx) -> list[Finding]`` over a
:class:`~.context.Context`, which computes every figure once, in DuckDB, and
only when a rule asks for it. :mod:`tbdprof.analysis.diagnose` holds the
table of rules and composes them.
"""

from .base import SEVERITIES, Finding

__all__ = ["Finding", "SEVERITIES"]

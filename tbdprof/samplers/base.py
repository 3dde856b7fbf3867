"""The sampler interface."""

from __future__ import annotations

from typing import Callable

Emit = Callable[[str, str, float], None]
"""``emit(metric, device, value)``: one reading at the current tick."""


class Sampler:
    """One source of readings. Subclasses set ``name`` and ``scope`` and implement ``sample``.

    ``scope`` is "process" (every rank samples it), "host" (only local rank 0,
    so a host's counters are not recorded once per rank) or "device".
    """

    name = "sampler"
    scope = "process"

    def is_available(self) -> bool:
        return True

    def start(self) -> None:
        """Take handles and first counter readings (called once, on the sampling thread)."""

    def sample(self, emit: Emit) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release handles."""

"""Timestamps and cross-rank clock alignment.

Every record carries ``now_ns()``: nanoseconds since the Unix epoch on this
host's clock. Hosts disagree by milliseconds, so each rank also estimates its
offset to rank 0 by ping-pong (NTP style) over the process group, at the start
and at the end of a run. Analysis maps a rank's timestamp ``t`` onto rank 0's
clock as ``t + offset(t)``, with ``offset`` linear between the two estimates
(clock drift).

Test-only hook: ``TBDPROF_TEST_CLOCK_SKEW_NS`` adds a fixed skew to this
process's clock, so tests can check that the estimate recovers it.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from datetime import timedelta

_SKEW_NS = int(os.environ.get("TBDPROF_TEST_CLOCK_SKEW_NS", "0") or 0)

if _SKEW_NS:

    def now_ns() -> int:
        """This host's wall clock in ns (with the test skew applied)."""
        return time.time_ns() + _SKEW_NS

else:
    now_ns = time.time_ns


@dataclass(frozen=True)
class ClockEstimate:
    """``offset_ns`` added to this rank's clock gives rank 0's, at local time ``at_ns``."""

    offset_ns: int
    uncertainty_ns: int  # half the best round trip: the true offset is within +-this
    at_ns: int
    rounds: int

    def to_dict(self) -> dict:
        return asdict(self)


def best_of(exchanges: list[tuple[int, int, int]]) -> tuple[int, int]:
    """Offset and uncertainty from (t_send, t_remote, t_recv) triples, using the
    exchange with the shortest round trip (the least queueing noise)."""
    if not exchanges:
        raise ValueError("no exchanges")
    t0, t1, t2 = min(exchanges, key=lambda e: e[2] - e[0])
    return t1 - (t0 + t2) // 2, (t2 - t0) // 2


def estimate_offset(group=None, rounds: int = 16, timeout_s: float = 30.0) -> ClockEstimate:
    """Ping-pong every rank with rank 0 over ``group`` (a gloo process group).

    Collective: every rank of the group must call it. Rank 0 returns offset 0.
    """
    import torch
    import torch.distributed as dist

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    timeout = timedelta(seconds=timeout_s)
    buf = torch.zeros(1, dtype=torch.int64)

    def send(dst: int, value: int) -> None:
        buf[0] = value
        dist.isend(buf, dst=dst, group=group).wait(timeout)

    def recv(src: int) -> int:
        dist.irecv(buf, src=src, group=group).wait(timeout)
        return int(buf[0])

    at = now_ns()
    if rank == 0:
        for peer in range(1, world):
            for _ in range(rounds):
                recv(peer)
                send(peer, now_ns())
        return ClockEstimate(0, 0, at, rounds)
    exchanges = []
    for _ in range(rounds):
        t0 = now_ns()
        send(0, t0)
        t1 = recv(0)
        exchanges.append((t0, t1, now_ns()))
    offset, unc = best_of(exchanges)
    return ClockEstimate(offset, unc, at, rounds)


def drift(start: dict | None, end: dict | None) -> float:
    """The offset's change per local nanosecond between the start and end estimates (0 without both)."""
    if not start or not end or end["at_ns"] == start["at_ns"]:
        return 0.0
    return (end["offset_ns"] - start["offset_ns"]) / (end["at_ns"] - start["at_ns"])


def offset_at(start: dict | None, end: dict | None, t_ns: int) -> float:
    """The offset at local time ``t_ns``, linear between the start and end estimates."""
    if not start:
        return float(end["offset_ns"]) if end else 0.0
    return start["offset_ns"] + drift(start, end) * (t_ns - start["at_ns"])

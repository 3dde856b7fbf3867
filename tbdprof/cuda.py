"""Spans of device work timed with CUDA events and placed on the host clock.

The training thread only records events (a few microseconds each, no
synchronisation); the writer thread later turns completed events into spans.
Event times are relative, so each span is placed through an *anchor*: an
event recorded on a stream of its own, which nothing else uses, at a known
host time. An idle stream runs the event at once, so the anchor's GPU time is
its host time (to within the launch latency), and any later event's host time
is ``anchor_ns + anchor.elapsed_time(event)``. Anchors are renewed every
``anchor_every_s`` so that host and GPU clock drift stays negligible.

Used for device phases (:meth:`tbdprof.Profiler.cuda_phase`) and for NCCL
communication spans (:mod:`tbdprof.comm`).
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from typing import Any, Callable

from . import clock
from .schema import SpanRow

log = logging.getLogger("tbdprof")

SpanSink = Callable[[SpanRow], None]
"""``sink(row)``: where a producer hands its span rows (the Profiler's ``_record_span``)."""


def in_use() -> bool:
    """True when this process has initialised CUDA (without importing torch or initialising it)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


class CudaEvents:
    """Timing events from torch: ``record()`` on the current stream, ``anchor()`` on an idle stream."""

    def __init__(self):
        import torch

        self._torch = torch
        self._streams: dict[int, Any] = {}

    def record(self):
        ev = self._torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def anchor(self) -> tuple[int, Any]:
        cuda = self._torch.cuda
        dev = cuda.current_device()
        stream = self._streams.get(dev)
        if stream is None:
            stream = self._streams[dev] = cuda.Stream(dev)
        ev = cuda.Event(enable_timing=True)
        now = clock.now_ns()
        ev.record(stream)
        return now, ev


class CudaPending:
    """Event-timed spans waiting for their events to complete.

    ``add`` may be called from any thread (the training thread, autograd's
    device threads running DDP hooks); ``resolve`` runs on the writer thread.
    Both use only the deque's atomic operations, so no span is lost between
    them.
    """

    def __init__(self, sink: SpanSink, events: Any = None, anchor_every_s: float = 1.0):
        self.sink = sink
        self.events = events if events is not None else CudaEvents()
        self._anchor: tuple[int, Any] | None = None
        self._anchor_every_ns = int(anchor_every_s * 1e9)
        self.items: deque = deque()
        self._failed = False

    def record(self):
        """A timing event recorded now on the current stream."""
        return self.events.record()

    def begin(self) -> tuple:
        """The start of a span: (anchor, a timing event recorded now on the current stream)."""
        return self.anchor(), self.events.record()

    def anchor(self) -> tuple[int, Any]:
        """The current (host ns, event) anchor, renewed when older than ``anchor_every_s``."""
        a = self._anchor
        if a is None or clock.now_ns() - a[0] > self._anchor_every_ns:
            a = self._anchor = self.events.anchor()
        return a

    def add(self, step: int, name: str, kind: str, nbytes: int | None, begun: tuple, ev_end) -> None:
        """Queue a span from ``begin()``'s event to ``ev_end`` (recorded later)."""
        anchor, ev_start = begun
        self.items.append((step, name, kind, nbytes, anchor, ev_start, ev_end))

    def resolve(self, force: bool = False) -> None:
        """Emit every span whose events have completed (all of them, waiting, when ``force``)."""
        keep = []
        for _ in range(len(self.items)):
            item = self.items.popleft()
            step, name, kind, nbytes, (anchor_ns, anchor), ev_start, ev_end = item
            events = (anchor, ev_start, ev_end)
            try:
                if force:
                    for ev in events:
                        ev.synchronize()
                elif not all(ev.query() for ev in events):
                    keep.append(item)
                    continue
                start = anchor_ns + round(anchor.elapsed_time(ev_start) * 1e6)  # elapsed_time is in ms
                end = anchor_ns + round(anchor.elapsed_time(ev_end) * 1e6)
            except Exception as e:  # noqa: BLE001 - a bad event loses its span, not the others
                if not self._failed:
                    log.warning("tbdprof: a CUDA-timed span was dropped (%s: %s)", e.__class__.__name__, e)
                self._failed = True
                continue
            self.sink(SpanRow(step, name, kind, start, max(start, end), nbytes))
        self.items.extendleft(reversed(keep))


class CudaPhase:
    """A context manager timing device work on the current stream (a phase, or a collective with its bytes)."""

    __slots__ = ("pending", "prof", "name", "kind", "nbytes", "step", "begun")

    def __init__(self, pending: CudaPending, prof, name: str, kind: str, nbytes: int | None = None):
        self.pending, self.prof, self.name, self.kind, self.nbytes = pending, prof, name, kind, nbytes

    def __enter__(self):
        self.step = self.prof.step_index
        self.begun = self.pending.begin()
        return self

    def __exit__(self, *exc):
        self.pending.add(self.step, self.name, self.kind, self.nbytes, self.begun, self.pending.record())
        return False

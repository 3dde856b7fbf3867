"""The sampling thread: one loop over the registered samplers at a fixed rate."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from . import clock, schema
from .schema import SampleRow
from .samplers import Sampler

_COUNTERS = frozenset(m.name for m in schema.METRICS.values() if m.counter)

log = logging.getLogger("tbdprof")


class SamplingThread(threading.Thread):
    """Every ``1/hz`` seconds, ask each sampler for readings and append them to ``out`` (``samples`` rows).

    A sampler that fails to start or raises is logged once and dropped; the
    loop carries on with the rest. ``Event.wait`` is both the sleep and the
    stop signal, so stopping takes at most one tick.
    """

    def __init__(self, samplers: list[Sampler], out: deque, hz: float, started: bool = False):
        super().__init__(name="tbdprof-sampler", daemon=True)
        if hz <= 0:
            raise ValueError("sample rate must be positive")
        self.hz = hz
        self.interval = 1.0 / hz
        self.out = out
        self.samplers = samplers
        self._prestarted = started  # samplers already started (a replacement thread)
        self.active: list[Sampler] = list(samplers) if started else []
        self.in_flight: tuple[Sampler, float] | None = None  # the call in progress, for the watchdog
        self.disabled: dict[str, str] = {}
        self.ticks = 0
        self.cpu_s = 0.0  # CPU seconds of the sampling loop after start-up
        self.start_cpu_s = 0.0  # CPU seconds spent starting the samplers
        self.cpu_base = 0.0  # CPU seconds of the threads this one replaced (keeps the counter monotonic)
        self._last_counter: dict[tuple[str, str], tuple[float, int]] = {}  # key -> (value, tick written)
        self.heartbeat_ticks = max(1, round(hz))  # an unchanged counter is written once a second
        self.retired = threading.Event()  # set by the watchdog: this thread is abandoned
        self._halt = threading.Event()

    def _disable(self, s: Sampler, e: BaseException) -> None:
        self.disabled[s.name] = f"{e.__class__.__name__}: {e}"
        log.warning("tbdprof: sampler %r disabled (%s)", s.name, self.disabled[s.name])

    def _start_samplers(self) -> None:
        for s in self.samplers:
            try:
                if s.is_available():
                    s.start()
                    self.active.append(s)
            except Exception as e:  # noqa: BLE001
                self._disable(s, e)

    def tick(self, final: bool = False) -> None:
        ts = clock.now_ns()
        append = self.out.append
        last = self._last_counter

        tick = self.ticks

        def emit(metric: str, device: str, value: float) -> None:
            # A cumulative counter that has not moved is written again only
            # once a second (idle interfaces and disks would otherwise fill the
            # store), and always on the final tick, so readers find a reading
            # at both ends of any window and the flat stretches in between.
            if metric in _COUNTERS:
                key = (metric, device)
                seen = last.get(key)
                if not final and seen is not None and seen[0] == value and tick - seen[1] < self.heartbeat_ticks:
                    return
                last[key] = (value, tick)
            append((ts, metric, device, value))  # SampleRow's columns, as a plain tuple (tbdprof.schema)

        for s in list(self.active):
            if self.retired.is_set():
                return  # retired by the watchdog while a call hung
            self.in_flight = (s, time.monotonic())
            try:
                s.sample(emit)
            except Exception as e:  # noqa: BLE001
                self.active.remove(s)
                self._disable(s, e)
            self.in_flight = None
        self.ticks += 1

    def run(self) -> None:
        c = time.thread_time()
        if not self._prestarted:
            self._start_samplers()
        self.tick()
        # steady-state cost apart from start-up (probing NVML, opening files)
        t0 = time.thread_time()
        self.start_cpu_s = t0 - c
        while not self._halt.wait(self.interval):
            self.tick()
            self.cpu_s = time.thread_time() - t0
            self.out.append(SampleRow(clock.now_ns(), "recorder.sampler_cpu_s", "", self.cpu_base + self.cpu_s))
        if not self.retired.is_set():
            self.tick(final=True)

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=timeout)


class Sampling:
    """The sampling thread under a watchdog.

    A sampler stuck in one call (an NVML query that blocks, a hung network
    filesystem) for more than ``hang_s`` is disabled: its thread is abandoned
    (a daemon, told to stop if the call ever returns) and a fresh thread goes
    on with the other samplers. ``check()`` is called periodically from
    another thread (the writer's flush loop).
    """

    def __init__(self, samplers: list[Sampler], out: deque, hz: float, hang_s: float = 5.0):
        self.thread = SamplingThread(samplers, out, hz)
        self.hang_s = hang_s
        self._retired: list[SamplingThread] = []

    def start(self) -> None:
        self.thread.start()

    def check(self) -> None:
        t = self.thread
        cur = t.in_flight
        if cur is None or time.monotonic() - cur[1] <= self.hang_s:
            return
        stuck = cur[0]
        t.retired.set()
        t._halt.set()
        new = SamplingThread([s for s in t.active if s is not stuck], t.out, t.hz, started=True)
        new.disabled = {**t.disabled, stuck.name: f"hung in one call for more than {self.hang_s:g}s"}
        new._last_counter = t._last_counter
        new.cpu_base = t.cpu_base + t.cpu_s
        log.warning("tbdprof: sampler %r disabled (hung for more than %gs); sampling goes on without it", stuck.name, self.hang_s)
        self._retired.append(t)
        self.thread = new
        new.start()

    def stop(self) -> None:
        self.thread.stop()
        for s in self.thread.active:
            try:
                s.close()
            except Exception:  # noqa: BLE001
                pass

    @property
    def active(self) -> list[Sampler]:
        return self.thread.active

    @property
    def disabled(self) -> dict[str, str]:
        return self.thread.disabled

    @property
    def cpu_s(self) -> float:
        return sum(t.cpu_s for t in (*self._retired, self.thread))

    @property
    def ticks(self) -> int:
        return sum(t.ticks for t in (*self._retired, self.thread))

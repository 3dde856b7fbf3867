"""The sampling thread: one loop over the registered samplers at a fixed rate."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from . import clock, schema
from .samplers import Sampler

_COUNTERS = frozenset(m.name for m in schema.METRICS.values() if m.counter)

log = logging.getLogger("tbdprof")


class SamplingThread(threading.Thread):
    """Every ``1/hz`` seconds, ask each sampler for readings and append them to ``out``.

    A sampler that fails to start or raises is logged once and dropped; the
    loop carries on with the rest. ``Event.wait`` is both the sleep and the
    stop signal, so stopping takes at most one tick.
    """

    def __init__(self, samplers: list[Sampler], out: deque, hz: float):
        super().__init__(name="tbdprof-sampler", daemon=True)
        if hz <= 0:
            raise ValueError("sample rate must be positive")
        self.interval = 1.0 / hz
        self.out = out
        self.samplers = samplers
        self.active: list[Sampler] = []
        self.disabled: dict[str, str] = {}
        self.ticks = 0
        self.cpu_s = 0.0  # CPU seconds of the sampling loop after start-up
        self.start_cpu_s = 0.0  # CPU seconds spent starting the samplers
        self._last_counter: dict[tuple[str, str], float] = {}
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

    def tick(self) -> None:
        ts = clock.now_ns()
        append = self.out.append
        last = self._last_counter

        def emit(metric: str, device: str, value: float) -> None:
            # A cumulative counter that has not moved adds nothing: skip it
            # (idle interfaces and disks would otherwise fill the store).
            if metric in _COUNTERS:
                key = (metric, device)
                if last.get(key) == value:
                    return
                last[key] = value
            append((ts, metric, device, value))

        for s in list(self.active):
            try:
                s.sample(emit)
            except Exception as e:  # noqa: BLE001
                self.active.remove(s)
                self._disable(s, e)
        self.ticks += 1

    def run(self) -> None:
        self._start_samplers()
        self.tick()
        # steady-state cost only; start-up (probing NVML, opening files) is one-off
        t0 = time.thread_time()
        self.start_cpu_s = t0
        while not self._halt.wait(self.interval):
            self.tick()
            self.cpu_s = time.thread_time() - t0
            self.out.append((clock.now_ns(), "recorder.sampler_cpu_s", "", self.cpu_s))
        for s in self.active:
            try:
                s.close()
            except Exception:  # noqa: BLE001
                pass

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5.0)

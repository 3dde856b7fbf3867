"""What profiling cost this rank: its own account, written into ``rank.json`` as ``profiling_cost``.

The training thread is never timed per event on the hot path. Its cost is
the sum of:

- **calibrated events**: events counted for free (span rows the writer
  wrote, steps) or with a plain integer counter (the zero-code recorder's
  module-hook calls), times a per-event cost measured once, at close, on the
  same thread, by a short timed loop of the real code path against an empty
  loop (best of a few repeats: a lower bound on a busy machine, not noise);
- **timed parts**: code that runs a few times per step or less (the memory
  breakdown's per-step hooks and rows, the zero-code recorder's top-level
  hooks) timed directly with ``perf_counter_ns``;
- **saved tensors** packed by the memory breakdown, counted, times the
  calibrated cost of one saved tensor (pack and unpack hooks through autograd).

Each part is counted once: an entry whose timed time holds work another
component counts says so (``inside``), and that work is taken out of the
other component. The zero-code hooks end the steps, so their time holds the
steps' rows, the phase spans they record and the memory rows taken as the
steps end.

Its threads report their own CPU clocks (``time.thread_time``): the sampler
and the writer while the run goes on (the writer's final flush and compaction,
on the closing thread after training, apart as ``writer_final_cpu_s``). Bytes written are the rank folder's size after the final
flush; rows dropped are the writer's (a store that cannot be written).
:func:`tbdprof.analysis.cost` turns this into shares of step time and of a core.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

from . import clock

METHOD = ("training thread: counted events x per-event cost calibrated at close on the same thread "
          "(best of 5 timed loops of the real code path minus an empty loop), plus directly timed "
          "per-step hooks (perf_counter_ns); threads: their own CPU clocks (time.thread_time)")


def _best_per_call(body: Callable[[int], None], empty: Callable[[int], None], n: int, repeats: int = 5) -> float:
    """Seconds per iteration of ``body(n)`` over ``empty(n)``, best of ``repeats`` (never below 0)."""
    best_b = best_e = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        body(n)
        best_b = min(best_b, time.perf_counter() - t)
        t = time.perf_counter()
        empty(n)
        best_e = min(best_e, time.perf_counter() - t)
    return max(0.0, (best_b - best_e) / n)


def _scratch():
    """A Profiler never started: the real code paths, none of the real buffers."""
    from .profiler import Profiler

    return Profiler(enabled=True, clock_sync=False)  # its buffers are dropped with it


def span_cost_s(n: int = 2000) -> float:
    """One ``with prof.phase(name):`` span on this thread."""
    from .profiler import _Phase

    scratch = _scratch()
    null = contextlib.nullcontext()

    def body(k):
        for _ in range(k):
            with _Phase(scratch, "forward", "phase"):
                pass

    def empty(k):
        for _ in range(k):
            with null:
                pass

    return _best_per_call(body, empty, n)


def step_cost_s(n: int = 1000) -> float:
    """One step of ``prof.loader()`` on this thread, spans apart (its data-wait and step spans count as spans)."""
    scratch = _scratch()
    data = [None] * n

    def body(k):
        for _ in scratch.loader(data[:k]):
            pass

    def empty(k):
        for _ in iter(data[:k]):
            pass

    return max(0.0, _best_per_call(body, empty, n) - 2 * span_cost_s())


def saved_tensor_cost_s(pack, n: int = 300) -> float:
    """One tensor saved for backward under the memory breakdown's hooks (pack, and unpack in backward)."""
    import torch

    a = torch.ones(4, requires_grad=True)
    b = torch.ones(4, requires_grad=True)

    def run(k, hooked):
        for _ in range(k):
            if hooked:
                with torch.autograd.graph.saved_tensors_hooks(pack, _identity):
                    y = a * b  # saves a and b
            else:
                y = a * b
            y.sum().backward()

    return _best_per_call(lambda k: run(k, True), lambda k: run(k, False), n) / 2


def _identity(t):
    return t


def folder_bytes(path: Path | None) -> int:
    """Bytes of the files under ``path`` (the rank folder: Parquet segments and rank.json)."""
    if path is None or not Path(path).exists():
        return 0
    total = 0
    for p in Path(path).rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def _count_once(comps: dict) -> None:
    """Take out of each component what another entry's timed time already holds: that entry's ``inside``,
    ``{component: {"events": n} or {"timed_s": s}}``."""
    for entry in comps.values():
        for name, part in entry.pop("inside", {}).items():
            other = comps.get(name)
            for key, value in part.items() if other is not None else ():
                if key in other:
                    other[key] = max(0, other[key] - value)


class CostAccount:
    """One Profiler's account. ``sources`` are callables called at close with the components counted so far
    and returning ``{component: entry}``, where an entry has ``events`` and ``per_event_us`` (calibrated)
    and/or ``timed_s`` (measured directly), and optionally ``inside`` (see :func:`_count_once`)."""

    def __init__(self):
        self.sources: list[Callable[[], dict]] = []

    def training_thread(self, prof) -> dict:
        spans = prof._writer.rows_written.get("spans", 0) if prof._writer is not None else 0
        steps = prof.step_index + 1
        comps: dict[str, dict] = {}
        try:
            span_s = span_cost_s()
            comps["spans"] = {"events": spans, "per_event_us": span_s * 1e6}
            comps["steps"] = {"events": steps, "per_event_us": step_cost_s() * 1e6}
        except Exception as e:  # noqa: BLE001 - the account must never fail the close
            comps["calibration_error"] = {"error": f"{e.__class__.__name__}: {e}"}
        for t in prof._trackers:
            comps.setdefault("memory_breakdown", {"events": 0, "timed_s": 0.0})
            entry = comps["memory_breakdown"]
            entry["timed_s"] += t.timed_ns / 1e9
            entry["rows_s"] = entry.get("rows_s", 0.0) + t.row_ns / 1e9  # part of timed_s: rows taken at step ends
            entry["events"] += t.packed
            if t.packed and "per_event_us" not in entry:
                try:
                    entry["per_event_us"] = t.saved_tensor_cost_s() * 1e6
                except Exception as e:  # noqa: BLE001
                    entry["error"] = f"{e.__class__.__name__}: {e}"
            entry["measured_steps"] = entry.get("measured_steps", 0) + t.measured_steps
        for source in self.sources:
            try:
                comps.update(source(comps))
            except Exception as e:  # noqa: BLE001
                comps["calibration_error"] = {"error": f"{e.__class__.__name__}: {e}"}
        _count_once(comps)
        for entry in comps.values():
            if "error" in entry and len(entry) == 1:
                continue
            entry["s"] = entry.get("events", 0) * entry.get("per_event_us", 0.0) / 1e6 + entry.get("timed_s", 0.0)
        return comps

    def summary(self, prof) -> dict:
        """The ``profiling_cost`` entry of rank.json (after the writer stopped)."""
        comps = self.training_thread(prof)
        writer_cpu = prof._writer.cpu_s if prof._writer is not None else 0.0
        sampler_cpu = prof._sampler.cpu_s if prof._sampler is not None else 0.0
        start = prof._meta.get("start_ns")
        return {
            "method": METHOD,
            "training_thread_s": sum(e.get("s", 0.0) for e in comps.values()),
            "training_thread": comps,
            "sampler_cpu_s": sampler_cpu,
            "writer_cpu_s": writer_cpu,
            "writer_final_cpu_s": prof._writer.final_cpu_s if prof._writer is not None else 0.0,  # at close, not while training
            "threads_cpu_s": sampler_cpu + writer_cpu,
            "wall_s": (clock.now_ns() - start) / 1e9 if start else None,
            "bytes_written": folder_bytes(prof.rank_dir),
            "rows_written": sum(prof._writer.rows_written.values()) if prof._writer is not None else 0,
            "rows_dropped": prof._writer.rows_dropped if prof._writer is not None else 0,
        }

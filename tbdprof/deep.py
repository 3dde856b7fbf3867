"""Deep windows: a few consecutive steps recorded with torch.profiler inside the always-on recording.

A window records ``steps`` consecutive steps (default 5) with
``torch.profiler`` (CPU activities; CUDA too when CUDA is in use), then the
rank returns to always-on recording. On a schedule (``Profiler(deep_every=N,
deep_steps=K)``, env ``TBDPROF_DEEP_EVERY`` / ``TBDPROF_DEEP_STEPS``) a
window starts at every step ``s`` with ``s % N == 0`` past the warm-up: every
rank computes the same steps from its step index, so all ranks record the
same steps without a collective.

The torch profiler is started and stopped at step boundaries, from the
Profiler's step observer (on the training thread). While a window is open,
global module hooks push one ``record_function`` range per module forward,
named ``module: <path>`` (``layer3.0.conv2``), so every operator knows the
layer it ran under; backward operators take the layer of the forward operator
that made their autograd node (its sequence number). The hooks are removed
when the window closes.

After a window, on the writer thread (never the training thread), the
profiler's events become rows of table ``ops`` (tbdprof.schema), the raw
Kineto trace is written gzip'd beside the rank's segments
(``deep-<first>-<last>.pt.trace.json.gz``, with ``distributedInfo`` rank and
world size, bounded by ``TRACE_MAX_BYTES``), and ``deep.json`` (beside
``rank.json``) lists the windows with their cost: steps, when, the
profiler's start/stop time on the training thread, the writer's CPU time and
bytes. Window steps (and the step after, which carries the profiler's stop in
loops driven by ``prof.loader()``) are marked with a ``mark`` span named
``deep_window``; analysis leaves them out of always-on figures.
"""

from __future__ import annotations

import bisect
import gzip
import json
import logging
import os
import shutil
import threading
import time
import weakref
from collections import deque
from typing import Any

from . import clock, schema, store

log = logging.getLogger("tbdprof")

ENV_DEEP_EVERY = "TBDPROF_DEEP_EVERY"  # a window every N steps (0 or unset: none on a schedule)
ENV_DEEP_STEPS = "TBDPROF_DEEP_STEPS"  # steps per window
DEFAULT_STEPS = 5
TRACE_MAX_BYTES = 32 * 2**20  # a window's gzip'd Kineto trace above this is not kept (deep.json says so)
TRIGGER_SCHEDULE = "schedule"


def config(every: int | None, steps: int | None) -> tuple[int, int]:
    """(every, steps) from the arguments, else the environment; ``every`` 0 means no schedule."""
    try:
        every = int(os.environ.get(ENV_DEEP_EVERY) or 0) if every is None else int(every)
        steps = int(os.environ.get(ENV_DEEP_STEPS) or DEFAULT_STEPS) if steps is None else int(steps)
    except ValueError:
        raise ValueError(f"{ENV_DEEP_EVERY} and {ENV_DEEP_STEPS} must be whole numbers") from None
    if every < 0 or steps < 1:
        raise ValueError("deep_every must not be negative and deep_steps must be at least 1")
    if every and steps >= every:
        raise ValueError(f"deep_steps ({steps}) must be less than deep_every ({every}): "
                         "windows are short interruptions of always-on recording")
    return every, steps


def scheduled_start(step: int, every: int, warmup_steps: int) -> bool:
    """Does a scheduled window start at ``step``? The same answer on every rank: no collective needed."""
    return every > 0 and step > 0 and step > warmup_steps and step % every == 0


class _Window:
    __slots__ = ("first", "last", "trigger", "prof", "start_ns", "end_ns", "start_call_s", "stop_call_s", "step_ends")

    def __init__(self, first: int, steps: int, trigger: str):
        self.first, self.last, self.trigger = first, first + steps - 1, trigger
        self.prof = None
        self.start_ns = self.end_ns = 0
        self.start_call_s = self.stop_call_s = 0.0
        self.step_ends: list[tuple[int, int]] = []  # (step, end_ns) of each step the window recorded


class _ModuleRanges:
    """Global module hooks that wrap every module forward in a ``record_function`` range (window only)."""

    def __init__(self, names: "weakref.WeakKeyDictionary"):
        self.names = names
        self.local = threading.local()
        self.handles: list = []

    def install(self) -> None:
        import torch

        mm = torch.nn.modules.module
        self.handles = [mm.register_module_forward_pre_hook(self._pre),
                        mm.register_module_forward_hook(self._post, always_call=True)]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _stack(self) -> list:
        st = getattr(self.local, "stack", None)
        if st is None:
            st = self.local.stack = []
        return st

    def _pre(self, module, args) -> None:
        from torch.autograd.profiler import record_function

        path = self.names.get(module)
        stack = self._stack()
        if path is None:
            if stack:  # a module made at run time inside a named one: its parent's path + its class
                path = f"{stack[-1][2]}/{type(module).__name__}"
            else:  # an outermost module never watched: name its tree now
                name_modules(self.names, module)
                path = self.names.get(module, type(module).__name__)
        rf = record_function(schema.OP_MODULE_PREFIX + path)
        rf.__enter__()
        stack.append((module, rf, path))

    def _post(self, module, args, output) -> None:
        stack = self._stack()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i][0] is module:
                for _, rf, _ in reversed(stack[i:]):
                    rf.__exit__(None, None, None)
                del stack[i:]
                return


def name_modules(names, model) -> None:
    """Name ``model``'s submodules by path (``layer3.0.conv2``); the root by its class. Known names stay."""
    root = type(model).__name__
    for path, m in model.named_modules():
        if m not in names:
            names[m] = path or root


class DeepWindows:
    """The deep-window recorder of one Profiler: schedule, torch.profiler, ops rows, trace files."""

    def __init__(self, prof, ops: deque, every: int, steps: int):
        self.prof = prof
        self.ops = ops
        self.every, self.steps = every, steps
        self.names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.ranges = _ModuleRanges(self.names)
        self.window: _Window | None = None
        self.done: deque = deque()  # closed windows waiting for the writer thread
        self.windows: list[dict] = []  # what deep.json lists
        self.failed: str | None = None
        self._lock = threading.Lock()

    # --- training thread ---------------------------------------------------------

    def watch(self, model) -> None:
        """Name the layers of a watched model (its paths are relative to it: no ``module.`` of DDP)."""
        name_modules(self.names, model)

    def step_ended(self, step: int) -> None:
        """Step observer: close the window after its last step; open one before a window's first step."""
        w = self.window
        if w is not None:
            w.step_ends.append((step, self.prof.last_step_end_ns))
            if step >= w.last:
                self._stop()
            return
        if self.failed is None and scheduled_start(step + 1, self.every, self.prof.warmup_steps):
            self._start(_Window(step + 1, self.steps, TRIGGER_SCHEDULE))

    def _start(self, w: _Window) -> None:
        t0 = time.perf_counter()
        # Kineto prints two lines on stderr per start/stop at its default level; the user's setting wins
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
        try:
            import torch
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU]
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                activities.append(ProfilerActivity.CUDA)
            p = profile(activities=activities, record_shapes=True, with_flops=True)
            w.start_ns = clock.now_ns()
            p.start()
            if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                info = self.prof.info  # torch adds it itself when a process group exists
                p.add_metadata_json("distributedInfo", json.dumps(
                    {"backend": None, "rank": info.rank, "world_size": info.world_size}))
            p.add_metadata_json("tbdprof", json.dumps(
                {"run_id": self.prof.run_id, "first_step": w.first, "last_step": w.last, "trigger": w.trigger}))
        except Exception as e:  # noqa: BLE001 - another profiler running, no Kineto...: no windows, training goes on
            self._fail(e)
            return
        self.ranges.install()
        w.prof = p
        w.start_call_s = time.perf_counter() - t0
        self.window = w

    def _stop(self) -> None:
        w, self.window = self.window, None
        t0 = time.perf_counter()
        self.ranges.remove()
        try:
            w.prof.stop()
        except Exception as e:  # noqa: BLE001
            self._fail(e)
            return
        w.end_ns = clock.now_ns()
        w.stop_call_s = time.perf_counter() - t0
        if w.step_ends:
            w.last = w.step_ends[-1][0]  # a window cut short by the end of the run
            self.prof.add_span(schema.MARK_DEEP_WINDOW, schema.KIND_MARK, w.start_ns, w.end_ns, step=w.first)
            self.done.append(w)

    def _fail(self, e: BaseException) -> None:
        self.failed = f"{e.__class__.__name__}: {e}"
        self.ranges.remove()
        log.warning("tbdprof: deep windows off on rank %d (%s)", self.prof.info.rank, self.failed)
        with self._lock:
            self._write_json()

    # --- writer thread (a flush), or the closing thread (force) ---------------------

    def resolve(self, force: bool = False) -> None:
        """Turn closed windows into ``ops`` rows and trace files; at the end (``force``) close an open one."""
        if force and self.window is not None:
            self._stop()
        with self._lock:
            while self.done:
                w = self.done.popleft()
                try:
                    self.windows.append(self._process(w))
                except Exception as e:  # noqa: BLE001 - one bad window must not stop the recording
                    log.warning("tbdprof: deep window %d-%d not recorded (%s: %s)", w.first, w.last, e.__class__.__name__, e)
                    self.windows.append({"first": w.first, "last": w.last, "trigger": w.trigger, "error": str(e)})
                w.prof = None
                self._write_json()

    def _process(self, w: _Window) -> dict:
        t_cpu = time.thread_time()
        rank_dir = self.prof.rank_dir
        # the raw Kineto trace, as Holistic Trace Analysis and Perfetto read it
        name = f"deep-{w.first:06d}-{w.last:06d}.pt.trace.json"
        tmp = rank_dir / f".{name}.tmp"
        trace, raw_bytes, trace_bytes, note = None, 0, 0, None
        try:
            w.prof.export_chrome_trace(str(tmp))
            raw_bytes = tmp.stat().st_size
            gz = rank_dir / f".{name}.gz.tmp"
            with open(tmp, "rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            trace_bytes = gz.stat().st_size
            if trace_bytes > TRACE_MAX_BYTES:
                gz.unlink()
                note = f"trace of {trace_bytes} bytes gzip'd not kept (over {TRACE_MAX_BYTES})"
                trace_bytes = 0
            else:
                os.replace(gz, rank_dir / (name + ".gz"))
                trace = name + ".gz"
        finally:
            tmp.unlink(missing_ok=True)
        rows = self._rows(w)
        for r in rows:
            self.ops.append(r)
        return {
            "first": w.first, "last": w.last, "trigger": w.trigger,
            "excluded": [w.first, w.last + 1],  # steps always-on figures leave out (the next carries the stop)
            "start_ns": w.start_ns, "end_ns": w.end_ns,
            "start_call_s": round(w.start_call_s, 6), "stop_call_s": round(w.stop_call_s, 6),
            "process_cpu_s": round(time.thread_time() - t_cpu, 6),
            "ops": len(rows), "trace": trace, "trace_bytes": trace_bytes, "trace_raw_bytes": raw_bytes,
            **({"note": note} if note else {}),
        }

    def _rows(self, w: _Window) -> list[tuple]:
        """One ``ops`` row per CPU event of the window, in schema column order."""
        from torch.autograd import DeviceType

        events = [e for e in w.prof.events() if e.device_type == DeviceType.CPU]
        base = w.prof.profiler.kineto_results.trace_start_ns()
        steps = [s for s, _ in w.step_ends]
        ends = [t for _, t in w.step_ends]
        prefix = schema.OP_MODULE_PREFIX
        module_of: dict[int, str | None] = {}
        by_seq: dict[tuple[int, int], str | None] = {}  # (forward thread, sequence nr) -> layer

        def module(e) -> str | None:
            key = id(e)
            if key in module_of:
                return module_of[key]
            chain, m = [], None
            cur = e
            while cur is not None:
                k = id(cur)
                if k in module_of:
                    m = module_of[k]
                    break
                chain.append(cur)
                if cur.name.startswith(prefix):
                    m = cur.name[len(prefix):]
                    break
                if cur.name.startswith("autograd::engine::evaluate_function") and cur.sequence_nr >= 0:
                    m = by_seq.get((cur.fwd_thread, cur.sequence_nr))
                    if m is not None:
                        break
                cur = cur.cpu_parent
            for c in chain:
                module_of[id(c)] = m
            return m

        rows = []
        last = steps[-1]
        for e in sorted(events, key=lambda e: e.time_range.start):
            start = base + int(round(e.time_range.start * 1000))
            end = base + int(round(e.time_range.end * 1000))
            i = bisect.bisect_left(ends, start)
            step = steps[i] if i < len(steps) else last
            m = module(e)
            if m is not None and e.sequence_nr >= 0 and not e.name.startswith("autograd::"):
                by_seq.setdefault((e.thread, e.sequence_nr), m)
            shapes = e.input_shapes
            rows.append((step, e.name, m, int(e.thread), start, end, int(round(e.self_cpu_time_total * 1000)),
                         str(shapes) if shapes and any(shapes) else None, int(e.flops) if e.flops else None))
        return rows

    def _write_json(self) -> None:
        data: dict[str, Any] = {"every": self.every, "steps": self.steps, "windows": self.windows}
        if self.failed:
            data["failed"] = self.failed
        try:
            store.write_json_atomic(self.prof.rank_dir / schema.DEEP_FILE, data)
        except OSError as e:
            log.debug("tbdprof: cannot write %s (%s)", schema.DEEP_FILE, e)

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
profiler's events become rows of table ``ops`` (tbdprof.schema) and, when
the window recorded CUDA, its kernels, copies and sets rows of table
``kernels`` (each tied to the operator that launched it by Kineto's
correlation id), the raw
Kineto trace is written gzip'd beside the rank's segments
(``deep-<first>-<last>.pt.trace.json.gz``, with ``distributedInfo`` rank and
world size, bounded by ``TRACE_MAX_BYTES``), and ``deep.json`` (beside
``rank.json``) lists the windows with their cost: steps, when, the
profiler's start/stop time on the training thread, the writer's CPU time and
bytes. Window steps (and the step after, which carries the profiler's stop in
loops driven by ``prof.loader()``) are marked with a ``mark`` span named
``deep_window``; analysis leaves them out of always-on figures.

**On demand** (``tbdprof trace RUN_DIR``, with or without a schedule): the
command writes ``deep_request.json`` into the run folder: a request id, the
window's length and its first step, which the command chose (the most
advanced rank's step from its ``status.json``, plus a margin of steps that
covers the status age and the polling delay). Every rank's progress-watch
thread, which already wakes every couple of seconds, stats that one file
(:meth:`DeepWindows.poll_request`; never the training thread) and hands a new
request to the step observer through one attribute. All ranks open the window
at that same absolute step, so they agree without a collective; a rank that
sees the request only after the step has begun records it as ``missed``
(``deep.json`` ``requests``) and the command asks again with a larger margin.
A window open at the requested step (a scheduled one) defers the on-demand
window to the step after the next, on every rank alike. ``TBDPROF_DEEP_REQUESTS=0``
turns requests off.

**On an anomaly** (on by default: ``Profiler(deep_anomaly="1.5x5")``, env
``TBDPROF_DEEP_ANOMALY``, ``--deep-anomaly`` on ``tbdprof run`` / ``tbdprof
profile``; ``off`` disables it): the step observer compares each step's
duration (step end to step end) with the median of the last
:data:`ANOMALY_BASELINE` steps outside windows (recomputed every 10 steps, so
the hot path is one comparison, and only once :data:`ANOMALY_MIN_BASELINE`
steps past warm-up are in it); ``steps`` consecutive steps slower than
``factor`` x the median open a window (trigger ``anomaly``) at the next
multiple of :data:`ANOMALY_GRID` steps (the start step rounded up, as
dynolog rounds up its iteration). The steps of a slow episode already seen
join the baseline (a lasting slowdown becomes the new normal instead of
spending the budget on itself), and the watch re-arms after ``steps`` steps
in a row under the threshold. **Budget:** at most ``TBDPROF_DEEP_ANOMALY_PER_HOUR`` (default 4)
anomaly windows, and no new one once those of the last hour wrote
:data:`ANOMALY_BYTES_PER_HOUR` (trace and ops rows); a slow episode past the
budget is counted in ``deep.json`` (``anomaly.over_budget``), not recorded.
A slowdown of a synchronous job is seen by every rank at about the same
steps (the others wait for the slow one in the collective), so ranks whose
detecting steps fall between the same two multiples open the same window;
noise at the edge of the slowdown can move one rank's detection across a
multiple, and without a collective nothing makes them agree: the windows are
per rank (each rank's ``deep.json``, with the median and the slow steps it
saw, and ``tbdprof ops`` compares ranks per window step).
"""

from __future__ import annotations

import bisect
import gzip
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import weakref
from collections import deque
from typing import Any

from . import clock, schema, store
from .errors import UserError

log = logging.getLogger("tbdprof")

ENV_DEEP_EVERY = "TBDPROF_DEEP_EVERY"  # a window every N steps (0 or unset: none on a schedule)
ENV_DEEP_STEPS = "TBDPROF_DEEP_STEPS"  # steps per window
DEFAULT_STEPS = 5
TRACE_MAX_BYTES = 32 * 2**20  # a window's gzip'd Kineto trace above this is not kept (deep.json says so)
TRIGGER_SCHEDULE = "schedule"
TRIGGER_ON_DEMAND = schema.DEEP_TRIGGER_ON_DEMAND
ENV_DEEP_REQUESTS = "TBDPROF_DEEP_REQUESTS"  # "0": ignore `tbdprof trace` requests
REQUEST_MAX_STEPS = 100  # the longest on-demand window
TRIGGER_ANOMALY = schema.DEEP_TRIGGER_ANOMALY
ENV_DEEP_ANOMALY = "TBDPROF_DEEP_ANOMALY"  # "FACTORxSTEPS", e.g. 1.5x5: a window after 5 steps 1.5x the median; "off"
DEFAULT_ANOMALY = "1.5x5"
ENV_DEEP_ANOMALY_PER_HOUR = "TBDPROF_DEEP_ANOMALY_PER_HOUR"
DEFAULT_ANOMALY_PER_HOUR = 4
ANOMALY_BYTES_PER_HOUR = 64 * 2**20  # no new anomaly window once those of the last hour wrote this much
ANOMALY_OP_ROW_BYTES = 16  # an ops row's share of its Parquet segment: 10 measured (tests/perf/deep_window_bytes.py), rounded up
ANOMALY_BASELINE = 50  # steps the running median is taken over
ANOMALY_MIN_BASELINE = 20  # steps past warm-up in the median before any anomaly window
_OFF = ("0", "off", "no", "false")
_MEDIAN_EVERY = 10
ANOMALY_GRID = 5  # an anomaly window starts at the next multiple of this after the detecting step


def anomaly_config(text: str | None = None, per_hour: str | None = None) -> tuple[float, int, int] | None:
    """(factor, steps, windows per hour) from ``FACTORxSTEPS`` (``1.5x5``; ``off``: None).

    ``text`` None or empty: ``TBDPROF_DEEP_ANOMALY``, else :data:`DEFAULT_ANOMALY`; ``per_hour`` None:
    ``TBDPROF_DEEP_ANOMALY_PER_HOUR``, else :data:`DEFAULT_ANOMALY_PER_HOUR`. ValueError for a bad setting.
    """
    text = text if text else os.environ.get(ENV_DEEP_ANOMALY, "")
    text = text.strip().lower() or DEFAULT_ANOMALY
    per_hour = os.environ.get(ENV_DEEP_ANOMALY_PER_HOUR, "") if per_hour is None else per_hour
    if text in _OFF:
        return None
    try:
        factor_s, _, steps_s = text.partition("x")
        factor, steps = float(factor_s), int(steps_s or 3)
    except ValueError:
        raise ValueError(f"wants FACTORxSTEPS (1.5x5) or off, got {text!r}") from None
    try:
        budget = int(per_hour) if per_hour.strip() else DEFAULT_ANOMALY_PER_HOUR
    except ValueError:
        raise ValueError(f"{ENV_DEEP_ANOMALY_PER_HOUR} wants a whole number, got {per_hour!r}") from None
    if factor <= 1 or steps < 1 or budget < 1:
        raise ValueError(f"{text!r}: the factor must exceed 1, the steps and the hourly budget be at least 1")
    return factor, steps, budget


def anomaly_setting(value: str | bool | None) -> tuple[float, int, int] | None:
    """``Profiler(deep_anomaly=...)``: a ``FACTORxSTEPS`` string, False (off), True or None (the environment,
    else the default). A bad argument raises ValueError; a bad environment turns the watch off, said once."""
    if value is False:
        return None
    if value is None or value is True:
        try:
            return anomaly_config(None if value is None else DEFAULT_ANOMALY)
        except ValueError as e:  # a bad setting must not stop the training: no anomaly windows, said once
            log.warning("tbdprof: %s (%s); no anomaly windows", e, ENV_DEEP_ANOMALY)
            return None
    return anomaly_config(str(value))


class _Anomaly:
    """Step-time watch of one rank: consecutive steps slower than factor x the running median."""

    __slots__ = ("factor", "steps", "per_hour", "durations", "threshold_ns", "median_ns", "since_median", "run",
                 "armed", "calm", "opened", "spent", "over_budget", "prev_end", "skip_until", "pending")

    def __init__(self, factor: float, steps: int, per_hour: int):
        self.factor, self.steps, self.per_hour = factor, steps, per_hour
        self.durations: deque = deque(maxlen=ANOMALY_BASELINE)
        self.threshold_ns = self.median_ns = 0
        self.since_median = 0
        self.run: list[int] = []  # durations of the slow steps in a row
        self.armed = True
        self.calm = 0  # steps under the threshold in a row
        self.opened: list[float] = []  # monotonic times of the anomaly windows opened
        self.spent: list[tuple[float, int]] = []  # (monotonic time, bytes) of anomaly windows written (writer thread)
        self.over_budget = 0  # slow episodes seen while the budget was spent: no window
        self.prev_end: int | None = None
        self.skip_until = -1  # window steps and the one carrying its stop: not in the baseline
        self.pending: tuple[int, dict] | None = None  # (first step, what was seen) of the window to open

    def wrote(self, nbytes: int) -> None:
        """An anomaly window's bytes, once written (writer thread: the list is replaced, never changed in place)."""
        now = time.monotonic()
        self.spent = [(t, b) for t, b in self.spent if now - t < 3600] + [(now, nbytes)]

    def step(self, step: int, end_ns: int | None, warmup: int) -> bool:
        """Note a step's end; True when a window should open at the next step."""
        prev, self.prev_end = self.prev_end, end_ns
        if prev is None or end_ns is None or step <= warmup or step <= self.skip_until:
            return False
        dur = end_ns - prev
        if self.threshold_ns and dur > self.threshold_ns:
            self.calm = 0
            if self.armed:
                self.run.append(dur)
                if len(self.run) >= self.steps:
                    self.armed = False  # once per slow episode, window or not
                    now = time.monotonic()
                    self.opened = [t for t in self.opened if now - t < 3600]
                    spent = sum(b for t, b in self.spent if now - t < 3600)
                    if len(self.opened) < self.per_hour and spent < ANOMALY_BYTES_PER_HOUR:
                        self.opened.append(now)
                        return True
                    self.over_budget += 1
                return False
            # an episode already seen: its steps join the baseline, so a lasting slowdown becomes the new normal
        else:
            self.run.clear()
            self.calm += 1
            if not self.armed and self.calm >= self.steps:
                self.armed = True  # back under the threshold for as long as a trigger takes: the next slowdown is new
        self.durations.append(dur)
        self.since_median += 1
        if len(self.durations) >= ANOMALY_MIN_BASELINE and (self.since_median >= _MEDIAN_EVERY or not self.threshold_ns):
            self.since_median = 0
            ordered = sorted(self.durations)
            self.median_ns = ordered[len(ordered) // 2]
            self.threshold_ns = int(self.factor * self.median_ns)
        return False


def requests_enabled() -> bool:
    """Does this process answer ``tbdprof trace`` requests? (yes unless ``TBDPROF_DEEP_REQUESTS=0``)"""
    return os.environ.get(ENV_DEEP_REQUESTS, "1").strip().lower() not in ("0", "false", "no", "off")


def parse_request(data: Any) -> tuple[str, int, int] | None:
    """(id, first step, steps) of a request file's contents, or None when it is not a valid request."""
    if not isinstance(data, dict):
        return None
    rid, first, steps = data.get("id"), data.get("first"), data.get("steps")
    if not isinstance(rid, str) or not rid or isinstance(first, bool) or isinstance(steps, bool):
        return None
    if not isinstance(first, int) or not isinstance(steps, int) or first < 1 or not 1 <= steps <= REQUEST_MAX_STEPS:
        return None
    return rid, first, steps


class _Request:
    __slots__ = ("id", "first", "steps", "entry", "deferred")

    def __init__(self, rid: str, first: int, steps: int, entry: dict):
        self.id, self.first, self.steps, self.entry = rid, first, steps, entry
        self.deferred = False  # another window was open at `first`: start when it has closed


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


class DeepOptionError(UserError):
    """A ``--deep-every``, ``--deep-steps`` or ``--deep-anomaly`` value that cannot be used."""


def add_options(parser) -> None:
    """``--deep-every``, ``--deep-steps`` and ``--deep-anomaly``, for the commands that start profiled ranks."""
    parser.add_argument("--deep-every", type=int, default=None, metavar="N",
                        help="a deep window (torch.profiler: operators, layers) every N steps on every rank (default: none)")
    parser.add_argument("--deep-steps", type=int, default=None, metavar="K", help=f"steps per deep window (default {DEFAULT_STEPS})")
    parser.add_argument("--deep-anomaly", default=None, metavar="FACTORxSTEPS",
                        help="a deep window when STEPS steps in a row are FACTOR x slower than the running median "
                             f"(default {DEFAULT_ANOMALY}, at most {DEFAULT_ANOMALY_PER_HOUR} windows an hour; off: none)")


def check_options(every: int | None, steps: int | None, anomaly: str | None) -> None:
    """Raise :class:`DeepOptionError` (one line, naming the option) for values :func:`config` or
    :func:`anomaly_config` refuse; options not given are not checked."""
    try:
        if every is not None or steps is not None:
            config(every or 0, steps)
    except ValueError as e:
        raise DeepOptionError(f"--deep-every/--deep-steps: {e}") from None
    try:
        if anomaly is not None:
            anomaly_config(anomaly)
    except ValueError as e:
        raise DeepOptionError(f"--deep-anomaly: {e}") from None


def scheduled_start(step: int, every: int, warmup_steps: int) -> bool:
    """Does a scheduled window start at ``step``? The same answer on every rank: no collective needed."""
    return every > 0 and step > 0 and step > warmup_steps and step % every == 0


class _Window:
    __slots__ = ("first", "last", "trigger", "prof", "start_ns", "end_ns", "start_call_s", "stop_call_s", "step_ends",
                 "request", "anomaly", "cuda")

    def __init__(self, first: int, steps: int, trigger: str, request: _Request | None = None):
        self.first, self.last, self.trigger = first, first + steps - 1, trigger
        self.request = request
        self.anomaly: dict | None = None  # what the anomaly watch saw (trigger anomaly)
        self.cuda = False  # CUDA activities recorded too: table kernels
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


def _kernel_kind(activity: str, name: str) -> str | None:
    """``kernel``, ``memcpy`` or ``memset`` for a Kineto device activity; None for the rest (GPU annotations...)."""
    a = (activity or "").lower()
    if "memcpy" in a or name.startswith("Memcpy"):
        return "memcpy"
    if "memset" in a or name.startswith("Memset"):
        return "memset"
    return "kernel" if a in ("kernel", "concurrent_kernel", "") else None


_BYTES = re.compile(r'"bytes"\s*:\s*(\d+)')


def _meta_bytes(meta: str) -> int | None:
    """The ``"bytes": N`` of a Kineto activity's metadata (memcpy, memset), or None."""
    m = _BYTES.search(meta or "")
    return int(m.group(1)) if m else None


def _trace_bytes(path) -> dict[int, int]:
    """correlation id -> bytes of the memcpy and memset events of a gzip'd Kineto trace."""
    try:
        with gzip.open(path, "rt") as f:
            events = json.load(f).get("traceEvents", [])
    except (OSError, ValueError):
        return {}
    out = {}
    for ev in events:
        args = ev.get("args") or {}
        if ev.get("cat") in ("gpu_memcpy", "gpu_memset") and isinstance(args.get("bytes"), int):
            out[args.get("correlation")] = args["bytes"]
    return out


def name_modules(names, model) -> None:
    """Name ``model``'s submodules by path (``layer3.0.conv2``); the root by its class. Known names stay."""
    root = type(model).__name__
    for path, m in model.named_modules():
        if m not in names:
            names[m] = path or root


class DeepWindows:
    """The deep-window recorder of one Profiler: schedule, torch.profiler, ops rows, trace files."""

    def __init__(self, prof, ops: deque, every: int, steps: int, anomaly: tuple[float, int, int] | None = None,
                 kernels: deque | None = None):
        self.prof = prof
        self.ops = ops
        self.kernels = kernels if kernels is not None else deque()
        self.every, self.steps = every, steps
        self.names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.ranges = _ModuleRanges(self.names)
        self.window: _Window | None = None
        self.done: deque = deque()  # closed windows waiting for the writer thread
        self.windows: list[dict] = []  # what deep.json lists
        self.failed: str | None = None
        self._lock = threading.Lock()
        self.request: _Request | None = None  # an on-demand request waiting for its first step
        self.requests: list[dict] = []  # the requests seen, for deep.json (state: pending, started, missed...)
        self._request_key = None  # (mtime, size, inode) of the request file last read
        self._request_ids: set[str] = set()
        self._dirty = False  # a request's state changed on the training thread: deep.json to rewrite
        self.anomaly = _Anomaly(*anomaly) if anomaly else None  # (factor, steps, per hour): anomaly_setting()

    # --- training thread ---------------------------------------------------------

    def watch(self, model) -> None:
        """Name the layers of a watched model (its paths are relative to it: no ``module.`` of DDP)."""
        name_modules(self.names, model)

    def step_ended(self, step: int) -> None:
        """Step observer: close the window after its last step; open one before a window's first step."""
        w = self.window
        req = self.request
        an = self.anomaly
        if an is not None:
            slow = an.step(step, self.prof.last_step_end_ns, self.prof.warmup_steps)
            if slow:
                info = {"factor": an.factor, "median_ms": round(an.median_ns / 1e6, 3),
                        "slow_ms": [round(d / 1e6, 3) for d in an.run[-an.steps:]], "at_step": step}
                an.pending = (step // ANOMALY_GRID + 1) * ANOMALY_GRID, info
        if an is not None and an.pending is not None and w is None and self.failed is None and req is None:
            first, info = an.pending
            if step + 1 >= first:
                an.pending = None
                w = _Window(step + 1, self.steps, TRIGGER_ANOMALY)
                w.anomaly = info
                self._start(w)
                return
        if w is not None:
            w.step_ends.append((step, self.prof.last_step_end_ns))
            if req is not None and step + 1 == req.first:
                req.deferred = True  # on every rank alike: the open window is at the same steps everywhere
            if step >= w.last:
                self._stop()
            return
        if self.failed is not None:
            return
        if req is not None:
            if step + 1 == req.first or req.deferred:
                self.request = None
                req.entry["state"] = "started"
                self._dirty = True
                self._start(_Window(step + 1, req.steps, TRIGGER_ON_DEMAND, req))
                return
            if step + 1 > req.first:  # seen too late: this rank cannot be at the agreed step
                self.request = None
                req.entry["state"] = "missed"
                self._dirty = True
        if self.every and scheduled_start(step + 1, self.every, self.prof.warmup_steps):
            self._start(_Window(step + 1, self.steps, TRIGGER_SCHEDULE))

    # --- the progress watch's thread: on-demand requests (`tbdprof trace`) -------------

    def poll_request(self) -> None:
        """Stat the run folder's request file; hand a new request to the step observer. Off the training thread."""
        self._write_if_dirty()
        run_dir = self.prof.run_dir
        if run_dir is None:
            return
        path = run_dir / schema.DEEP_REQUEST_FILE
        try:
            st = os.stat(path)
        except OSError:
            return
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key == self._request_key:
            return
        self._request_key = key
        try:
            parsed = parse_request(store.read_json(path))
        except (OSError, ValueError):
            return
        if parsed is None or parsed[0] in self._request_ids:
            return
        rid, first, steps = parsed
        self._request_ids.add(rid)
        entry = {"id": rid, "first": first, "steps": steps, "seen_at_step": self.prof.step_index,
                 "seen_ns": clock.now_ns(), "state": "pending"}
        if self.failed is not None:
            entry["state"] = "unavailable"
        else:
            old = self.request
            if old is not None:
                old.entry["state"] = "superseded"
            self.request = _Request(rid, first, steps, entry)
        with self._lock:
            self.requests.append(entry)
            self._write_json()

    def _start(self, w: _Window) -> None:
        t0 = time.perf_counter()
        # Kineto prints two lines on stderr per start/stop at its default level; the user's setting wins
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
        try:
            if "torch" not in sys.modules:  # a process without torch: importing it here would stall the step
                raise RuntimeError("torch is not imported in this process")
            import torch
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU]
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                activities.append(ProfilerActivity.CUDA)
                w.cuda = True
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
            if w.request is not None:
                w.request.entry["state"] = "failed"
            self._fail(e)
            return
        self.ranges.install()
        if self.anomaly is not None:
            self.anomaly.skip_until = w.last + 1  # profiled steps (and the stop's) are no baseline for step times
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
        if force and self.request is not None:
            self.request.entry["state"] = "run ended"
            self.request = None
            self._dirty = True
        self._write_if_dirty()
        with self._lock:
            while self.done:
                w = self.done.popleft()
                try:
                    self.windows.append(self._process(w))
                except Exception as e:  # noqa: BLE001 - one bad window must not stop the recording
                    log.warning("tbdprof: deep window %d-%d not recorded (%s: %s)", w.first, w.last, e.__class__.__name__, e)
                    self.windows.append({"first": w.first, "last": w.last, "trigger": w.trigger, "error": str(e),
                                         **({"request": w.request.id} if w.request is not None else {})})
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
        by_id: dict[int, tuple[str, str | None, int]] = {}
        rows = self._rows(w, by_id)
        for r in rows:
            self.ops.append(r)
        kernels = self._kernel_rows(w, by_id, rank_dir / trace if trace else None) if w.cuda else []
        for r in kernels:
            self.kernels.append(r)
        if w.trigger == TRIGGER_ANOMALY and self.anomaly is not None:
            self.anomaly.wrote(trace_bytes + (len(rows) + len(kernels)) * ANOMALY_OP_ROW_BYTES)
        return {
            "first": w.first, "last": w.last, "trigger": w.trigger,
            **({"request": w.request.id} if w.request is not None else {}),
            **({"anomaly": w.anomaly} if w.anomaly is not None else {}),
            "excluded": [w.first, w.last + 1],  # steps always-on figures leave out (the next carries the stop)
            "start_ns": w.start_ns, "end_ns": w.end_ns,
            "start_call_s": round(w.start_call_s, 6), "stop_call_s": round(w.stop_call_s, 6),
            "process_cpu_s": round(time.thread_time() - t_cpu, 6),
            "ops": len(rows), "kernels": len(kernels) if w.cuda else None, "trace": trace, "trace_bytes": trace_bytes, "trace_raw_bytes": raw_bytes,
            **({"note": note} if note else {}),
        }

    def _rows(self, w: _Window, by_id: dict | None = None) -> list[schema.OpRow]:
        """One ``ops`` row per CPU event of the window; ``by_id`` gets each event's (name, layer, step) by its id."""
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
            if by_id is not None:
                by_id[e.id] = (e.name, m, step)
            shapes = e.input_shapes
            rows.append(schema.OpRow(step, e.name, m, int(e.thread), start, end, int(round(e.self_cpu_time_total * 1000)),
                                     str(shapes) if shapes and any(shapes) else None, int(e.flops) if e.flops else None))
        return rows

    def _kernel_rows(self, w: _Window, by_id: dict, trace_path) -> list[schema.KernelRow]:
        """One ``kernels`` row per CUDA kernel, memcpy and memset of the window: Kineto's device events, each
        tied to the CPU operator that launched it by its linked correlation id (torch.profiler's own rule), in
        that operator's step (else the step its start falls in: the GPU runs behind the host)."""
        from torch.autograd import DeviceType

        steps = [s for s, _ in w.step_ends]
        ends = [t for _, t in w.step_ends]
        rows, unsized = [], []  # unsized: (row index, correlation id) of copies without bytes in their metadata
        for e in w.prof.profiler.kineto_results.events():
            if e.device_type() != DeviceType.CUDA:
                continue
            name = e.name()
            kind = _kernel_kind(e.activity_type(), name)
            if kind is None:
                continue
            start, end = e.start_ns(), e.end_ns()
            op, module, step = by_id.get(e.linked_correlation_id(), (None, None, None))
            if step is None:
                i = bisect.bisect_left(ends, start)
                step = steps[i] if i < len(steps) else steps[-1]
            nbytes = _meta_bytes(e.metadata_json()) if kind != "kernel" else None
            if kind != "kernel" and nbytes is None:
                unsized.append((len(rows), e.correlation_id()))
            rows.append(schema.KernelRow(step, name, kind, int(e.device_index()),
                                         int(e.device_resource_id()), start, end, op, module, nbytes))
        if unsized and trace_path is not None:  # bytes from the trace file's copies, by correlation id
            sized = _trace_bytes(trace_path)
            for i, corr in unsized:
                rows[i] = rows[i]._replace(bytes=sized.get(corr))
        rows.sort(key=lambda r: r.start_ns)
        return rows

    def _write_if_dirty(self) -> None:
        """Rewrite deep.json when the training thread changed a request's state since the last write."""
        if self._dirty:
            self._dirty = False
            with self._lock:
                self._write_json()

    def _write_json(self) -> None:
        data: dict[str, Any] = {"every": self.every, "steps": self.steps, "windows": self.windows,
                                "requests": self.requests}
        an = self.anomaly
        if an is not None:
            data["anomaly"] = {"factor": an.factor, "steps": an.steps, "per_hour": an.per_hour,
                               "bytes_per_hour": ANOMALY_BYTES_PER_HOUR, "baseline_steps": ANOMALY_BASELINE,
                               "min_baseline_steps": ANOMALY_MIN_BASELINE, "grid": ANOMALY_GRID,
                               "windows": sum(1 for w in self.windows if w.get("trigger") == TRIGGER_ANOMALY),
                               "over_budget": an.over_budget}
        if self.failed:
            data["failed"] = self.failed
        try:
            store.write_json_atomic(self.prof.rank_dir / schema.DEEP_FILE, data)
        except OSError as e:
            log.debug("tbdprof: cannot write %s (%s)", schema.DEEP_FILE, e)

"""Progress watch: notice when a rank's training stops moving, and say where it is.

A :class:`ProgressWatch` thread, owned by the :class:`~tbdprof.Profiler`, learns
of each step's end through the Profiler's step observers (a few attribute
writes on the training thread) and, every ``status_s`` seconds:

- rewrites the rank's ``status.json`` atomically (step, phase, collective,
  seconds since progress, the hang flag): what ``tbdprof status`` reads while
  the job runs;
- when no step has ended for ``max(hang_s, hang_factor x median step)``
  (default ``max(60 s, 20 x median)``; ``TBDPROF_HANG_S``,
  ``TBDPROF_HANG_FACTOR``), records one ``hang`` row (table ``hangs``) with
  the Python stacks of every thread of the process, read on this thread with
  :func:`sys._current_frames` (the stuck thread's help is not needed), where
  the training thread is (:func:`where`), the open phase and the collectives
  in flight (the Profiler's probes), and has it flushed at once. Training is
  not touched: when a step ends again a ``resume`` row follows.

**The stuck part is a DataLoader worker** when the training thread waits in
the DataLoader for a batch. Its stack lives in another process; this module
registers :func:`faulthandler.register` for ``SIGUSR2`` in every process
forked from a recording rank (``os.register_at_fork``: DataLoader workers are
forked on Linux), writing to a file per worker in a private temporary folder.
At a hang the watch finds the loader's iterator in the training thread's
frames, the worker that owes the awaited batch (``_task_info[_rcvd_idx]``),
sends that worker (and only it) ``SIGUSR2`` and reads the dump: faulthandler
writes from the signal handler in C, so a worker sleeping or spinning inside
``__getitem__`` answers without running Python code. A worker without the
file (started another way: spawn) is never signalled (``SIGUSR2`` would kill
it). Reading /proc or ptrace (py-spy) is not possible without privileges here.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import statistics
import sys
import sysconfig
import tempfile
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any, Callable

from . import clock, schema, store

log = logging.getLogger("tbdprof")

ENV_HANG_S = "TBDPROF_HANG_S"
ENV_HANG_FACTOR = "TBDPROF_HANG_FACTOR"
ENV_STATUS_S = "TBDPROF_STATUS_S"
DEFAULT_HANG_S = 60.0  # a hang is no step end for at least this long ...
DEFAULT_HANG_FACTOR = 20.0  # ... and for this many median steps
DEFAULT_STATUS_S = 2.0  # status.json rewritten this often (at most hang_s / 3)
WORKER_SIGNAL = signal.SIGUSR2
WORKER_DUMP_WAIT_S = 1.0
_STEPS_KEPT = 101  # step durations the median is taken over

# Collectives by the function name torch.distributed (or Horovod) runs them in.
COLLECTIVES = frozenset((
    "all_reduce", "allreduce", "barrier", "broadcast", "all_gather", "all_gather_into_tensor", "all_gather_object",
    "reduce_scatter", "reduce_scatter_tensor", "reduce", "all_to_all", "all_to_all_single", "gather", "scatter",
    "broadcast_object_list", "send", "recv", "monitored_barrier", "synchronize", "allgather", "alltoall", "join",
))
_LOADER_WAITS = ("_get_data", "_try_get_data", "_next_data")
_LIB_DIRS = tuple({os.path.realpath(p) + os.sep for p in (sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")) if p})
_RECORDER_DIR = os.path.realpath(os.path.dirname(__file__)) + os.sep


def env_float(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, ""))
        return value if value > 0 else default
    except ValueError:
        return default


def is_user_file(path: str) -> bool:
    """True for the script's own code: not the standard library, not an installed package, not the recorder."""
    if not path or path.startswith("<"):
        return False
    real = os.path.realpath(path)
    if os.path.dirname(real) + os.sep == _RECORDER_DIR or real.startswith(_RECORDER_DIR + "samplers" + os.sep):
        return False
    return not real.startswith(_LIB_DIRS) and "site-packages" not in real and "dist-packages" not in real


def _frames(frame) -> list:
    """Frames from the outermost call to ``frame`` (innermost last)."""
    out = []
    while frame is not None:
        out.append(frame)
        frame = frame.f_back
    return out[::-1]


def _loc(filename: str, lineno: int, name: str) -> str:
    return f"{os.path.basename(filename)}:{lineno} in {name}"


# Frames that wait for the other ranks under another name: (the file's path ends with, function) -> the call.
_WAIT_FRAMES = {
    ("torch/nn/parallel/distributed.py", "_distributed_broadcast_coalesced"): "broadcast (DDP's buffers)",  # in forward
    ("tbdprof/horovod.py", "_synchronize"): "synchronize",  # the recorder's wrapper of Horovod's optimizer
}


def _collective(name: str, norm: str) -> str | None:
    """The collective a frame (function ``name`` in the file of path ``norm``) waits in, or None."""
    if name in COLLECTIVES and ("torch/distributed/" in norm or "horovod/" in norm):
        return name
    return next((call for (tail, fn), call in _WAIT_FRAMES.items() if fn == name and norm.endswith(tail)), None)


def where(entries: list[tuple[str, int, str, Any]]) -> dict[str, Any]:
    """Where a thread is, from its frames ``(filename, lineno, function, frame or None)``, innermost last.

    ``place`` (one of :data:`tbdprof.schema.HANG_PLACES`), ``waiting_in`` (the
    collective or call it waits in), ``location`` (its innermost frame in the
    script's own code), ``loader`` (the DataLoader iterator it waits on).
    """
    user = next((e for e in reversed(entries) if is_user_file(e[0])), None)
    out: dict[str, Any] = {"place": "other", "waiting_in": None, "location": _loc(*user[:3]) if user else None,
                           "loader": None}
    inner_first = list(reversed(entries))
    for i, (filename, lineno, name, frame) in enumerate(inner_first):
        norm = filename.replace(os.sep, "/")
        call = _collective(name, norm)
        if call:
            for outer, _, outer_name, _ in inner_first[i + 1:]:  # Horovod's barrier waits in its synchronize: say barrier
                outer_call = _collective(outer_name, outer.replace(os.sep, "/"))
                if not outer_call:
                    break
                call = outer_call
            out.update(place="collective", waiting_in=call)
            return out
        if name in _LOADER_WAITS and norm.endswith("torch/utils/data/dataloader.py"):
            out.update(place="data_loading", waiting_in="DataLoader")
            it = frame.f_locals.get("self") if frame is not None else None
            if it is not None and getattr(it, "_workers", None):
                out["loader"] = it
            return out
        if name in ("backward", "_engine_run_backward", "run_backward") and "torch/" in norm:
            out.update(place="backward", waiting_in="backward")
            return out
        if name == "__getitem__" and is_user_file(filename):
            out.update(place="data_loading", waiting_in="__getitem__", location=_loc(filename, lineno, name))
            return out
    return out


def thread_entries(frame) -> list[tuple[str, int, str, Any]]:
    return [(f.f_code.co_filename, f.f_lineno, f.f_code.co_name, f) for f in _frames(frame)]


def traceback_entries(tb) -> list[tuple[str, int, str, Any]]:
    out = []
    while tb is not None:
        out.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno, tb.tb_frame.f_code.co_name, None))
        tb = tb.tb_next
    return out


# --- loader workers: faulthandler on SIGUSR2 in every forked child -----------------------

_worker_dir: str | None = None  # set while a watch runs in this process (the parent's value survives fork)
_worker_file = None  # in a forked child: the open dump file faulthandler writes to
_fork_hook_installed = False


def _after_fork_in_child() -> None:
    global _worker_file
    d = _worker_dir
    if d is None:
        return
    try:
        _worker_file = open(os.path.join(d, f"{os.getpid()}.txt"), "w")
        faulthandler.register(WORKER_SIGNAL, file=_worker_file, all_threads=True, chain=False)
    except (OSError, RuntimeError, ValueError):  # noqa: PERF203 - a child without it is simply never signalled
        _worker_file = None


def arm() -> str:
    """Have every process forked from now on (DataLoader workers) dump its stacks on SIGUSR2 into a file of
    this process's private folder; returns the folder. Called when a rank's recorder starts, and earlier by
    ``tbdprof profile`` (its recorder starts at the first batch, after the loader forked its workers)."""
    global _worker_dir, _fork_hook_installed
    if _worker_dir is None or not os.path.isdir(_worker_dir):
        _worker_dir = tempfile.mkdtemp(prefix=f"tbdprof-stacks-{os.getpid()}-")
        import atexit
        import shutil

        owner, folder = os.getpid(), _worker_dir
        _remove_orphans()
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(folder, ignore_errors=True))
    if not _fork_hook_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_installed = True
    return _worker_dir


def _remove_orphans() -> None:
    """Folders of ranks that were killed (SIGKILL runs no atexit): their owner's pid is gone."""
    import glob
    import shutil

    for d in glob.glob(os.path.join(tempfile.gettempdir(), "tbdprof-stacks-*-*")):
        try:
            pid = int(os.path.basename(d).split("-")[2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, IndexError, OSError):
            continue


def _worker_stack(directory: str, pid: int) -> str | None:
    """The worker's faulthandler dump (most recent call first), or None when it cannot be had."""
    path = os.path.join(directory, f"{pid}.txt")
    if not os.path.exists(path):
        return None
    before = os.path.getsize(path)
    try:
        os.kill(pid, WORKER_SIGNAL)
    except OSError:
        return None
    deadline = time.monotonic() + WORKER_DUMP_WAIT_S
    text = ""
    while time.monotonic() < deadline:
        time.sleep(0.05)
        with open(path, encoding="utf-8", errors="replace") as f:
            f.seek(before)
            text = f.read()
        if text.endswith("\n") and "File" in text:
            time.sleep(0.05)  # the other threads' stacks follow
            with open(path, encoding="utf-8", errors="replace") as f:
                f.seek(before)
                return f.read()
    return text or None


def dump_entries(dump: str) -> list[tuple[str, int, str, None]]:
    """The first thread's frames of a faulthandler dump (the current thread), innermost last."""
    import re

    blocks = dump.split("\n\n")
    block = next((x for x in blocks if x.lstrip().startswith("Current thread")), blocks[0])
    found = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', block)
    return [(f, int(n), name, None) for f, n, name in reversed(found)]


def loader_worker(it) -> tuple[int, int] | None:
    """(worker id, pid) of the worker that owes the batch a DataLoader iterator waits for."""
    try:
        info = it._task_info.get(it._rcvd_idx)
        workers = it._workers
        if info is not None and len(info) == 1:  # (worker_id,): sent, not yet received
            return info[0], workers[info[0]].pid
        alive = [(i, w.pid) for i, w in enumerate(workers) if w.is_alive()]
        return alive[0] if len(alive) == 1 else None
    except Exception:  # noqa: BLE001 - a DataLoader of another shape: no worker named
        return None


# --- the watch --------------------------------------------------------------------------


class ProgressWatch(threading.Thread):
    """One rank's progress watch; see the module docstring."""

    def __init__(self, prof, hang_s: float, hang_factor: float, status_s: float, rank_dir: Path,
                 out: deque, flush: Callable[[], None]):
        super().__init__(name="tbdprof-progress", daemon=True)
        self.prof = prof
        self.hang_s, self.hang_factor = hang_s, hang_factor
        self.status_s = min(status_s, max(0.2, hang_s / 3))
        self.path = Path(rank_dir) / schema.STATUS_FILE
        self.out = out
        self.flush = flush
        self.training_ident = threading.get_ident()  # the thread that starts the recorder trains
        self._durations: deque = deque(maxlen=_STEPS_KEPT)
        self._last_mono = time.monotonic()
        self._last_ns = clock.now_ns()
        self._last_step = -1
        self._hang: dict | None = None  # the hang in progress (no resume yet)
        self._resumed_ns: int | None = None  # the first step end after it
        self.hangs = 0
        self._halt = threading.Event()
        self._state = "running"
        self._dir = arm()
        self.tick_hooks: list[Callable[[], None]] = []  # called on this thread every tick (deep-window requests)

    # on the training thread: cheap
    def step_ended(self, step: int) -> None:
        now = time.monotonic()
        self._durations.append(now - self._last_mono)
        self._last_mono, self._last_ns, self._last_step = now, clock.now_ns(), step
        if self._hang is not None and self._resumed_ns is None:
            self._resumed_ns = self._last_ns  # the step that was stuck ended: the resume row's time

    def median_step_s(self) -> float:
        return statistics.median(self._durations) if self._durations else 0.0

    def threshold_s(self) -> float:
        return max(self.hang_s, self.hang_factor * self.median_step_s())

    def run(self) -> None:
        self.tick()
        while not self._halt.wait(self.status_s):
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 - the watch must never stop the training
                log.debug("tbdprof: progress watch tick failed: %s", e)

    def tick(self) -> None:
        since = time.monotonic() - self._last_mono
        threshold = self.threshold_s()
        self._resume_if_moved(threshold)
        if self._hang is None and since > threshold:
            self._hang = self._record_hang(threshold)
        self._write_status(since, threshold)
        for hook in self.tick_hooks:
            try:
                hook()
            except Exception as e:  # noqa: BLE001 - a hook must never stop the watch
                log.debug("tbdprof: progress tick hook failed: %s", e)

    def _resume_if_moved(self, threshold: float) -> None:
        """A step ended since the hang was recorded: it resumed."""
        hang = self._hang
        if hang is not None and self._last_ns > hang["since_ns"]:
            self._row(schema.HANG_RESUME, hang["step"], hang["since_ns"], threshold, {}, None,
                      ts_ns=self._resumed_ns or self._last_ns)
            self._hang = self._resumed_ns = None

    def _row(self, event: str, step: int, since_ns: int, threshold: float, at: dict, stacks: str | None,
             ts_ns: int | None = None) -> None:
        state = self.prof.progress_state()
        self.out.append(schema.HangRow(step, event, ts_ns or clock.now_ns(), since_ns, threshold, place=at.get("place"),
                                       waiting_in=at.get("waiting_in"), location=at.get("location"),
                                       phase=state.get("phase"), collective=state.get("collective"), stacks=stacks))

    def _record_hang(self, threshold: float) -> dict:
        step, since_ns = self._last_step + 1, self._last_ns
        frames = sys._current_frames()
        names = {t.ident: t.name for t in threading.enumerate()}
        me = threading.get_ident()
        parts, at = [], {}
        train = frames.get(self.training_ident)
        if train is not None:
            at = where(thread_entries(train))
        for ident, frame in frames.items():
            if ident == me:
                continue
            role = " (training thread)" if ident == self.training_ident else ""
            parts.append(f"Thread {names.get(ident, ident)}{role} (most recent call last):\n"
                         + "".join(traceback.format_stack(frame)))
        del frames, train
        loader = at.pop("loader", None)
        if loader is not None:
            owed = loader_worker(loader)
            dump = _worker_stack(self._dir, owed[1]) if owed else None
            if dump:
                w = where(dump_entries(dump))
                at.update(waiting_in=w["waiting_in"] or "DataLoader worker", location=w["location"],
                          worker=f"DataLoader worker {owed[0]} (pid {owed[1]})")
                parts.insert(0, f"DataLoader worker {owed[0]} (pid {owed[1]}), which owes the batch "
                                f"(faulthandler, most recent call first):\n{dump}")
            elif owed:
                at["worker"] = f"DataLoader worker {owed[0]} (pid {owed[1]}), stack not available"
        del loader
        if at.get("worker"):
            parts.insert(0, at["worker"])
        self._row(schema.HANG_HANG, step, since_ns, threshold, at, "\n".join(parts))
        self.hangs += 1
        hang = {"step": step, "since_ns": since_ns, "place": at.get("place"), "waiting_in": at.get("waiting_in"),
                "location": at.get("location"), "worker": at.get("worker"), "ts_ns": clock.now_ns()}
        log.warning("tbdprof: rank %d: no progress for %.0f s at step %d (%s%s)", self.prof.info.rank,
                    (hang["ts_ns"] - since_ns) / 1e9, step, at.get("waiting_in") or at.get("place"),
                    f", {at['location']}" if at.get("location") else "")
        try:
            self.flush()  # the job may be killed any moment now: have the event on disk
        except Exception as e:  # noqa: BLE001
            log.debug("tbdprof: flush after a hang failed: %s", e)
        return hang

    def record_error(self, exc: BaseException) -> None:
        """The training thread raised out of the recorder: where (a collective whose peer is gone...) and what."""
        entries = traceback_entries(exc.__traceback__)
        at = where(entries)
        at.pop("loader", None)
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        at["waiting_in"] = at.get("waiting_in") or (entries[-1][2] if entries else None)
        self._row(schema.HANG_ERROR, self._last_step + 1, self._last_ns, self.threshold_s(), at, text)

    def _write_status(self, since: float, threshold: float) -> None:
        state = self.prof.progress_state()
        hang = self._hang
        data = {
            "rank": self.prof.info.rank, "host": self.prof.info.host, "pid": os.getpid(), "state": self._state,
            "step": self._last_step + 1 if self.prof.step_open else self._last_step, "step_open": self.prof.step_open,
            "steps_done": self._last_step + 1, "phase": state.get("phase"), "collective": state.get("collective"),
            "last_progress_ns": self._last_ns, "since_progress_s": round(since, 3), "threshold_s": round(threshold, 3),
            "step_s": round(self.median_step_s(), 6), "status_every_s": self.status_s, "hang": hang is not None, "hang_info": hang, "hangs": self.hangs,
            "updated_ns": clock.now_ns(),
        }
        try:
            store.write_json_atomic(self.path, data)
        except OSError as e:
            log.debug("tbdprof: cannot write %s (%s)", self.path, e)

    def stop(self, status: str) -> None:
        """Stop watching; the last status says how the rank ended."""
        global _worker_dir
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5.0)
        if status == "complete":  # steps ended after the last tick (closing on a signal ends the open step: no progress)
            self._resume_if_moved(self.threshold_s())
        self._state = status
        self._write_status(time.monotonic() - self._last_mono, self.threshold_s())
        if _worker_dir == self._dir:
            _worker_dir = None
        import shutil

        shutil.rmtree(self._dir, ignore_errors=True)

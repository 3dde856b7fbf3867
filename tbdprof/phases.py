"""The forward, backward and optimizer phases of training steps, from hook events.

:class:`PhaseTracker` is the one state machine behind :func:`tbdprof.instrument`
and ``tbdprof profile``'s zero-code recorder. Its invariant: **at most one
phase is open**, so phases never overlap; opening one closes the open one at
that moment, and the caller closes the open one before it ends the step, so
phases stay inside their step.

- ``forward`` opens when the trained model's forward starts. It ends when
  the backward pass that follows starts (so the loss, functional or a loss
  module, belongs to the forward, as it does for a framework whose model
  returns its loss), or, when no backward follows, at the end of the model's
  own forward.
- ``backward`` opens when a backward pass starts (``loss.backward()``,
  ``torch.autograd.backward`` or ``torch.autograd.grad``) on the thread
  where the model's training forward returned, and closes when that pass
  returns, after all its final callbacks: DDP waits for its allreduce
  buckets in one of those, so DDP's exposed communication is part of the
  backward, as the training thread sees it. Several forward/backward pairs
  per step (gradient accumulation, ``no_sync``) give several pairs of
  phases. The passes are seen by wrapping those two functions (once for
  the process, while some recorder needs them: :func:`watch_backward`), not
  by a hook on each forward's output: registering a hook on an autograd
  node costs tens of microseconds inside a real step, where the step's
  compute has left the caches cold.
- ``optimizer`` covers ``optimizer.step()``; with a closure (Lightning,
  LBFGS) it opens when the closure returns, since forward and backward run
  inside the call.

Host-timed phases go to ``emit((name, start_ns, end_ns))``; on a GPU each phase
is a :class:`tbdprof.cuda.CudaPhase` on the current stream (device time of its
kernels), closed at the same events.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from typing import Callable

import torch

from . import clock, schema

log = logging.getLogger("tbdprof")

_PASS_FUNCTIONS = ("backward", "grad")  # of torch.autograd: every backward pass a script starts goes through one
_armed: dict[int, "PhaseTracker"] = {}  # thread -> the tracker whose model's training forward returned there
_watchers = 0  # recorders that asked for watch_backward() and did not give it back


def _pass_watched(run):
    """``run`` (``torch.autograd.backward`` or ``grad``), telling the armed tracker of the calling thread when its
    backward pass starts and returns."""

    @functools.wraps(run)
    def backward_pass(*args, **kwargs):
        tracker = _armed.get(threading.get_ident()) if _armed else None
        if tracker is None or torch._C._current_graph_task_id() != -1:  # none waits, or a pass inside a pass
            return run(*args, **kwargs)  # (reentrant checkpointing runs a backward inside the backward)
        this = tracker._backward_guarded(tracker.backward_begin)
        try:
            return run(*args, **kwargs)
        finally:
            tracker._backward_guarded(tracker.backward_end, this)

    backward_pass._tbdprof_runs = run
    return backward_pass


def watch_backward() -> Callable[[], None]:
    """Have backward passes seen by the trackers (``torch.autograd.backward`` and ``grad`` wrapped, once however
    many recorders ask); returns the function that gives this share back: the last one restores them."""
    global _watchers
    if _watchers == 0:
        for name in _PASS_FUNCTIONS:
            setattr(torch.autograd, name, _pass_watched(getattr(torch.autograd, name)))
    _watchers += 1
    given = []

    def give_back() -> None:
        global _watchers
        if given:
            return
        given.append(True)
        _watchers -= 1
        if _watchers == 0:
            for name in _PASS_FUNCTIONS:
                run = getattr(getattr(torch.autograd, name), "_tbdprof_runs", None)
                if run is not None:  # else wrapped again since, by someone else: ours stays in, passing through
                    setattr(torch.autograd, name, run)

    return give_back


def time_closure(args: tuple, kwargs: dict, after: Callable[[], None]):
    """An optimizer step pre-hook's value: ``(args, kwargs)`` of ``optimizer.step`` with its closure made to
    call ``after()`` once it returns (forward and backward ran inside it), or None when there is no closure.
    ``args[0]`` is the optimizer."""
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
    if not callable(closure):
        return None

    def timed_closure(*a, **k):
        out = closure(*a, **k)
        after()
        return out

    if "closure" in kwargs:
        return args, {**kwargs, "closure": timed_closure}
    return (args[0], timed_closure, *args[2:]), kwargs


# id(module) -> (weak reference to it, its first parameter or False): walking parameters() costs microseconds, at
# every forward, and a plain dict lookup is cheaper than a WeakKeyDictionary's (a weak reference per lookup)
_first_param: dict[int, tuple] = {}


def on_gpu(module: torch.nn.Module) -> bool:
    """True when ``module``'s (first) parameter lives on a CUDA device."""
    key = id(module)
    hit = _first_param.get(key)
    if hit is None or hit[0]() is not module:
        hit = _first_param[key] = (weakref.ref(module, lambda _, key=key: _first_param.pop(key, None)),
                                   next(module.parameters(), False))
    first = hit[1]
    return first is not False and first.is_cuda  # a Parameter keeps its identity across module.to()


class PhaseTracker:
    """One training thread's phases; see the module docstring for when each opens and closes."""

    def __init__(self, prof, emit: Callable[[tuple[str, int, int]], None]):
        self.prof = prof
        self._emit = emit
        self._name: str | None = None  # the open phase
        self._start = 0
        self._cuda = None  # its CudaPhase when timed on the device
        self._fwd_end: int | None = None  # the model's forward returned (backward may follow)
        self._bwd_pass = 0  # backward passes begun: a pass's end closes only its own phase
        self._thread: int | None = None  # where this tracker is armed (in _armed): the next backward pass is its
        self.device = False

    @property
    def open_phase(self) -> str | None:
        return self._name

    def _open(self, name: str, now: int) -> None:
        if self._name is not None:
            self.close(now)
        self._name, self._start, self._fwd_end = name, now, None
        if self.device:
            self._cuda = self.prof._device_timed(name, schema.KIND_PHASE, None, device=True)
            self._cuda.__enter__()

    def close(self, now: int | None = None) -> None:
        """Close the open phase (at ``now``, default now)."""
        if self._name is None:
            return
        now = clock.now_ns() if now is None else now
        end = self._fwd_end if self._name == schema.PHASE_FORWARD and self._fwd_end is not None else now
        if self._cuda is not None:
            self._cuda.__exit__(None, None, None)
            self._cuda = None
        else:
            self._emit((self._name, self._start, max(self._start, end)))
        self._name = None

    def forward_begin(self, module: torch.nn.Module) -> None:
        self.device = on_gpu(module)
        self._open(schema.PHASE_FORWARD, clock.now_ns())

    def forward_end(self, output) -> None:
        """The model's forward returned: a training forward's backward pass, when one starts, is this step's."""
        if self._name != schema.PHASE_FORWARD:
            return
        self._fwd_end = clock.now_ns()
        if torch.is_grad_enabled() and self._thread is None:
            self._thread = threading.get_ident()
            _armed[self._thread] = self

    def disarm(self) -> None:
        """Backward passes are not this tracker's until its model's next training forward."""
        if self._thread is not None:
            if _armed.get(self._thread) is self:
                del _armed[self._thread]
            self._thread = None

    def backward_begin(self) -> int:
        """A backward pass starts on this thread after the model's training forward; returns the pass."""
        if self._name == schema.PHASE_BACKWARD:
            return 0
        if self._name == schema.PHASE_FORWARD:
            self._fwd_end = None  # the forward lasts until the backward starts: the loss belongs to it
        self._open(schema.PHASE_BACKWARD, clock.now_ns())
        self._bwd_pass += 1
        return self._bwd_pass

    def backward_end(self, this_pass: int) -> None:
        """The pass returned (its final callbacks, DDP's among them, have run)."""
        if self._name == schema.PHASE_BACKWARD and this_pass == self._bwd_pass:
            self.close()

    def _backward_guarded(self, method, *args):
        """``method(*args)`` from inside the script's backward call: an error disarms this tracker, said once,
        and never reaches the script."""
        try:
            return method(*args)
        except Exception as e:  # noqa: BLE001 - profiling must never break the training
            self.disarm()
            log.warning("tbdprof: backward phases no longer recorded (%s: %s)", e.__class__.__name__, e)
            return 0

    def optimizer_begin(self) -> None:
        self.disarm()  # a backward pass from here on belongs to the next training forward
        self._open(schema.PHASE_OPTIMIZER, clock.now_ns())

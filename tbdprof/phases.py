"""The forward, backward and optimizer phases of training steps, from hook events.

:class:`PhaseTracker` is the one state machine behind :func:`tbdprof.instrument`
and ``tbdprof profile``'s zero-code recorder. Its invariant: **at most one
phase is open**, so phases never overlap; opening one closes the open one at
that moment, and the caller closes the open one before it ends the step, so
phases stay inside their step.

- ``forward`` opens when the trained model's forward starts. It ends when
  backward reaches the model's output (so the loss, functional or a loss
  module, belongs to the forward, as it does for a framework whose model
  returns its loss), or, when no backward follows, at the end of the model's
  own forward.
- ``backward`` opens when autograd first reaches any output tensor of the
  model (one multi-tensor hook) and closes when that backward pass has run
  all its final callbacks: DDP waits for its allreduce buckets in one of
  those, so DDP's exposed communication is part of the backward, as the
  training thread sees it. Several forward/backward pairs per step
  (gradient accumulation, ``no_sync``) give several pairs of phases.
- ``optimizer`` covers ``optimizer.step()``; with a closure (Lightning,
  LBFGS) it opens when the closure returns, since forward and backward run
  inside the call.

Host-timed phases go to ``emit(name, start_ns, end_ns)``; on a GPU each phase
is a :class:`tbdprof.cuda.CudaPhase` on the current stream (device time of its
kernels), closed at the same events.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch

from . import clock, schema

_MAX_OUTPUT_TENSORS = 32  # hooked outputs of one forward: the loss and logits are among the first


def output_tensors(obj, limit: int = _MAX_OUTPUT_TENSORS) -> list:
    """Tensors in a forward's output that autograd will reach (model-output objects, dicts, tuples)."""
    found: list = []
    stack = [obj]
    while stack and len(found) < limit:
        o = stack.pop()
        if isinstance(o, torch.Tensor):  # torch.is_tensor's own test, without its Python frame
            if o.requires_grad:
                found.append(o)
        elif isinstance(o, dict):
            stack.extend(reversed(list(o.values())))
        elif isinstance(o, (list, tuple)):
            stack.extend(reversed(o))
        elif hasattr(o, "to_tuple"):  # transformers' ModelOutput
            stack.extend(reversed(o.to_tuple()))
    return found


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


_first_param: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # module -> its first parameter (or False)


def on_gpu(module: torch.nn.Module) -> bool:
    """True when ``module``'s (first) parameter lives on a CUDA device."""
    first = _first_param.get(module)  # walking parameters() costs microseconds, at every forward
    if first is None:
        first = _first_param[module] = next(module.parameters(), False)
    return first is not False and first.is_cuda  # a Parameter keeps its identity across module.to()


class PhaseTracker:
    """One training thread's phases; see the module docstring for when each opens and closes."""

    def __init__(self, prof, emit: Callable[[str, int, int], None]):
        self.prof = prof
        self._emit = emit
        self._name: str | None = None  # the open phase
        self._start = 0
        self._cuda = None  # its CudaPhase when timed on the device
        self._fwd_end: int | None = None  # the model's forward returned (backward may follow)
        self._bwd_pass = 0  # backward passes begun: a pass's end callback closes only its own phase
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
            self._emit(self._name, self._start, max(self._start, end))
        self._name = None

    def forward_begin(self, module: torch.nn.Module) -> None:
        self.device = on_gpu(module)
        self._open(schema.PHASE_FORWARD, clock.now_ns())

    def forward_end(self, output) -> None:
        """The model's forward returned: hook its output so that the backward which follows is seen."""
        if self._name != schema.PHASE_FORWARD:
            return
        self._fwd_end = clock.now_ns()
        tensors = output_tensors(output)
        if not tensors or not torch.is_grad_enabled():
            return
        if len(tensors) == 1:  # the common case, at half the cost of a multi-tensor hook
            node = tensors[0].grad_fn  # a pre-hook on the node that made it: no Python handle object per forward
            if node is not None:
                node.register_prehook(self._backward_reached)
            else:
                tensors[0].register_hook(self._backward_reached)
        else:
            torch.autograd.graph.register_multi_grad_hook(tensors, self._backward_reached, mode="any")

    def _backward_reached(self, _grad) -> None:
        if self._name == schema.PHASE_BACKWARD:
            return
        if self._name == schema.PHASE_FORWARD:
            self._fwd_end = None  # the forward lasts until backward reaches it: the loss belongs to it
        self._open(schema.PHASE_BACKWARD, clock.now_ns())
        self._bwd_pass += 1
        this_pass = self._bwd_pass
        engine = torch.autograd.Variable._execution_engine
        # Final callbacks run in the order queued, and a callback may queue more: queueing ours
        # from the first one puts it after DDP's, which waits for the gradient allreduce.
        engine.queue_callback(lambda: engine.queue_callback(lambda: self._backward_done(this_pass)))

    def _backward_done(self, this_pass: int) -> None:
        if self._name == schema.PHASE_BACKWARD and this_pass == self._bwd_pass:
            self.close()

    def optimizer_begin(self) -> None:
        self._open(schema.PHASE_OPTIMIZER, clock.now_ns())

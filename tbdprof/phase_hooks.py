"""Phase spans from hooks, for loops you do not want to edit.

``instrument(prof, model, optimizer)`` records, through PyTorch's own hooks:

- ``forward``: the top-level module's forward (pre and post forward hooks);
- ``backward``: from the moment autograd reaches the model's output (a tensor
  hook on it) until the optimizer's step starts;
- ``optimizer``: ``optimizer.step`` (step pre and post hooks), whose end also
  closes the training step when nothing else does.

It also calls :meth:`Profiler.watch`, so the memory breakdown and DDP
communication spans come with it.

When the model is on a GPU the phase boundaries are CUDA events on the
current stream (:mod:`tbdprof.cuda`), so each phase is the device's time for
its kernels, not the host's time to launch them.
"""

from __future__ import annotations

import torch

from . import clock, schema
from .profiler import Profiler, _batch_items


def _first_tensor(obj):
    if torch.is_tensor(obj):
        return obj
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for o in obj:
            t = _first_tensor(o)
            if t is not None:
                return t
    logits = getattr(obj, "logits", None)  # model-output objects (e.g. transformers)
    return logits if torch.is_tensor(logits) else None


def on_gpu(module: torch.nn.Module) -> bool:
    """True when ``module``'s (first) parameter lives on a CUDA device."""
    p = next(module.parameters(), None)
    return p is not None and p.is_cuda


class Instrumentation:
    """The hooks installed by :func:`instrument`; ``remove()`` takes them out.

    A phase boundary is a *mark*: host nanoseconds, or on the GPU a CUDA
    event (with its anchor) that the writer thread resolves into a span.
    """

    def __init__(self, prof: Profiler, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.prof = prof
        self._device = False  # the last forward ran on a GPU: marks are CUDA events
        self._fwd_start = 0
        self._bwd_start = None
        self._opt_start = 0
        inner = getattr(model, "module", model)
        self._handles = [
            inner.register_forward_pre_hook(self._fwd_pre),
            inner.register_forward_hook(self._fwd_post),
            optimizer.register_step_pre_hook(self._opt_pre),
            optimizer.register_step_post_hook(self._opt_post),
        ]
        prof.watch(model, optimizer)

    def _mark(self):
        """Now: host nanoseconds, or a CUDA event on the current stream when the model is on a GPU."""
        return self.prof._cuda_pending().begin() if self._device else clock.now_ns()

    def _span(self, name: str, start) -> None:
        """The phase ``name`` from mark ``start`` to now."""
        if self._device:
            pending = self.prof._cuda_pending()
            pending.add(self.prof.step_index, name, schema.KIND_PHASE, None, start, pending.record())
        else:
            self.prof._record_span(self.prof.step_index, name, schema.KIND_PHASE, start, clock.now_ns(), None, None)

    def _fwd_pre(self, module, args):
        if self.prof._step_start is None:
            self.prof.begin_step(_batch_items(args))
        self._device = on_gpu(module)
        self._fwd_start = self._mark()

    def _fwd_post(self, module, args, output):
        self._span(schema.PHASE_FORWARD, self._fwd_start)
        out = _first_tensor(output)
        if out is not None and out.requires_grad:
            out.register_hook(self._bwd_begin)

    def _bwd_begin(self, grad):
        if self._bwd_start is None:
            self._bwd_start = self._mark()

    def _opt_pre(self, optimizer, args, kwargs):
        if self._bwd_start is not None:
            self._span(schema.PHASE_BACKWARD, self._bwd_start)
            self._bwd_start = None
        self._opt_start = self._mark()

    def _opt_post(self, optimizer, args, kwargs):
        self._span(schema.PHASE_OPTIMIZER, self._opt_start)
        self.prof.end_step()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def instrument(prof: Profiler, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Instrumentation:
    """Record forward, backward and optimizer phases of ``model``/``optimizer`` into ``prof``."""
    return Instrumentation(prof, model, optimizer)

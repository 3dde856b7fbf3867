"""Phase spans from hooks, for loops you do not want to edit.

``instrument(prof, model, optimizer)`` records, through PyTorch's own hooks:

- ``forward``: the top-level module's forward (pre and post forward hooks);
- ``backward``: from the moment autograd reaches the model's output (a tensor
  hook on it) until the optimizer's step starts;
- ``optimizer``: ``optimizer.step`` (step pre and post hooks), whose end also
  closes the training step when nothing else does.

It also calls :meth:`Profiler.watch`, so the memory breakdown and DDP
communication spans come with it.

When the model is on a GPU the phases are timed with CUDA events on the
current stream (:mod:`tbdprof.cuda`), so each phase is the device's time for
its kernels, not the host's time to launch them.
"""

from __future__ import annotations

import torch

from . import schema
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

    Each phase is the Profiler's own timed span (:meth:`Profiler.cuda_phase`'s),
    opened in one hook and closed in a later one: host time, or CUDA events on
    the current stream when the model's last forward ran on a GPU.
    """

    def __init__(self, prof: Profiler, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.prof = prof
        self._device = False  # the last forward ran on a GPU
        self._fwd = self._bwd = self._opt = None  # the open phases
        inner = getattr(model, "module", model)
        self._handles = [
            inner.register_forward_pre_hook(self._fwd_pre),
            inner.register_forward_hook(self._fwd_post),
            optimizer.register_step_pre_hook(self._opt_pre),
            optimizer.register_step_post_hook(self._opt_post),
        ]
        prof.watch(model, optimizer)

    def _open(self, name: str):
        """Start the phase ``name`` now; :meth:`_close` ends it."""
        phase = self.prof._device_timed(name, schema.KIND_PHASE, None, device=self._device)
        phase.__enter__()
        return phase

    @staticmethod
    def _close(phase) -> None:
        if phase is not None:
            phase.__exit__(None, None, None)

    def _fwd_pre(self, module, args):
        if self.prof._step_start is None:
            self.prof.begin_step(_batch_items(args))
        self._device = on_gpu(module)
        self._fwd = self._open(schema.PHASE_FORWARD)

    def _fwd_post(self, module, args, output):
        self._close(self._fwd)
        self._fwd = None
        out = _first_tensor(output)
        if out is not None and out.requires_grad:
            out.register_hook(self._bwd_begin)

    def _bwd_begin(self, grad):
        if self._bwd is None:
            self._bwd = self._open(schema.PHASE_BACKWARD)

    def _opt_pre(self, optimizer, args, kwargs):
        self._close(self._bwd)
        self._bwd = None
        self._opt = self._open(schema.PHASE_OPTIMIZER)

    def _opt_post(self, optimizer, args, kwargs):
        self._close_optimizer()
        self.prof.end_step()

    def _close_optimizer(self) -> None:
        self._close(self._opt)
        self._opt = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def instrument(prof: Profiler, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Instrumentation:
    """Record forward, backward and optimizer phases of ``model``/``optimizer`` into ``prof``."""
    return Instrumentation(prof, model, optimizer)

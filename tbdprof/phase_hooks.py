"""Phase spans from hooks, for loops you do not want to edit.

``instrument(prof, model, optimizer)`` records, through PyTorch's own hooks
on ``model`` and ``optimizer``, the phases of :class:`tbdprof.phases.PhaseTracker`
(the same state machine ``tbdprof profile`` uses):

- ``forward``: the model's forward, until the backward pass that follows
  starts (the loss belongs to it);
- ``backward``: until that backward pass has finished (DDP's allreduce wait included);
- ``optimizer``: ``optimizer.step`` (after its closure, when it is given one).

A forward opens the step when none is open (``prof.loader()`` opens it at
the fetch); the optimizer's end closes it. Forwards without gradients
(evaluation) are not phases. It also calls :meth:`Profiler.watch`, so the
memory breakdown and DDP communication spans come with it.

When the model is on a GPU the phases are timed with CUDA events on the
current stream (:mod:`tbdprof.cuda`), so each phase is the device's time for
its kernels, not the host's time to launch them.
"""

from __future__ import annotations

import torch

from . import schema
from .hooks import CopySafeHook
from .phases import PhaseTracker, time_closure, watch_backward
from .profiler import Profiler, _batch_items


class Instrumentation:
    """The hooks installed by :func:`instrument`; ``remove()`` takes them out."""

    def __init__(self, prof: Profiler, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.prof = prof
        self.phases = PhaseTracker(prof, lambda span: prof.add_span(span[0], schema.KIND_PHASE, span[1], span[2]))
        self._training = False  # the model's forward in progress has gradients enabled
        inner = getattr(model, "module", model)
        self._handles = [
            inner.register_forward_pre_hook(CopySafeHook(self._fwd_pre)),  # deepcopy(model) copies no profiler
            inner.register_forward_hook(CopySafeHook(self._fwd_post)),
            optimizer.register_step_pre_hook(self._opt_pre),
            optimizer.register_step_post_hook(self._opt_post),
        ]
        self._give_back = watch_backward()
        prof.add_progress_probe(lambda: {"phase": self.phases.open_phase})
        prof.watch(model, optimizer)

    def _fwd_pre(self, module, args):
        self._training = torch.is_grad_enabled() and torch._C._current_graph_task_id() == -1
        if not self._training:
            return
        if not self.prof.step_open:
            self.prof.begin_step(_batch_items(args))
        self.phases.forward_begin(module)

    def _fwd_post(self, module, args, output):
        if self._training:
            self.phases.forward_end(output)

    def _opt_pre(self, optimizer, args, kwargs):
        timed = time_closure(args, kwargs, self.phases.optimizer_begin)
        if timed is None:
            self.phases.optimizer_begin()
        return timed

    def _opt_post(self, optimizer, args, kwargs):
        self.phases.close()
        self.prof.end_step()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self.phases.disarm()
        self._give_back()


def instrument(prof: Profiler, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Instrumentation:
    """Record forward, backward and optimizer phases of ``model``/``optimizer`` into ``prof``."""
    return Instrumentation(prof, model, optimizer)

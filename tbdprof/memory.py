"""The TBD memory breakdown of a training step: weights, gradients, optimizer
state, activations (feature maps saved for backward) and the rest.

Activations are counted with ``torch.autograd.graph.saved_tensors_hooks``
while the model's forward runs: every tensor autograd saves for backward is
seen once, its storage counted once, parameters excluded (they are weights).
This works on CPU and CUDA alike. ``total`` is the process RSS on CPU and the
caching allocator's allocated bytes on CUDA; ``other`` is what the four
categories do not explain (allocator slack, DDP buckets, the interpreter...).
"""

from __future__ import annotations

import time

import torch

from . import clock
from .hooks import CopySafeHook
from .schema import MemoryRow

_ns = time.perf_counter_ns


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t``: the local shard of a DTensor (FSDP2's parameters), else ``t``."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def _nbytes(t: torch.Tensor) -> int:
    t = _local(t)
    return t.numel() * t.element_size()


def _storage_ptr(t: torch.Tensor) -> int | None:
    try:
        return _local(t).untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # a freed or unsharded-on-demand storage
        return None


def _state_tensors(optimizer: torch.optim.Optimizer):
    for state in optimizer.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                yield v


class MemoryTracker:
    """Counts the breakdown for one model and its optimizers, on the steps ``measure(step)`` picks.

    With several optimizers (a GAN's two halves), gradients are the most
    present at any optimizer step of the measured step, and optimizer state
    is the sum over all of them.

    Counting saved tensors costs a Python call per tensor (about 3 us each,
    some 5% of a 10 ms CPU step for a small ResNet), so the profiler measures
    a sample of steps, not all of them.
    """

    def __init__(self, model: torch.nn.Module, optimizers: "list[torch.optim.Optimizer]", rss_reader,
                 current_step=lambda: 0, measure=lambda step: True):
        self.model = model
        self._current_step = current_step
        self._measure = measure
        self.measured_step: int | None = None
        self.optimizers = list(optimizers)
        self._rss = rss_reader
        params = [p for p in model.parameters()]
        self.params = params
        self.weights = sum(_nbytes(p) for p in params)
        self._param_ptrs = {_storage_ptr(p) for p in params} - {None}
        self.device = params[0].device if params else torch.device("cpu")
        self._seen: set[int] = set()
        self.activations = 0
        self._fwd_total = 0
        self._hooks_ctx = None
        self._grads: int | None = None
        self._opt_state: int | None = None
        # the profiler's own cost (tbdprof.cost): hook bodies timed directly, saved tensors counted
        self.timed_ns = 0
        self.row_ns = 0  # the part of timed_ns taking rows, at step ends (inside the zero-code hooks' own time)
        self.packed = 0
        self.measured_steps = 0
        # The hooks are in only for the steps measured (arm, arm_optimizers): the other steps run without them.
        self._model_hooks: list = []
        self._optimizer_hooks: list = []
        self.armed = self.optimizers_armed = False
        self.arm(True)
        self.arm_optimizers(True)

    def arm(self, on: bool) -> None:
        """Put the model's forward hooks in (``on``) or take them out (then its forwards take PyTorch's
        hook-free path, as unprofiled). Called between steps, for the next one: a forward's pre-hooks are read
        as the call begins."""
        if on and not self.armed:
            self._model_hooks = [
                self.model.register_forward_pre_hook(CopySafeHook(self._fwd_pre)),  # deepcopy(model) copies no tracker
                self.model.register_forward_hook(CopySafeHook(self._fwd_post)),
            ]
        elif not on and self.armed and self._hooks_ctx is None:  # never inside a forward it is counting
            for h in self._model_hooks:
                h.remove()
            self._model_hooks = []
        self.armed = bool(self._model_hooks)

    def arm_optimizers(self, on: bool) -> None:
        """Put the optimizers' step hooks in (``on``) or take them out. Gradients are measured as an optimizer
        starts (a loop may zero them right after), optimizer state as it ends (it is created lazily). Called as
        a step begins, never from inside an optimizer's hooks (a step may end in one, while PyTorch iterates
        over them)."""
        if on and not self.optimizers_armed:
            for optimizer in self.optimizers:
                self._optimizer_hooks += [optimizer.register_step_pre_hook(self._opt_pre),
                                          optimizer.register_step_post_hook(self._opt_post)]
        elif not on and self.optimizers_armed:
            for h in self._optimizer_hooks:
                h.remove()
            self._optimizer_hooks = []
        self.optimizers_armed = on

    # --- forward: count what autograd saves --------------------------------

    def _pack(self, t: torch.Tensor):
        self.packed += 1
        ptr = _storage_ptr(t)
        if ptr and ptr not in self._seen and ptr not in self._param_ptrs:
            self._seen.add(ptr)
            self.activations += t.untyped_storage().nbytes()
        return t

    @staticmethod
    def _unpack(t):
        return t

    def saved_tensor_cost_s(self) -> float:
        """Calibrated seconds per saved tensor under this tracker's hooks (its counters are left as they were)."""
        from .cost import saved_tensor_cost_s

        state = (set(self._seen), self.activations, self.packed)
        try:
            return saved_tensor_cost_s(self._pack)
        finally:
            self._seen, self.activations, self.packed = state

    def _fwd_pre(self, module, args):
        t0 = _ns()
        step = self._current_step()
        if self._hooks_ctx is None and torch.is_grad_enabled() and self._measure(step):
            self.measured_step = step
            self.measured_steps += 1
            self._seen.clear()
            self.activations = 0
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            self._hooks_ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
            self._hooks_ctx.__enter__()
        self.timed_ns += _ns() - t0

    def _fwd_post(self, module, args, output):
        if self._hooks_ctx is not None:
            t0 = _ns()
            self._hooks_ctx.__exit__(None, None, None)
            self._hooks_ctx = None
            self._seen.clear()
            self._fwd_total = self._total()
            self.timed_ns += _ns() - t0

    def _total(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return int(self._rss())

    def _peak(self, end_total: int) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return max(self._fwd_total, end_total)

    def _grad_bytes(self) -> int:
        return sum(_nbytes(p.grad) for p in self.params if p.grad is not None)

    def _opt_state_bytes(self) -> int:
        return sum(_nbytes(t) for optimizer in self.optimizers for t in _state_tensors(optimizer))

    def _opt_pre(self, optimizer, args, kwargs):
        if self.measured_step is not None:
            t0 = _ns()
            self._grads = max(self._grads or 0, self._grad_bytes())
            self.timed_ns += _ns() - t0

    def _opt_post(self, optimizer, args, kwargs):
        if self.measured_step is not None:
            t0 = _ns()
            self._opt_state = self._opt_state_bytes()
            self.timed_ns += _ns() - t0

    # --- at the end of a step -----------------------------------------------

    def take_row(self, step: int) -> MemoryRow | None:
        """The memory table row for ``step`` if it was measured, else None."""
        if self.measured_step != step:
            return None
        t0 = _ns()
        self.measured_step = None
        row = self.row(step)
        dt = _ns() - t0
        self.timed_ns += dt
        self.row_ns += dt
        return row

    def row(self, step: int) -> MemoryRow:
        """The memory table row for ``step``."""
        grads = self._grads if self._grads is not None else self._grad_bytes()
        opt = self._opt_state if self._opt_state is not None else self._opt_state_bytes()
        self._grads = None
        end_total = self._total()
        total = self._fwd_total or end_total
        known = self.weights + grads + opt + self.activations
        return MemoryRow(step, clock.now_ns(), str(self.device), weights=self.weights, gradients=grads,
                         optimizer_state=opt, activations=self.activations, other=max(0, total - known),
                         total=total, peak=self._peak(end_total))

    def remove(self) -> None:
        for h in self._model_hooks + self._optimizer_hooks:
            h.remove()
        self._model_hooks, self._optimizer_hooks = [], []
        self.armed = self.optimizers_armed = False
        if self._hooks_ctx is not None:
            self._hooks_ctx.__exit__(None, None, None)
            self._hooks_ctx = None

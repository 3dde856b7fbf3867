"""Training steps of a script seen only through PyTorch's global hooks (``tbdprof profile``).

:class:`AutoSteps` turns the events of :mod:`tbdprof.autoprofile` (a batch
fetched, a forward of a trained module with or without gradients, an
optimizer step) into the Profiler's steps, through its public step API.

- **A step is an optimizer step after training work**: a forward of a trained
  module with gradients enabled since the last step. An optimizer step
  without one (Horovod's ``broadcast_optimizer_state`` stepping on zeroed
  gradients before training) is not a step, and a step still open when the
  script ends (a batch fetched and never trained) is discarded. The step
  closes when the first optimizer that did such a step (the *step
  optimizer*) returns; a second optimizer's call (a GAN's) is a phase.
- **Steps are contiguous**: each begins where the previous one ended, so the
  script's own work between optimizer steps (logging, a ``time.sleep``,
  checkpoints) is the step's time outside its phases, as wall-clock
  throughput counts it. The first step begins at the first training event.
  A step whose optimizer step a ``GradScaler`` skipped (inf gradients)
  ends at ``scaler.update()``.
- **Evaluation passes are not training**: forwards of a trained module
  without gradients between steps are an ``eval`` mark (step -1) and the next
  step begins when the pass ends; the batches fetched for it are dropped.
- **Samples are counted when trained, not when fetched**: fetched batches
  wait in a queue and the first training forward after a fetch takes the
  oldest one (one per forward: a model called twice in a step takes one
  batch). A probe ``next(iter(loader))`` or a framework's look-ahead fetch
  leaves its batch in the queue, never counted. Without any DataLoader the
  forward's own input is counted.

Host phases and data waits of the open step are held here and handed to the
Profiler when the step closes, so a step that turns out not to be one leaves
nothing behind.
"""

from __future__ import annotations

from collections import deque

from . import clock, schema
from .phases import PhaseTracker, time_closure
from .profiler import Profiler, _batch_items

_FETCH_QUEUE = 64  # fetched, untrained batches kept for counting (a loader used for something else)


class AutoSteps:
    """The step state of the zero-code recorder: one object, explicit transitions (the public methods)."""

    def __init__(self, prof: Profiler):
        self.prof = prof
        self._spans: list[tuple[str, int, int]] = []  # host phases of the open step (changed in place only)
        self.phases = PhaseTracker(prof, self._spans.append)  # (name, start, end) rows, no Python frame of ours
        self.forward_end = self.phases.forward_end  # the model's forward returned: the phases' own (no step state)
        self._fetched: deque = deque(maxlen=_FETCH_QUEUE)  # (fetch start, items)
        self._loader_seen = False
        self._trained = False  # a training forward in the open step
        self._eval: list[int] | None = None  # [start, end] of an evaluation pass since the last step
        self._step_optimizer = None
        self._live = None  # the optimizer whose phase is open
        self.model = None  # the trained module of the last training forward
        self.steps_ignored = 0  # optimizer steps with no training work before them
        self.steps_skipped = 0  # steps whose optimizer step a GradScaler skipped
        self.spans_recorded = 0  # spans handed to the Profiler from inside the hooks (steps, phases, eval marks)

    def _open(self, now: int) -> None:
        """Make sure a step is open for an event at ``now``."""
        prof = self.prof
        if prof.step_open:
            if self._eval is None or self._trained:
                return
            prof.discard_step()  # the open step held only an evaluation pass (and its fetches): begin again after it
        last_end = prof.last_step_end_ns
        start = now if last_end is None else last_end
        if self._eval is not None:
            self._mark_eval()
            self.spans_recorded += 1
            start = max(start, self._eval[1])
            self._spans[:] = [s for s in self._spans if s[1] >= start]
            # the pass's own batches came after the last step; a look-ahead batch fetched during it stays
            self._fetched = deque((f for f in self._fetched if f[0] >= start or (last_end is not None and f[0] < last_end)),
                                  maxlen=_FETCH_QUEUE)
            self._eval = None
        prof.begin_step(start_ns=min(start, now))

    def _mark_eval(self) -> None:
        self.prof.add_span(schema.MARK_EVAL, schema.KIND_MARK, self._eval[0], self._eval[1], step=-1)

    # --- events ---------------------------------------------------------------------

    def fetched(self, start: int, end: int, batch) -> None:
        """A batch came out of a DataLoader (with gradients enabled)."""
        self._open(start)
        if self.phases.open_phase is not None:
            self.phases.close(start)
        self._loader_seen = True
        self._spans.append((schema.PHASE_DATA, start, end))
        self._fetched.append((start, _batch_items(batch)))

    def forward_begin(self, module, args) -> None:
        """A forward of a trained module with gradients enabled (the model, at the top)."""
        self._open(clock.now_ns())
        if self._fetched:
            items = self._fetched.popleft()[1]
        else:
            items = None if self._loader_seen else _batch_items(args)
        self.prof.add_items(items)
        self._trained = True
        self.model = module
        self.phases.forward_begin(module)

    def eval_forward(self, start: int, end: int) -> None:
        """A forward of a trained module without gradients: part of an evaluation pass, unless inside a step's training."""
        if self._trained:
            return
        self._eval = [start, end] if self._eval is None else [self._eval[0], end]

    def optimizer_begin(self, optimizer, args: tuple, kwargs: dict):
        """``optimizer.step`` starts; returns the (args, kwargs) to call it with when a closure must be timed."""
        timed = time_closure(args, kwargs, lambda: self._begin_optimizer(optimizer)) if len(args) > 1 or kwargs else None
        if timed is None:
            self._begin_optimizer(optimizer)
        return timed

    def _begin_optimizer(self, optimizer) -> None:
        if not self._trained:
            return
        if self._step_optimizer is None:
            self._step_optimizer = optimizer
        self._live = optimizer
        self.phases.optimizer_begin()

    def optimizer_end(self, optimizer) -> None:
        """``optimizer.step`` returned."""
        if self._live is not optimizer:
            if not self._trained:
                self.steps_ignored += 1
            return
        self._live = None
        now = clock.now_ns()
        self.phases.close(now)
        if optimizer is self._step_optimizer:
            self._end_step(now)

    def iteration_end(self) -> None:
        """The script says an iteration is over (``GradScaler.update()``): a step whose optimizer step the
        scaler skipped (inf or NaN gradients) ends here, instead of merging with the next."""
        if self._trained and self._live is None:
            now = clock.now_ns()
            self.phases.close(now)
            self.steps_skipped += 1
            self._end_step(now)

    def _end_step(self, now: int) -> None:
        prof = self.prof
        prof.add_phases(self._spans)
        self.spans_recorded += len(self._spans) + 1  # and the step's own row
        self._spans.clear()
        self._trained = False
        prof.end_step(end_ns=now)

    def close(self) -> None:
        """At the end of the script: a step no optimizer closed is not a step."""
        self.phases.close()
        self._spans.clear()
        self.prof.discard_step()
        if self._eval is not None:
            self._mark_eval()
            self._eval = None

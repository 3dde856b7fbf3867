"""Automatic recording of unmodified training scripts, for ``tbdprof profile -- COMMAND``.

``tbdprof profile`` puts a folder holding a ``sitecustomize.py`` first on its
children's PYTHONPATH. When a child imports torch, that hook calls
:func:`install`, which, in a process :func:`classify` calls a *rank*, installs
PyTorch's global hooks:

- DataLoader iteration, module forwards and optimizer steps, filtered here:
  the trained model is the outermost module holding parameters some
  optimizer updates (:mod:`tbdprof.trained`), so loss and metric modules,
  EMA copies and recomputation inside backward are never taken for it;
- the step state of :class:`tbdprof.autostep.AutoSteps` (what a step is,
  evaluation passes, samples trained) and its phases
  (:class:`tbdprof.phases.PhaseTracker`, shared with ``instrument()``);
- at the first training forward, :meth:`Profiler.watch` on the trained model
  with the optimizers that update it (memory breakdown, DDP or Horovod
  communication spans).

The recorder starts at the first training event (a batch fetched or a
forward of the trained model, with gradients enabled). A script that starts
its own :class:`~tbdprof.Profiler` wins: this module registers
:func:`yield_to` with :func:`tbdprof.profiler.on_start`, which takes these
hooks out and discards what they had recorded. What the recording saw and
could not see is noted in its coverage (``rank.json``).

Every hook is guarded: an error inside tbdprof is logged once, the hooks are
taken out, and the training goes on.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import sys
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Mapping

from . import clock, profiler, schema
from .hooks import CopySafeHook
from .profiler import Profiler, _ensure_log_handler, log
from .trained import TrainedParams

_ns = time.perf_counter_ns
TRAINED = TrainedParams()  # every optimizer's parameters in this process: what "the trained model" means

ENV_AUTO = "TBDPROF_AUTO"  # "1": record this process tree automatically
ENV_SAMPLE_HZ = "TBDPROF_SAMPLE_HZ"
ENV_FLUSH_S = "TBDPROF_FLUSH_S"
ENV_RANK_PID = "TBDPROF_RANK_PID"  # set by a recording rank; its subprocesses inherit it

# Programs whose own process is a launcher (agent or driver), never a rank:
# matched against the script path (or ``-m`` module) of the process.
LAUNCHER_PROGRAMS = ("torchrun", "torch.distributed.run", "torch.distributed.launch", "horovodrun", "horovod.runner.launch")


@dataclass(frozen=True)
class Facts:
    """What the rule table looks at in a process."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    pid: int
    mp_child: bool  # multiprocessing.parent_process() is set
    joined_group: bool = False  # this process (not a parent it was forked from) initialised a process group


_joined_pid = -1  # the process that called torch.distributed.init_process_group


def facts() -> Facts:
    """The facts of this process."""
    mp = sys.modules.get("multiprocessing.process")
    pid = os.getpid()
    return Facts(tuple(sys.argv), os.environ, pid, mp is not None and mp.parent_process() is not None, _joined_pid == pid)


def _mp_started(argv: tuple[str, ...]) -> bool:
    # A spawned (or forkserver) child runs its main module, and imports torch,
    # before parent_process() is set; its command line says what it is.
    return any(a == "--multiprocessing-fork" or "multiprocessing.forkserver" in a for a in argv)


def _program(argv: tuple[str, ...]) -> str:
    """``torch.distributed.run`` for ``-m torch.distributed.run`` or ``.../torch/distributed/run.py``."""
    first = argv[1] if argv[:1] == ("-m",) and len(argv) > 1 else argv[0] if argv else ""
    return first.removesuffix(".py").replace(os.sep, ".")


def _is_launcher(argv: tuple[str, ...]) -> bool:
    prog = _program(argv)
    return any(prog == p or prog.endswith("." + p) for p in LAUNCHER_PROGRAMS)


@dataclass(frozen=True)
class Rule:
    role: str
    why: str
    test: Callable[[Facts], bool]


# Ordered; the first rule that matches names the process's role. Only "rank" records.
RULES: tuple[Rule, ...] = (
    Rule("off", f"not started by tbdprof profile ({ENV_AUTO} unset)", lambda f: f.env.get(ENV_AUTO) != "1"),
    Rule("rank", "a multiprocessing child that joined a process group (torch.multiprocessing.spawn)",
         lambda f: f.joined_group and (f.mp_child or _mp_started(f.argv)) and f.env.get(ENV_RANK_PID) is None),
    Rule("worker", "a multiprocessing child (DataLoader worker, pool process)", lambda f: f.mp_child or _mp_started(f.argv)),
    Rule("rank", "a process a framework's launcher started that joined a process group (Lightning's ddp)",
         lambda f: f.joined_group),
    Rule("launcher", "a launcher's agent or driver (torchrun, horovodrun)", lambda f: _is_launcher(f.argv)),
    Rule("helper", "a subprocess of a recording rank", lambda f: f.env.get(ENV_RANK_PID, str(f.pid)) != str(f.pid)),
    Rule("rank", "a training process", lambda f: True),
)


def classify(f: Facts) -> Rule:
    """The first rule of :data:`RULES` that matches ``f``."""
    return next(r for r in RULES if r.test(f))


def _guarded(method):
    """Run a hook; an exception inside it turns the automatic recording off, never reaches the script."""

    @functools.wraps(method)
    def hook(self, *args):
        if self.off:
            return None
        t0 = _ns()
        try:
            return method(self, *args)  # None but for a closure to time (a pre-hook's value replaces the call's arguments)
        except Exception as e:  # noqa: BLE001 - profiling must never break the training
            self.fail(e)
        finally:
            self.hook_ns += _ns() - t0  # the profiler's own cost (tbdprof.cost): these run a few times per step
        return None

    return hook


class AutoRecorder:
    """The global hooks of one process and the :class:`~tbdprof.Profiler` they feed.

    The hooks only filter and forward: which module is the trained model
    (:data:`TRAINED`), with or without gradients, outermost only, never a
    recomputation inside backward; the step state is :class:`~tbdprof.autostep.AutoSteps`'.

    The global forward pre-hook is in only between the model's forwards: the
    model's forward (its *top* call) takes it out and a forward hook on the
    model puts it back when the call returns, so the model's submodules run
    on PyTorch's hook-free fast path, as unprofiled.
    """

    def __init__(self):
        import torch

        self.torch = torch
        self.off = False
        self.prof: Profiler | None = None
        self.steps = None  # an AutoSteps once the recorder starts
        self._role: str | None = None  # this process's role (None: ask the rule table at the next event)
        self._top = None  # the trained module whose forward is in progress (the global pre-hook is out meanwhile)
        self._nest = 0  # calls of the top module inside its own forward
        self._local: dict[int, tuple] = {}  # id(top module) -> (weak reference to it, its local hook handles)
        self._recording = False  # _ready() said yes: this process is a rank and its recorder runs
        self._training_fwd = False  # the top's forward has gradients enabled
        self._fwd_start = 0
        self._opt_depth = 0  # a wrapping optimizer (Horovod's) steps the wrapped one inside
        self._watched = False
        self._failed = False
        self._handles: list = []
        self._restore: list[Callable[[], None]] = []
        self._global_pre: tuple[dict, int] | None = None  # torch's global pre-hook dict and our key in it
        self.module_calls = 0  # global pre-hook calls (module calls outside the model's forward), for the cost account
        self.hook_ns = 0  # time inside the guarded hooks (the model's forwards, batches, optimizer steps)

    # --- installing and removing ----------------------------------------------

    def install(self) -> None:
        from . import progress

        progress.arm()  # DataLoader workers forked before the recorder starts can still show their stacks at a hang
        os.register_at_fork(after_in_child=self.reconsider_role)
        from torch.optim import optimizer
        from torch.utils.data import dataloader

        self._handles = [
            self._module_hook(),
            optimizer.register_optimizer_step_pre_hook(self._opt_pre),
            optimizer.register_optimizer_step_post_hook(self._opt_post),
        ]
        iter_cls = dataloader._BaseDataLoaderIter
        next_batch = iter_cls.__next__

        def __next__(it):
            start = clock.now_ns()
            batch = next_batch(it)  # StopIteration passes through: no step opens
            self._batch(start, batch)
            return batch

        iter_cls.__next__ = __next__
        self._restore.append(lambda: setattr(iter_cls, "__next__", next_batch))
        from torch.amp.grad_scaler import GradScaler

        update = GradScaler.update

        def scaler_update(scaler, *args, **kwargs):
            result = update(scaler, *args, **kwargs)
            self._scaler_updated()
            return result

        GradScaler.update = scaler_update
        self._restore.append(lambda: setattr(GradScaler, "update", update))
        from .phases import watch_backward

        self._restore.append(watch_backward())  # backward passes: torch.autograd.backward and grad wrapped

    def _module_hook(self):
        from torch.nn.modules import module

        handle = module.register_module_forward_pre_hook(self._fwd_pre)
        self._global_pre = (module._global_forward_pre_hooks, handle.id)  # taken out and put back around the top
        return handle

    def _module_hook_cost_s(self, n: int = 1000) -> float:
        """Calibrated cost of one module call under the global pre-hook (a loss or metric module: not the model),
        against the same call without it: PyTorch's slow path with hooks, and the hook's filter."""
        from .cost import _best_per_call

        torch = self.torch
        ident, x = torch.nn.Identity(), torch.zeros(1)
        calls = self.module_calls
        hooks, key = self._global_pre

        def call(k):
            for _ in range(k):
                ident(x)

        def without(k):
            hook = hooks.pop(key)
            try:
                call(k)
            finally:
                hooks[key] = hook

        try:
            return _best_per_call(call, without, n)
        finally:
            self.module_calls = calls

    def _cost(self, comps: dict) -> dict:
        """This recorder's entries of the profiler's cost account (tbdprof.cost). The hooks end the steps: their
        time holds the steps' rows, the phase spans and the memory rows, which the account then counts once."""
        memory_rows_s = comps.get("memory_breakdown", {}).get("rows_s", 0.0)
        hooks = {"events": self.module_calls, "timed_s": self.hook_ns / 1e9,
                 "inside": {"spans": {"events": self.steps.spans_recorded}, "steps": {"events": self.prof.step_index + 1},
                            "memory_breakdown": {"timed_s": memory_rows_s}}}
        if self._handles and not self.off and self._top is None:
            hooks["per_event_us"] = self._module_hook_cost_s() * 1e6
        else:
            hooks["error"] = "hooks already removed: per-call cost not calibrated"
        return {"zero_code_hooks": hooks}

    def remove(self) -> None:
        """Take every hook out (idempotent)."""
        self.off = True
        for h in [*self._handles, *(h for _, local in self._local.values() for h in local)]:
            h.remove()
        for undo in self._restore:
            undo()
        if self.steps is not None:
            self.steps.phases.disarm()
        self._handles, self._restore, self._top = [], [], None
        self._local.clear()

    def fail(self, e: BaseException) -> None:
        """Log ``e`` once and take the hooks out; what was recorded is still closed at exit."""
        self.remove()
        _ensure_log_handler()
        log.warning("tbdprof: automatic profiling of this process stopped (%s: %s)", e.__class__.__name__, e)

    def reconsider_role(self) -> None:
        """Ask the rule table again at the next event (this process just joined a process group, or was forked)."""
        self._role = None
        self._recording = False

    # --- the recorder ----------------------------------------------------------

    def _ready(self, training: bool = True) -> bool:
        """True when this process records; only ``training`` work starts the recorder."""
        if self._role is None:  # first call, a forked child, or a process that joined a group
            self._role = classify(facts()).role
        if self._role != "rank":
            return False
        if self.prof is None:
            if not training:
                return False
            self._start()
        self._recording = True
        return True

    def _start(self) -> None:
        env = os.environ
        self.prof = Profiler(
            sample_hz=float(env.get(ENV_SAMPLE_HZ, 10.0)), flush_s=float(env.get(ENV_FLUSH_S, 5.0)),
            metadata={"auto": True, "argv": list(sys.argv)},
        )
        t0 = _ns()
        self.prof.start()
        self.hook_ns -= _ns() - t0  # starting the recorder is not a cost of the steps
        self.prof.cost.sources.append(self._cost)
        os.environ[ENV_RANK_PID] = str(os.getpid())
        from .autostep import AutoSteps  # imports torch: not at this module's import, which torch's import may trigger

        self.steps = AutoSteps(self.prof)
        self.prof.add_progress_probe(lambda: {"phase": self.steps.phases.open_phase})
        self.prof.note_coverage(schema.COVERAGE_PHASES, schema.COVERAGE_RECORDED,
                                "forward, backward and optimizer of the trained model from PyTorch's global hooks")
        excepthook = sys.excepthook

        def failed(*exc):
            self._failed = True
            if self.prof is not None and len(exc) > 1 and isinstance(exc[1], Exception):
                self.prof.note_failure(exc[1])  # where training raised (a collective whose peer is gone)
            excepthook(*exc)

        sys.excepthook = failed
        atexit.register(self.close)

    def close(self) -> None:
        """Close the recording at exit; a step that no optimizer closed is not a step."""
        prof = self.prof
        if prof is None or not prof._started or os.getpid() != prof._pid:
            return
        try:
            self.steps.close()
            self._note_coverage()
        except Exception as e:  # noqa: BLE001 - what was recorded is closed all the same
            _ensure_log_handler()
            log.warning("tbdprof: the last step was not closed cleanly (%s: %s)", e.__class__.__name__, e)
        prof.close(status="failed" if self._failed else "complete")

    def _note_coverage(self) -> None:
        prof, steps = self.prof, self.steps
        ignored = f"; {steps.steps_ignored} optimizer steps with no training before them not counted" if steps.steps_ignored else ""
        if steps.steps_skipped:
            ignored += f"; {steps.steps_skipped} of them skipped by the GradScaler (inf gradients)"
        if prof.step_index >= 0:
            opt = type(steps._step_optimizer).__name__
            prof.note_coverage(schema.COVERAGE_STEPS, schema.COVERAGE_RECORDED,
                               f"{prof.step_index + 1} optimizer steps ({opt}) of {type(steps.model).__name__}{ignored}")
        else:
            prof.note_coverage(schema.COVERAGE_STEPS, schema.COVERAGE_MISSING,
                               f"no optimizer step followed a forward of a module it trains{ignored}")
        if prof.info.world_size > 1 and schema.COVERAGE_COMM not in prof.coverage and steps.model is not None:
            prof.note_coverage(schema.COVERAGE_COMM, schema.COVERAGE_MISSING,
                               f"the trained model is {type(steps.model).__name__}, not DistributedDataParallel, and no "
                               "Horovod DistributedOptimizer steps it: its collectives are not recorded")

    def stand_down(self) -> None:
        """Make way for the script's own Profiler: remove the hooks, discard this rank's recording."""
        self.remove()
        prof = self.prof
        if prof is not None and prof._started and os.getpid() == prof._pid:
            atexit.unregister(self.close)
            prof.close(status="superseded")
            shutil.rmtree(prof.rank_dir, ignore_errors=True)

    # --- hooks -------------------------------------------------------------------

    @_guarded
    def _batch(self, start: int, batch) -> None:
        if self._recording or self._ready(self.torch.is_grad_enabled()):
            self.steps.fetched(start, clock.now_ns(), batch)

    def _fwd_pre(self, module, args) -> None:
        """The global pre-hook: every module call outside the model's forward (loss and metric modules, the
        model's own top call); unguarded and untimed up to the filter (counted and calibrated instead)."""
        self.module_calls += 1
        try:
            if self.off or self.torch._C._current_graph_task_id() != -1 or not TRAINED.is_trained(module):
                return None  # a loss or metric module, a frozen copy, or recomputation inside backward
        except Exception as e:  # noqa: BLE001 - profiling must never break the training
            self.fail(e)
            return None
        return self._enter(module, args)

    @_guarded
    def _enter(self, module, args) -> None:
        """The outermost forward of a trained module begins: the top, until its forward hook."""
        grad = self.torch.is_grad_enabled()
        hooked = self._local.get(id(module))
        if hooked is None or hooked[0]() is not module:
            self._local[id(module)] = (weakref.ref(module), [
                module.register_forward_pre_hook(CopySafeHook(self._local_pre)),
                module.register_forward_hook(CopySafeHook(self._local_post), always_call=True)])
            self._nest = 0  # PyTorch reads a call's local hooks with the global ones: the new pre-hook runs from the next call
        else:
            self._nest = -1  # its local pre-hook, next in this call, counts this call
        hooks, key = self._global_pre
        del hooks[key]
        self._top = module
        recorded = self._recording or self._ready(grad)
        self._training_fwd = grad if recorded else None  # None: not recorded (no training yet, or not a rank)
        if not (recorded and grad):
            self._fwd_start = clock.now_ns()
            return
        if not self._watched:
            self._watched = True
            self._watch(module)
        self.steps.forward_begin(module, args)

    def _local_pre(self, module, args) -> None:
        if module is self._top:
            self._nest += 1

    @_guarded
    def _local_post(self, module, args, output) -> None:
        """The top module's forward hook: its outermost call returned (the global pre-hook goes back in)."""
        if module is not self._top:
            return None  # a module that was a top once, inside another's forward
        if self._nest:
            self._nest -= 1
            return None
        self._top = None
        hooks, key = self._global_pre
        hooks[key] = self._fwd_pre
        if self._training_fwd:
            self.steps.forward_end(output)
        elif self._training_fwd is not None:
            self.steps.eval_forward(self._fwd_start, clock.now_ns())

    @_guarded
    def _opt_pre(self, optimizer, args, kwargs):
        self._opt_depth += 1
        if self._opt_depth > 1:
            return None
        if not TRAINED.knows(optimizer):  # built before the hooks were in
            TRAINED.add(optimizer)
        if self.steps is None and not self._ready(False):
            return None
        return self.steps.optimizer_begin(optimizer, args, kwargs)

    @_guarded
    def _opt_post(self, optimizer, args, kwargs) -> None:
        self._opt_depth = max(0, self._opt_depth - 1)
        if not self._opt_depth and self.steps is not None:
            self.steps.optimizer_end(optimizer)

    @_guarded
    def _scaler_updated(self) -> None:
        if self.steps is not None:
            self.steps.iteration_end()

    def _watch(self, model) -> None:
        """Memory breakdown and comm spans of the trained model, with the optimizers that update it."""
        optimizers = TRAINED.optimizers_of(model)
        ddp_info = getattr(model, "_get_ddp_logging_data", None)
        if ddp_info is not None and ddp_info().get("comm_hook"):
            self.prof.note_coverage(schema.COVERAGE_COMM, schema.COVERAGE_MISSING,
                                    "DDP model seen, but the script registered its own comm hook: its buckets are not timed")
            model = model.module
        self.prof.watch(model, optimizers)


_recorder: AutoRecorder | None = None
_undo_trained: Callable[[], None] | None = None


def install() -> AutoRecorder | None:
    """Install the global hooks in this process if it is a rank (called once torch is imported).

    ``init_process_group`` is wrapped too: a multiprocessing child becomes a
    rank by joining a process group (``torch.multiprocessing.spawn``), and a
    spawned child imports torch before it knows it is a child.
    """
    global _recorder, _undo_trained
    if _recorder is not None:
        return _recorder
    f = facts()
    if f.env.get(ENV_AUTO) == "1":
        _install_on_join()
        if _undo_trained is None:  # before any optimizer is built, in every process that may become a rank
            _undo_trained = TRAINED.install()
            profiler.on_start(yield_to)
    role = classify(f).role
    if role == "launcher" and _program(f.argv).endswith(("torchrun", "torch.distributed.run", "torch.distributed.launch")):
        from .exits import watch_torchrun

        watch_torchrun(f.env.get("TBDPROF_RUN_DIR"))  # how its ranks end, where they cannot say it themselves
    if role != "rank":
        return None
    rec = AutoRecorder()
    try:
        rec.install()
    except Exception as e:  # noqa: BLE001 - e.g. a torch without these hooks
        rec.fail(e)
        return None
    _recorder = rec
    return rec


def _install_on_join() -> None:
    """Wrap ``torch.distributed.init_process_group``: a process that joins a group reconsiders its role."""
    import torch.distributed as dist

    join = getattr(dist, "init_process_group", None)
    if join is None or getattr(join, "_tbdprof", False):
        return

    @functools.wraps(join)
    def init_process_group(*args, **kwargs):
        result = join(*args, **kwargs)
        global _joined_pid
        try:
            _joined_pid = os.getpid()
            if _recorder is not None:
                _recorder.reconsider_role()
            install()
        except Exception as e:  # noqa: BLE001 - profiling must never break the training
            _ensure_log_handler()
            log.warning("tbdprof: no automatic profiling of this rank (%s: %s)", e.__class__.__name__, e)
        return result

    init_process_group._tbdprof = True
    dist.init_process_group = init_process_group


def yield_to(prof) -> None:
    """Called by ``Profiler.start``: a script's own Profiler turns the automatic recording off."""
    global _recorder
    rec = _recorder
    if rec is not None and prof is not rec.prof:
        _recorder = None
        rec.stand_down()

"""Automatic recording of unmodified training scripts, for ``tbdprof profile -- COMMAND``.

``tbdprof profile`` puts a folder holding a ``sitecustomize.py`` first on its
children's PYTHONPATH. When a child imports torch, that hook calls
:func:`install`, which, in a process :func:`classify` calls a *rank*, installs
PyTorch's global hooks:

- DataLoader iteration: a ``data_wait`` span per batch, samples per step;
- the outermost module's forward, and the backward that follows it (the
  phase logic of :class:`tbdprof.phase_hooks.Instrumentation`);
- the first optimizer that steps: the ``optimizer`` phase, whose end closes
  the training step; at its first step, :meth:`Profiler.watch` on the model
  that ran forward (memory breakdown, DDP or Horovod communication spans).

The recorder starts at the first training event (a batch fetched, a forward
or an optimizer step, with gradients enabled). A script that starts its own
:class:`~tbdprof.Profiler` wins: ``Profiler.start`` calls :func:`yield_to`,
which takes these hooks out and discards what they had recorded.

Every hook is guarded: an error inside tbdprof is logged once, the hooks are
taken out, and the training goes on.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Callable, Mapping

from . import clock, schema
from .profiler import Profiler, _batch_items, _ensure_log_handler, log

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
        try:
            method(self, *args)
        except Exception as e:  # noqa: BLE001 - profiling must never break the training
            self.fail(e)
        return None  # a pre-hook's return value would replace the call's arguments

    return hook


class AutoRecorder:
    """The global hooks of one process and the :class:`~tbdprof.Profiler` they feed."""

    def __init__(self):
        import torch

        self.torch = torch
        self.off = False
        self.prof: Profiler | None = None
        self.phases = None  # an Instrumentation once the recorder starts
        self._role_pid = -1
        self._role = ""
        self._depth = 0  # module forwards in progress: only the outermost is a phase
        self._opt_depth = 0  # a wrapping optimizer (Horovod's) steps the wrapped one inside
        self._top = False
        self._model = None
        self._optimizer = None  # the first optimizer to step marks the step boundary
        self._opt_live = None  # the optimizer whose step is being timed
        self._failed = False
        self._handles: list = []
        self._restore: list[Callable[[], None]] = []

    # --- installing and removing ----------------------------------------------

    def install(self) -> None:
        from torch.nn.modules import module
        from torch.optim import optimizer
        from torch.utils.data import dataloader

        self._handles = [
            module.register_module_forward_pre_hook(self._fwd_pre),
            module.register_module_forward_hook(self._fwd_post, always_call=True),
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

    def remove(self) -> None:
        """Take every hook out (idempotent)."""
        self.off = True
        for h in self._handles:
            h.remove()
        for undo in self._restore:
            undo()
        self._handles, self._restore = [], []

    def fail(self, e: BaseException) -> None:
        """Log ``e`` once and take the hooks out; what was recorded is still closed at exit."""
        self.remove()
        _ensure_log_handler()
        log.warning("tbdprof: automatic profiling of this process stopped (%s: %s)", e.__class__.__name__, e)

    # --- the recorder ----------------------------------------------------------

    def _ready(self, training: bool = True) -> bool:
        """True when this process records ``training`` work (starting the recorder at the first call)."""
        pid = os.getpid()
        if pid != self._role_pid:  # first call, or a forked child
            self._role_pid, self._role = pid, classify(facts()).role
        if self._role != "rank" or not training:
            return False
        if self.prof is None:
            self._start()
        return True

    def _start(self) -> None:
        env = os.environ
        self.prof = Profiler(
            sample_hz=float(env.get(ENV_SAMPLE_HZ, 10.0)), flush_s=float(env.get(ENV_FLUSH_S, 5.0)),
            metadata={"auto": True, "argv": list(sys.argv)},
        )
        self.prof.start()
        os.environ[ENV_RANK_PID] = str(os.getpid())
        self.phases = _phases(self.prof)
        excepthook = sys.excepthook

        def failed(*exc):
            self._failed = True
            excepthook(*exc)

        sys.excepthook = failed
        atexit.register(self.close)

    def close(self) -> None:
        """Close the recording at exit; a step that no optimizer closed is not a step."""
        prof = self.prof
        if prof is None or not prof._started or os.getpid() != prof._pid:
            return
        if prof._step_start is not None:
            prof._step_start = None
            prof.step_index -= 1
        prof.close(status="failed" if self._failed else "complete")

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
        if not self._ready(self.torch.is_grad_enabled()):
            return
        prof, items = self.prof, _batch_items(batch)
        if prof._step_start is None:
            prof.begin_step(items)
            prof._step_start = start  # the step began when the fetch did
        elif items is not None:  # gradient accumulation: several batches per step
            prof._step_items = (prof._step_items or 0) + items
        prof._record_span(prof.step_index, schema.PHASE_DATA, schema.KIND_PHASE, start, clock.now_ns(), None, None)

    @_guarded
    def _fwd_pre(self, module, args) -> None:
        self._depth += 1
        if self._depth == 1 and self._ready(self.torch.is_grad_enabled()):
            self._top, self._model, self._opt_depth = True, module, 0
            self.phases._fwd_pre(module, args)

    @_guarded
    def _fwd_post(self, module, args, output) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0 and self._top:
            self._top = False
            self.phases._fwd_post(module, args, output)

    @_guarded
    def _opt_pre(self, optimizer, args, kwargs) -> None:
        self._opt_depth += 1
        if self._opt_depth > 1 or not self._ready():
            return
        if self._optimizer is None:
            self._optimizer = optimizer
            self._watch(optimizer)
        if optimizer is self._optimizer and self.prof._step_start is None:
            self.prof.begin_step()
        self._opt_live = optimizer
        self.phases._opt_pre(optimizer, args, kwargs)

    @_guarded
    def _opt_post(self, optimizer, args, kwargs) -> None:
        self._opt_depth = max(0, self._opt_depth - 1)
        if self._opt_depth or self._opt_live is not optimizer:
            return
        self._opt_live = None
        if optimizer is self._optimizer:
            self.phases._opt_post(optimizer, args, kwargs)
        else:  # a second optimizer (e.g. a GAN's): its phase, not a step boundary
            self.phases._close_optimizer()

    def _watch(self, optimizer) -> None:
        """Memory breakdown and comm spans of the model that ran forward, if ``optimizer`` trains it."""
        model = self._model
        if model is None:
            return
        params = {id(p) for p in model.parameters()}
        if not any(id(p) in params for g in optimizer.param_groups for p in g["params"]):
            return
        ddp_info = getattr(model, "_get_ddp_logging_data", None)
        if ddp_info is not None and ddp_info().get("comm_hook"):
            model = model.module  # the script registered its own comm hook: memory only
        self.prof.watch(model, optimizer)


def _phases(prof: Profiler):
    """:class:`~tbdprof.phase_hooks.Instrumentation`'s phase methods on ``prof``, without its per-object hooks."""
    from .phase_hooks import Instrumentation

    class Phases(Instrumentation):
        def __init__(self, prof: Profiler):
            self.prof, self._device, self._handles = prof, False, []
            self._fwd = self._bwd = self._opt = None

    return Phases(prof)


_recorder: AutoRecorder | None = None


def install() -> AutoRecorder | None:
    """Install the global hooks in this process if it is a rank (called once torch is imported).

    ``init_process_group`` is wrapped too: a multiprocessing child becomes a
    rank by joining a process group (``torch.multiprocessing.spawn``), and a
    spawned child imports torch before it knows it is a child.
    """
    global _recorder
    if _recorder is not None:
        return _recorder
    f = facts()
    if f.env.get(ENV_AUTO) == "1" and f.env.get(ENV_RANK_PID) is None:
        _install_on_join()
    if classify(f).role != "rank":
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

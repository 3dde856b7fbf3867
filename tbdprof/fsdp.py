"""Communication spans from FSDP2 (``torch.distributed.fsdp.fully_shard``).

FSDP2 does not call the public collectives that a wrapper of
``torch.distributed`` would see (``all_gather_into_tensor``,
``reduce_scatter_tensor``): each parameter group (``FSDPParamGroup``, one per
``fully_shard`` call) holds two communication objects, ``_all_gather_comm``
and ``_reduce_scatter_comm`` (``DefaultAllGather`` / ``DefaultReduceScatter``,
or whatever ``FSDPModule.set_custom_all_gather``, ``set_custom_reduce_scatter``,
``set_symm_mem_for_comm`` or ``set_allocate_memory_from_process_group_for_comm``
put there), and every parameter all-gather (``foreach_all_gather``: unshard in
forward, in backward, prefetches, explicit ``FSDPModule.unshard``) and every
gradient reduce-scatter (``foreach_reduce``) goes through them, down to
``dist.all_gather_single`` / ``dist.reduce_scatter_single``. That is the seam:
:class:`FsdpComm` puts a timing wrapper around each group's two objects, for
this model only, delegating to whatever was there (allocation included), and
puts the originals back at the end. Nothing global is patched.

HSDP (a 2-D mesh: shard within, replicate across) also all-reduces each
reduce-scattered shard across replicas with a direct ``dist.all_reduce`` in
``foreach_reduce``; no per-model object sits in that path, but FSDP calls the
group's all-reduce hook (``set_all_reduce_hook``) right after it, on the same
stream. For HSDP groups :class:`FsdpComm` installs a hook (calling any hook
already there): the ``allreduce`` span runs from the last thing the group's
reduce-scatter object did (the reduce-scatter's end; with a shard dimension of
size 1, where FSDP skips the reduce-scatter, the allocation of its output) to
the hook. In between lie only the all-reduce and FSDP's bookkeeping: a
stream wait, a buffer add under gradient accumulation and, with one shard,
the copy of the gradients into the output.

Bytes, per span (nccl-tests' convention, that of ``analysis/bandwidth.py``):

* ``all_gather``: the gathered output buffer, i.e. the whole unsharded
  parameters of the group, in the dtype they are gathered in (``param_dtype``
  under a mixed-precision policy), dim-0 padding to a multiple of the world
  size included. Under the ring model each rank sends (and receives)
  ``(n-1)/n`` of it: it already holds its own shard.
* ``reduce_scatter``: the input buffer, i.e. the whole unsharded gradients of
  the group in the reduce dtype (padding included). Each rank sends
  ``(n-1)/n`` of it and keeps a ``1/n`` shard.
* ``allreduce`` (HSDP only): the reduce-scattered shard, all-reduced across
  the replicate dimension: ``2(n-1)/n`` of it per rank, like DDP's buckets.

So a plain FSDP step moves, per rank, ``(n-1)/n`` of (the parameters gathered
in forward + those gathered again in backward + the gradients), against
DDP's ``2(n-1)/n`` of the gradients: with every parameter regathered in
backward, FSDP sends 1.5 times what DDP does. The root group is usually not
resharded after forward, so it is gathered once per step.

Timing. On CPU (gloo) FSDP calls the collectives synchronously (the span is
the call) except for explicit ``unshard(async_op=True)`` and prefetches a user
asked to be asynchronous: those end when the work's future completes (a gloo
thread runs the callback). On CUDA the call returns once the collective is
enqueued, so the span is timed with CUDA events through
:class:`tbdprof.cuda.CudaPending`, as in :mod:`tbdprof.comm`: the start event
is recorded on the stream FSDP issues the collective from (the all-gather or
reduce-scatter stream, which already waits for its input), the end event
after a synchronous call on that same stream (c10d made it wait for the
collective) or, for an asynchronous work, in the future's ``then`` callback,
whose current stream waits on the collective. Other device types are not
timed (one warning).

Limits: the wrappers are installed on the param groups that exist at
construction (after ``fully_shard``, before or after the first forward);
modules sharded later, or comm objects and all-reduce hooks replaced later by
the script, are not seen (and ``set_symm_mem_for_comm`` /
``set_allocate_memory_from_process_group_for_comm`` refuse to run on a
wrapped group: call them before). FSDP1 (``FullyShardedDataParallel``) is a
different code path and is not covered, nor is a whole-model
``torch.compile`` that traces FSDP2's collectives into the graph (functional
collectives, not these objects). Errors in this module never reach training:
the first is logged, the span is dropped and the collective runs as FSDP
called it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Callable

from . import clock, schema
from .cuda import CudaPending, SpanSink
from .schema import SpanRow

log = logging.getLogger("tbdprof")

FORCE_WAIT_S = 5.0  # how long resolve(force=True) waits for asynchronous gathers still in flight

_AG_ATTR = "_all_gather_comm"
_RS_ATTR = "_reduce_scatter_comm"
_HOOK_ATTR = "_all_reduce_hook"


def is_fsdp_model(model) -> bool:
    """True when ``model`` or one of its submodules was sharded by FSDP2's ``fully_shard``."""
    if "torch.distributed.fsdp" not in sys.modules:  # nothing can be an FSDPModule yet: no import
        return False
    try:
        from torch.distributed.fsdp import FSDPModule

        return any(isinstance(m, FSDPModule) for m in model.modules())
    except Exception:  # noqa: BLE001 - not a module, or a torch without FSDP2
        return False


def _param_groups(model) -> list:
    """Every FSDPParamGroup of ``model``, each once (a state may serve several modules)."""
    from torch.distributed.fsdp import FSDPModule

    groups, seen = [], set()
    for m in model.modules():
        if not isinstance(m, FSDPModule):
            continue
        state = m._get_fsdp_state()
        found = getattr(state, "_fsdp_param_groups", None)
        if found is None:  # torch before per-parameter meshes: one group or None
            one = getattr(state, "_fsdp_param_group", None)
            found = [one] if one is not None else []
        for g in found:
            if id(g) not in seen:
                seen.add(id(g))
                groups.append(g)
    return groups


def _tensor_arg(args: tuple, kwargs: dict, name: str, index: int):
    return kwargs[name] if name in kwargs else args[index]


class _Timed:
    """A group's comm object, timed: same call, same allocation, same attributes."""

    def __init__(self, owner: FsdpComm, inner, name: str, group_state: _GroupState):
        self._owner, self._inner, self._name, self._gs = owner, inner, name, group_state
        self.active = True

    def allocate(self, *args, **kwargs):
        out = self._inner.allocate(*args, **kwargs)
        if self.active and self._gs.hsdp and self._name == schema.COMM_REDUCE_SCATTER:
            self._owner._mark_alloc(self._gs, out)
        return out

    def __call__(self, *args, **kwargs):
        rec = None
        if self.active:
            # all-gather: the output is the gathered buffer; reduce-scatter: the input is the full gradients
            which = ("output_tensor", 0) if self._name == schema.COMM_ALLGATHER else ("input_tensor", 1)
            rec = self._owner._begin(self._name, args, kwargs, which)
        result = self._inner(*args, **kwargs)
        if rec is not None:
            self._owner._end(rec, result, self._gs)
        return result

    def __getattr__(self, name):  # anything else FSDP or the script reads from the comm object
        try:
            inner = self.__dict__["_inner"]
        except KeyError:  # copy/pickle probing a half-built object
            raise AttributeError(name) from None
        return getattr(inner, name)


class _GroupState:
    __slots__ = ("group", "hsdp", "mark", "hook", "orig_hook", "wrappers")

    def __init__(self, group, hsdp: bool):
        self.group, self.hsdp = group, hsdp
        self.mark = None  # HSDP: (step, start of the all-reduce: host ns or CudaPending.begin())
        self.hook = self.orig_hook = None
        self.wrappers: list[tuple[str, _Timed]] = []


class FsdpComm:
    """Records the all-gathers and reduce-scatters of an FSDP2 model (and HSDP's all-reduces) as ``comm`` spans.

    ``sink(row)`` receives host-timed spans as :class:`tbdprof.schema.SpanRow`;
    CUDA spans go through ``pending`` (resolved by its owner). Plays the
    Profiler's "pending spans" role: ``resolve(force=True)`` at the end of the
    recording waits briefly for asynchronous gathers still in flight and gives
    the model its own comm objects and hooks back. ``groups`` is the number of
    param groups instrumented (0: nothing to time, or a torch whose FSDP2 has
    no such seam; a warning says which).
    """

    def __init__(self, model, sink: SpanSink, current_step: Callable[[], int], pending: CudaPending):
        self._sink, self._step, self._pending = sink, current_step, pending
        self._states: list[_GroupState] = []
        self._failed = False
        self._untimed_device_warned = False
        self._lock = threading.Lock()
        self._inflight = 0
        self._removed = False
        try:
            self._install(model)
        except Exception as e:  # noqa: BLE001 - an unknown FSDP version: no spans, training untouched
            log.warning("tbdprof: no FSDP communication spans (%s: %s)", e.__class__.__name__, e)
            self._uninstall()
            self._states = []

    @property
    def groups(self) -> int:
        return len(self._states)

    # --- install / remove -------------------------------------------------------

    def _install(self, model) -> None:
        groups = _param_groups(model)
        for g in groups:
            if not (hasattr(g, _AG_ATTR) and hasattr(g, _RS_ATTR)):
                raise AttributeError(f"FSDPParamGroup has no {_AG_ATTR}/{_RS_ATTR} in this torch")
        for g in groups:
            current = [getattr(g, _AG_ATTR), getattr(g, _RS_ATTR)]
            if any(isinstance(c, _Timed) and c.active and not c._owner._removed for c in current):
                log.warning("tbdprof: an FSDP param group is already recorded by another watch(); not twice")
                continue
            gs = _GroupState(g, bool(getattr(g, "_is_hsdp", False)))
            self._states.append(gs)  # first: a failure below still takes out what was put in
            for attr, name in ((_AG_ATTR, schema.COMM_ALLGATHER), (_RS_ATTR, schema.COMM_REDUCE_SCATTER)):
                w = _Timed(self, getattr(g, attr), name, gs)
                setattr(g, attr, w)
                gs.wrappers.append((attr, w))
            if gs.hsdp and hasattr(g, _HOOK_ATTR):
                gs.orig_hook = getattr(g, _HOOK_ATTR)
                gs.hook = self._make_hook(gs)
                setattr(g, _HOOK_ATTR, gs.hook)

    def _uninstall(self) -> None:
        for gs in self._states:
            for attr, w in gs.wrappers:
                w.active = False  # a wrapper something else has wrapped in turn stays, as a pass-through
                if getattr(gs.group, attr, None) is w:
                    setattr(gs.group, attr, w._inner)
            if gs.hook is not None and getattr(gs.group, _HOOK_ATTR, None) is gs.hook:
                setattr(gs.group, _HOOK_ATTR, gs.orig_hook)
            gs.hook = None
            gs.mark = None

    def resolve(self, force: bool = False) -> None:
        """Host spans go to the sink as they end; at the end (``force``) take the wrappers out."""
        if not force or self._removed:
            return
        self._removed = True
        deadline = time.monotonic() + FORCE_WAIT_S
        while self._inflight > 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        try:
            self._uninstall()
        except Exception as e:  # noqa: BLE001
            log.warning("tbdprof: could not restore FSDP's comm objects (%s: %s)", e.__class__.__name__, e)

    # --- timing ---------------------------------------------------------------

    def _fail(self, e: BaseException) -> None:
        if not self._failed:
            log.warning("tbdprof: an FSDP communication span was dropped (%s: %s)", e.__class__.__name__, e)
        self._failed = True

    def _timer(self, t):
        """"cuda", "cpu", or None (a device this module cannot time)."""
        if t.is_cuda:
            return "cuda"
        if t.device.type == "cpu":
            return "cpu"
        if not self._untimed_device_warned:
            log.warning("tbdprof: FSDP collectives on %s are not timed", t.device.type)
        self._untimed_device_warned = True
        return None

    def _begin(self, name: str, args: tuple, kwargs: dict, which: tuple[str, int]):
        """(name, step, bytes, device, start) for a collective about to be issued, or None."""
        try:
            t = _tensor_arg(args, kwargs, *which)
            dev = self._timer(t)
            if dev is None:
                return None
            start = self._pending.begin() if dev == "cuda" else clock.now_ns()
            return name, self._step(), t.numel() * t.element_size(), dev, start
        except Exception as e:  # noqa: BLE001
            self._fail(e)
            return None

    def _end(self, rec, result, gs: _GroupState) -> None:
        try:
            name, step, nbytes, dev, start = rec
            get_future = getattr(result, "get_future", None)
            if get_future is not None:  # an asynchronous work: ends when it completes
                self._end_async(rec, get_future())
                if gs.hsdp and name == schema.COMM_REDUCE_SCATTER:  # (a custom comm: FSDP's own is synchronous)
                    gs.mark = (step, self._pending.begin() if dev == "cuda" else clock.now_ns())
                return
            if dev == "cuda":
                # begin(): an (anchor, event) pair on the stream that now waits on the
                # collective; its event ends this span and may start HSDP's all-reduce
                end = self._pending.begin()
                self._pending.add(step, name, schema.KIND_COMM, nbytes, start, end[1])
            else:
                end = clock.now_ns()
                self._sink(SpanRow(step, name, schema.KIND_COMM, start, end, nbytes))
            if gs.hsdp and name == schema.COMM_REDUCE_SCATTER:
                gs.mark = (step, end)
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def _end_async(self, rec, fut) -> None:
        name, step, nbytes, dev, start = rec
        with self._lock:
            self._inflight += 1

        def done(_f):
            try:
                if dev == "cuda":  # the current stream here waits on the collective
                    self._pending.add(step, name, schema.KIND_COMM, nbytes, start, self._pending.record())
                else:
                    self._sink(SpanRow(step, name, schema.KIND_COMM, start, clock.now_ns(), nbytes))
            except Exception as e:  # noqa: BLE001
                self._fail(e)
            finally:
                with self._lock:
                    self._inflight -= 1

        try:
            fut.then(done)  # the returned future is not needed: the work FSDP waits on is the original
        except BaseException:
            with self._lock:
                self._inflight -= 1
            raise

    def _mark_alloc(self, gs: _GroupState, t) -> None:
        """HSDP: a reduce-scatter buffer ``t`` was allocated: the all-reduce, if one follows, starts after now."""
        try:
            dev = self._timer(t)
            if dev is not None:
                gs.mark = (self._step(), self._pending.begin() if dev == "cuda" else clock.now_ns())
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def _make_hook(self, gs: _GroupState):
        def hook(reduce_output):
            try:
                mark, gs.mark = gs.mark, None
                if mark is not None and not self._removed:
                    step, start = mark
                    nbytes = reduce_output.numel() * reduce_output.element_size()
                    if isinstance(start, int):
                        self._sink(SpanRow(step, schema.COMM_ALLREDUCE, schema.KIND_COMM, start, clock.now_ns(), nbytes))
                    else:  # the current stream (FSDP's all-reduce stream) waits on the all-reduce
                        self._pending.add(step, schema.COMM_ALLREDUCE, schema.KIND_COMM, nbytes, start, self._pending.record())
            except Exception as e:  # noqa: BLE001
                self._fail(e)
            if gs.orig_hook is not None:
                gs.orig_hook(reduce_output)

        return hook

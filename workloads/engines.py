"""Distributed engines: how a workload's model and optimizer are made data-parallel.

A workload does not change between engines; only this wrapper does.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


class Engine:
    """Set up the process group, wrap model and optimizer, tear down."""

    name = "none"

    def __init__(self, info, device):
        self.info, self.device = info, device

    def setup(self) -> None:
        pass

    def wrap(self, model, optimizer):
        return model, optimizer

    def average_gradients(self, params, comm) -> None:
        """Average the gradients of ``params`` over the ranks, for a step that trains outside the
        wrapped model and optimizer (a GAN's halves in turn); ``comm(nbytes)`` times the collective.

        Parameters the wrapped optimizer already averages are left to it.
        """

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def shutdown(self) -> None:
        pass


def _average_flat(params, comm, allreduce_mean) -> None:
    """Average the gradients of ``params`` as one flat tensor through ``allreduce_mean(flat)``."""
    import torch

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    with comm(flat.numel() * flat.element_size()):
        allreduce_mean(flat)
    for g, avg in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(avg.view_as(g))


class DDPEngine(Engine):
    """torch.distributed DistributedDataParallel: gloo on CPU, NCCL on CUDA."""

    name = "ddp"

    def setup(self) -> None:
        import torch.distributed as dist

        if self.info.world_size > 1:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, rank=self.info.rank, world_size=self.info.world_size)

    def wrap(self, model, optimizer):
        if self.info.world_size == 1:
            return model, optimizer
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None), optimizer

    def average_gradients(self, params, comm) -> None:
        if self.info.world_size == 1:
            return
        import torch.distributed as dist

        def mean(flat):
            dist.all_reduce(flat)
            flat /= self.info.world_size

        _average_flat(params, comm, mean)

    def barrier(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class EngineUnavailable(RuntimeError):
    """The engine's library is not installed (message says how to install it)."""


HOROVOD_MISSING = "Horovod is not installed in this environment: run `make horovod` (builds it once per machine)"
TIMELINE_FILE = "horovod_timeline.json"


class HorovodEngine(Engine):
    """Horovod (``horovod.torch``): gloo or MPI, whichever its launcher set up.

    Rank 0's model and optimizer state are broadcast, and the optimizer is
    wrapped in ``DistributedOptimizer``. With ``--horovod-timeline`` rank 0's
    Horovod timeline is ingested into the run's store at shutdown.
    """

    name = "horovod"

    def setup(self) -> None:
        try:
            import horovod.torch as hvd
        except ImportError:
            raise EngineUnavailable(HOROVOD_MISSING) from None
        self.hvd = hvd
        self.run_dir = os.environ.get("TBDPROF_RUN_DIR")
        if os.environ.get("TBDPROF_HOROVOD_TIMELINE") and not self.run_dir:
            raise EngineUnavailable("--horovod-timeline needs the run folder: launch with tbdprof or pass --run-id")
        if os.environ.get("TBDPROF_HOROVOD_TIMELINE"):
            Path(self.run_dir).mkdir(parents=True, exist_ok=True)
            os.environ["HOROVOD_TIMELINE"] = str(Path(self.run_dir).resolve() / TIMELINE_FILE)
        hvd.init()
        if hvd.size() > 1 and not self.run_dir:
            raise EngineUnavailable("a Horovod job needs one run folder for all ranks: pass --run-id")
        if self.device.type == "cuda":
            import torch

            torch.cuda.set_device(hvd.local_rank())

    def wrap(self, model, optimizer):
        hvd = self.hvd
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        self.averaged = {id(p) for group in optimizer.param_groups for p in group["params"]}
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
        # Horovod 0.28's zero_grad() takes no argument; torch loops pass set_to_none.
        own_zero_grad = super(type(optimizer), optimizer).zero_grad
        optimizer.zero_grad = lambda set_to_none=True: own_zero_grad(set_to_none=set_to_none)
        return model, optimizer

    def average_gradients(self, params, comm) -> None:
        hvd = self.hvd
        if hvd.size() == 1:
            return
        # The DistributedOptimizer's own parameters are averaged from its backward hooks.
        rest = [p for p in params if id(p) not in self.averaged]
        _average_flat(rest, comm, lambda flat: hvd.allreduce_(flat, op=hvd.Average, name="tbdprof.average_gradients"))

    def barrier(self) -> None:
        self.hvd.barrier()

    def shutdown(self) -> None:
        rank = self.hvd.rank()
        self.hvd.shutdown()  # also flushes and closes the timeline
        timeline = os.environ.get("HOROVOD_TIMELINE")
        if rank == 0 and timeline and Path(timeline).is_file() and self.run_dir:
            from tbdprof.horovod_timeline import ingest

            got = ingest(timeline, self.run_dir, self.info.host)
            print(f"tbdprof: Horovod timeline: {got.spans} spans for {got.tensors} tensors" + (f" ({got.dropped})" if got.dropped else ""), file=sys.stderr)


ENGINES: dict[str, type[Engine]] = {"ddp": DDPEngine, "horovod": HorovodEngine}


def check_available(name: str) -> None:
    """Raise :class:`EngineUnavailable` if engine ``name``'s library cannot be found (no import)."""
    if name == "horovod" and importlib.util.find_spec("horovod") is None:
        raise EngineUnavailable(HOROVOD_MISSING)


def engine_env(args) -> dict[str, str]:
    """Check the engine is installed; environment variables for its options in ``args``.

    Horovod reads its tunables (and ``HOROVOD_TIMELINE``) at ``hvd.init()``: set
    in the launching process they reach every rank. A Horovod job's ranks
    share the run folder ``--out/--run-id`` when no tbdprof launcher set one.
    """
    check_available(args.engine)
    env = {}
    if args.fusion_threshold_mb is not None:
        env["HOROVOD_FUSION_THRESHOLD"] = str(int(args.fusion_threshold_mb * 1024 * 1024))
    if args.cycle_time_ms is not None:
        env["HOROVOD_CYCLE_TIME"] = str(args.cycle_time_ms)
    if args.hierarchical_allreduce:
        env["HOROVOD_HIERARCHICAL_ALLREDUCE"] = "1"
    if args.horovod_timeline:
        env["TBDPROF_HOROVOD_TIMELINE"] = "1"
    if args.engine != "horovod":
        if env:
            raise EngineUnavailable("--fusion-threshold-mb, --cycle-time-ms, --hierarchical-allreduce and --horovod-timeline need --engine horovod")
        return env
    if args.run_id and "TBDPROF_RUN_DIR" not in os.environ and getattr(args, "out", None):
        env["TBDPROF_RUN_DIR"] = str(Path(args.out) / args.run_id)
    return env


def get_engine(name: str, info, device) -> Engine:
    return ENGINES[name](info, device)

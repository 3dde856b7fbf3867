"""Distributed engines: how a workload's model and optimizer are made data-parallel.

A workload does not change between engines; only this wrapper does.
"""

from __future__ import annotations

import os


class Engine:
    """Set up the process group, wrap model and optimizer, tear down."""

    name = "none"

    def __init__(self, info, device):
        self.info, self.device = info, device

    def setup(self) -> None:
        pass

    def wrap(self, model, optimizer):
        return model, optimizer

    def shutdown(self) -> None:
        pass


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

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


ENGINES: dict[str, type[Engine]] = {"ddp": DDPEngine}


class EngineUnavailable(RuntimeError):
    """The engine's library is not installed (message says how to install it)."""


def get_engine(name: str, info, device) -> Engine:
    return ENGINES[name](info, device)

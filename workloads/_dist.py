"""Helpers for workloads whose step bypasses the engine's model wrapper (GAN, A3C)."""

from __future__ import annotations

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user model inside an engine wrapper such as DistributedDataParallel."""
    return getattr(model, "module", model)


def average_gradients(params) -> None:
    """Allreduce-average the gradients of ``params`` over the process group (no-op alone)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, avg in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(avg.view_as(g))

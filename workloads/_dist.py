"""For workloads whose step bypasses the engine's model wrapper (GAN, A3C)."""

from __future__ import annotations

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user model inside an engine wrapper such as DistributedDataParallel."""
    return getattr(model, "module", model)

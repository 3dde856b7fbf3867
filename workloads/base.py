"""The small interface every reference workload implements.

A workload is a model, a deterministic on-disk dataset with its CPU-side
preprocessing, and (optionally) its own training step. The runner
(:mod:`tbdprof.workloads.train`) owns distribution, the loader and profiling,
so a workload does not change between engines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch


@dataclass(frozen=True)
class Preset:
    """One size of a workload: model arguments, data set size and defaults."""

    model: dict[str, Any]
    batch_size: int
    samples: int  # data set size written to disk
    lr: float = 0.1
    num_workers: int = 1
    data: dict[str, Any] = field(default_factory=dict)


class Workload:
    """Subclass and register with :func:`tbdprof.workloads.registry.register`."""

    name = "workload"
    domain = "unknown"
    unit = "samples"  # what throughput counts
    presets: dict[str, Preset] = {}
    reference_params: dict[str, int] = {}  # preset -> parameter count of the reference model
    reference_source = ""  # where that figure comes from
    # The phases one training step records besides data_wait and h2d.
    phases: tuple[str, ...] = ("forward", "backward", "optimizer")
    # The engines the workload's step is right under, and why, where not all.
    engines: tuple[str, ...] = ("ddp", "horovod")
    engines_reason = ""

    def build_model(self, preset: Preset) -> torch.nn.Module:
        raise NotImplementedError

    def write_dataset(self, root: Path, preset: Preset, seed: int) -> None:
        """Generate the synthetic data set deterministically into ``root``."""
        raise NotImplementedError

    def dataset(self, root: Path, preset: Preset, train: bool = True) -> torch.utils.data.Dataset:
        raise NotImplementedError

    collate_fn: Callable | None = None

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """Forward pass and loss for one (device-resident) batch."""
        raise NotImplementedError

    def train_step(self, model: torch.nn.Module, optimizer, batch: Any, phase: Callable[[str], Any],
                   average_gradients: Callable[[Iterable[torch.nn.Parameter]], None]) -> bool:
        """Override for loops that are not forward/backward/optimizer once (GANs, RL).

        ``phase(name)`` is a context manager timing a phase of the step.
        ``average_gradients(params)`` averages those gradients over the ranks
        through the engine (a no-op alone, recorded as communication), for a
        step that does not go through the engine's model wrapper. Return True
        when the step was handled; the default returns False and the runner
        does forward (``loss``), backward and optimizer itself.
        """
        return False

    def optimizer(self, model: torch.nn.Module, preset: Preset) -> torch.optim.Optimizer:
        """The runner's optimizer (the engine wraps it)."""
        return torch.optim.SGD(model.parameters(), lr=preset.lr, momentum=0.9, weight_decay=1e-4)

    def other_optimizers(self) -> tuple[torch.optim.Optimizer, ...]:
        """Optimizers the workload's own step uses besides the runner's (made by ``optimizer``),
        so that the memory breakdown counts their state."""
        return ()

    def batch_items(self, batch: Any) -> int:
        """Samples in a batch (the throughput unit)."""
        first = batch[0] if isinstance(batch, (list, tuple)) else batch
        return int(first.shape[0])

    def batch_units(self, batch: Any) -> int:
        """How many ``unit`` a batch holds (tokens, frames...); samples by default."""
        return self.batch_items(batch)

    def batch_sampler(self, sampler: torch.utils.data.Sampler, batch_size: int) -> torch.utils.data.Sampler:
        """Group a rank's sample indices into batches; override to bucket by length."""
        return torch.utils.data.BatchSampler(sampler, batch_size, drop_last=True)

    def check_batch_size(self, preset: Preset, batch_size: int) -> str | None:
        """Why ``batch_size`` (per rank) cannot be used, or None when it can."""
        if batch_size < 2 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self._meta_model(preset).modules()):
            return "a batch size of 1 cannot train: its BatchNorm layers need more than one sample per batch"
        return None

    def _meta_model(self, preset: Preset) -> torch.nn.Module:
        """The preset's model on the meta device: its structure, no memory, no initialisation."""
        with torch.device("meta"):
            return self.build_model(preset)

    def param_count(self, preset_name: str) -> int:
        """Parameters of a preset's model, built on the meta device (no memory, no init)."""
        return sum(p.numel() for p in self._meta_model(self.presets[preset_name]).parameters())

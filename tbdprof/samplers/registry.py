"""The default sampler set for a rank."""

from __future__ import annotations

from .base import Sampler
from .nvml import NvmlSampler, TorchAllocatorSampler
from .system import DiskSampler, HostCpuSampler, HostMemorySampler, NetworkSampler, ProcessSampler


def default_samplers(local_rank: int) -> list[Sampler]:
    """Every sampler whose ``scope`` this rank covers: process and device samplers on every rank,
    host samplers only on local rank 0 (a host's counters are recorded once, not once per rank)."""
    every = [ProcessSampler(), NvmlSampler(local_rank), TorchAllocatorSampler(local_rank),
             HostCpuSampler(), HostMemorySampler(), NetworkSampler(), DiskSampler()]
    return [s for s in every if s.scope != "host" or local_rank == 0]

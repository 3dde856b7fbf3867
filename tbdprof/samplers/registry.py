"""The default sampler set for a rank."""

from __future__ import annotations

from .base import Sampler
from .nvml import NvmlSampler, TorchAllocatorSampler
from .system import DiskSampler, HostCpuSampler, HostMemorySampler, NetworkSampler, ProcessSampler


def default_samplers(local_rank: int) -> list[Sampler]:
    """Process samplers for every rank; host samplers only on local rank 0."""
    samplers: list[Sampler] = [ProcessSampler(), NvmlSampler(local_rank), TorchAllocatorSampler(local_rank)]
    if local_rank == 0:
        samplers += [HostCpuSampler(), HostMemorySampler(), NetworkSampler(), DiskSampler()]
    return samplers

"""Samplers: periodic readings of CPU, memory, network, disk, process I/O and GPUs.

Each sampler says whether it can run here (``is_available``) and, once
started, emits ``(metric, device, value)`` readings. A sampler that raises is
logged once and disabled by the sampling thread; it never stops the others.
"""

from .base import Emit, Sampler
from .registry import default_samplers

__all__ = ["Emit", "Sampler", "default_samplers"]

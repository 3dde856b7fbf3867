"""GPU readings through NVML (nvidia-ml-py), one handle per device taken once.

The metrics are a table of (metric, getter): adding one is one line, not a class.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from .base import Emit, Sampler

log = logging.getLogger("tbdprof")


def _nvml():
    import pynvml  # nvidia-ml-py

    return pynvml


def _getters(nv) -> list[tuple[str, Callable[[Any], float]]]:
    pcie_kb = 1024.0  # nvmlDeviceGetPcieThroughput reports KB/s
    return [
        ("gpu.util_pct", lambda h: nv.nvmlDeviceGetUtilizationRates(h).gpu),
        ("gpu.mem_util_pct", lambda h: nv.nvmlDeviceGetUtilizationRates(h).memory),
        ("gpu.mem_used_bytes", lambda h: nv.nvmlDeviceGetMemoryInfo(h).used),
        ("gpu.mem_total_bytes", lambda h: nv.nvmlDeviceGetMemoryInfo(h).total),
        ("gpu.power_w", lambda h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
        ("gpu.energy_j", lambda h: nv.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0),
        ("gpu.temp_c", lambda h: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
        ("gpu.sm_clock_mhz", lambda h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
        ("gpu.mem_clock_mhz", lambda h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
        ("gpu.pcie_tx_bytes_s", lambda h: nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_TX_BYTES) * pcie_kb),
        ("gpu.pcie_rx_bytes_s", lambda h: nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_RX_BYTES) * pcie_kb),
    ]


def visible_physical_index(local_index: int, env=None) -> str | int:
    """Map a CUDA-visible device index to NVML's: an int index or a UUID string."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return local_index
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if local_index >= len(ids):
        return local_index
    v = ids[local_index]
    return int(v) if v.isdigit() else v


class NvmlSampler(Sampler):
    """Utilization, memory, power, energy, temperature, clocks and PCIe of this rank's GPU."""

    name = "nvml"
    scope = "device"

    def __init__(self, local_index: int):
        self._local_index = local_index
        self._handle = None
        self._getters: list[tuple[str, Callable[[Any], float]]] = []
        self._label = f"gpu{local_index}"

    def is_available(self) -> bool:
        try:
            nv = _nvml()
            nv.nvmlInit()
        except Exception as e:  # noqa: BLE001 - no driver, no library, no GPU
            log.info("tbdprof: no NVIDIA GPU sampling (%s)", e.__class__.__name__)
            return False
        try:
            count = nv.nvmlDeviceGetCount()
        except Exception:  # noqa: BLE001
            count = 0
        if count == 0:
            nv.nvmlShutdown()
            return False
        return True

    def start(self) -> None:
        nv = _nvml()
        target = visible_physical_index(self._local_index)
        if isinstance(target, str):
            self._handle = nv.nvmlDeviceGetHandleByUUID(target)
        else:
            self._handle = nv.nvmlDeviceGetHandleByIndex(target % nv.nvmlDeviceGetCount())
        self._label = f"gpu{target}" if isinstance(target, int) else target
        # Keep only the getters this device answers (e.g. no energy counter on old boards).
        for metric, get in _getters(nv):
            try:
                get(self._handle)
                self._getters.append((metric, get))
            except Exception:  # noqa: BLE001
                log.info("tbdprof: %s not supported on %s", metric, self._label)

    def sample(self, emit: Emit) -> None:
        for metric, get in self._getters:
            emit(metric, self._label, float(get(self._handle)))

    def close(self) -> None:
        try:
            _nvml().nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


class TorchAllocatorSampler(Sampler):
    """The CUDA caching allocator's allocated and reserved bytes, once CUDA is initialised."""

    name = "torch_allocator"
    scope = "device"

    def is_available(self) -> bool:
        import sys

        torch = sys.modules.get("torch")
        return bool(torch is not None and torch.cuda.is_available())

    def sample(self, emit: Emit) -> None:
        import torch

        if not torch.cuda.is_initialized():
            return
        dev = torch.cuda.current_device()
        label = f"cuda:{dev}"
        emit("torch.allocated_bytes", label, float(torch.cuda.memory_allocated(dev)))
        emit("torch.reserved_bytes", label, float(torch.cuda.memory_reserved(dev)))

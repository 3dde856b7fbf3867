"""GPU readings through NVML (nvidia-ml-py), one handle per device taken once.

The metrics are tables, not classes: adding one is one line.

* ``_getters``: (metric, getter) rows; ``getter(handle)`` returns a value or
  None (no new reading this tick). Several rows for one metric are
  alternatives in order of preference: ``start`` keeps the first the device
  answers. Utilization prefers ``nvmlDeviceGetSamples``, averaging the
  driver's sample buffer since the previous tick (NVML computes each sample
  over a window of 1/6 s to 1 s, so one instantaneous reading per tick would
  alias), and falls back to ``nvmlDeviceGetUtilizationRates``.
* ``GPM_METRICS``: (metric, GPM metric id) rows read together, once per tick,
  from two consecutive GPM samples (Hopper and newer; absent elsewhere).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from .base import Emit, Sampler

log = logging.getLogger("tbdprof")

KIB = 1024.0
NVLINK_ALL_LINKS = 0xFFFFFFFF  # field-value scopeId: the sum over every link

Getter = Callable[[Any], "float | None"]


def _nvml():
    import pynvml  # nvidia-ml-py

    return pynvml


# sample value type -> field of the c_nvmlValue_t union (NVML_VALUE_TYPE_* order)
_VALUE_FIELDS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")


def _value(value_type: int, v) -> float:
    return float(getattr(v, _VALUE_FIELDS[value_type]))


class SampleAverage:
    """Mean of the driver's samples of one kind since the previous call, or None when none are new."""

    def __init__(self, nv, kind: int):
        self.nv, self.kind, self.last_ts = nv, kind, 0

    def __call__(self, handle) -> float | None:
        try:
            value_type, samples = self.nv.nvmlDeviceGetSamples(handle, self.kind, self.last_ts)
        except self.nv.NVMLError as e:
            if getattr(e, "value", None) == self.nv.NVML_ERROR_NOT_FOUND:
                return None  # no sample since last_ts
            raise
        samples = [s for s in samples if s.timeStamp > self.last_ts]
        if not samples:
            return None
        self.last_ts = max(s.timeStamp for s in samples)
        return sum(_value(value_type, s.sampleValue) for s in samples) / len(samples)


def _process_memory(nv, pid: int) -> Getter:
    def get(handle) -> float | None:
        for p in nv.nvmlDeviceGetComputeRunningProcesses(handle):
            if p.pid == pid:
                used = p.usedGpuMemory  # None where the driver does not say (some containers, MIG)
                return None if used is None else float(used)
        return None  # no CUDA context yet, or another PID namespace

    return get


def _field_counter(nv, field_id: int, scale: float) -> Getter:
    def get(handle) -> float:
        (v,) = nv.nvmlDeviceGetFieldValues(handle, [(field_id, NVLINK_ALL_LINKS)])
        if v.nvmlReturn != nv.NVML_SUCCESS:
            raise nv.NVMLError(v.nvmlReturn)
        return _value(v.valueType, v.value) * scale

    return get


def _getters(nv, pid: int) -> list[tuple[str, Getter]]:
    """The (metric, getter) table for one device (stateful getters are fresh per call)."""
    rates = nv.nvmlDeviceGetUtilizationRates
    return [
        ("gpu.util_pct", SampleAverage(nv, nv.NVML_GPU_UTILIZATION_SAMPLES)),
        ("gpu.util_pct", lambda h: rates(h).gpu),
        ("gpu.mem_util_pct", SampleAverage(nv, nv.NVML_MEMORY_UTILIZATION_SAMPLES)),
        ("gpu.mem_util_pct", lambda h: rates(h).memory),
        ("gpu.mem_used_bytes", lambda h: nv.nvmlDeviceGetMemoryInfo(h).used),
        ("gpu.mem_total_bytes", lambda h: nv.nvmlDeviceGetMemoryInfo(h).total),
        ("gpu.process_mem_bytes", _process_memory(nv, pid)),
        ("gpu.power_w", lambda h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
        ("gpu.energy_j", lambda h: nv.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0),
        ("gpu.temp_c", lambda h: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
        ("gpu.sm_clock_mhz", lambda h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
        ("gpu.mem_clock_mhz", lambda h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
        ("gpu.pcie_tx_bytes_s", lambda h: nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_TX_BYTES) * KIB),
        ("gpu.pcie_rx_bytes_s", lambda h: nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_RX_BYTES) * KIB),
        ("gpu.nvlink_tx_bytes", _field_counter(nv, nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, KIB)),
        ("gpu.nvlink_rx_bytes", _field_counter(nv, nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, KIB)),
    ]


# (metric, NVML GPM metric id name): percentages over the interval between two GPM samples.
GPM_METRICS = (
    ("gpu.sm_util_pct", "NVML_GPM_METRIC_SM_UTIL"),
    ("gpu.sm_occupancy_pct", "NVML_GPM_METRIC_SM_OCCUPANCY"),
    ("gpu.tensor_util_pct", "NVML_GPM_METRIC_ANY_TENSOR_UTIL"),
    ("gpu.fp32_util_pct", "NVML_GPM_METRIC_FP32_UTIL"),
    ("gpu.fp16_util_pct", "NVML_GPM_METRIC_FP16_UTIL"),
    ("gpu.dram_bw_util_pct", "NVML_GPM_METRIC_DRAM_BW_UTIL"),
)


class Gpm:
    """GPM (GPU Performance Monitoring) metrics: one ``nvmlGpmMetricsGet`` per tick
    over the previous and the current sample; two sample buffers, swapped."""

    def __init__(self, nv, handle):
        self.nv, self.handle = nv, handle
        self.rows = [(metric, getattr(nv, mid)) for metric, mid in GPM_METRICS]
        self.samples = [nv.nvmlGpmSampleAlloc(), nv.nvmlGpmSampleAlloc()]
        nv.nvmlGpmSampleGet(handle, self.samples[0])

    @staticmethod
    def supported(nv, handle) -> bool:
        try:
            return bool(nv.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
        except Exception:  # noqa: BLE001 - older driver or library: no GPM
            return False

    def read(self) -> dict[str, float]:
        """Metric -> value over the interval since the previous call (metrics the device refused left out)."""
        nv = self.nv
        prev, cur = self.samples
        nv.nvmlGpmSampleGet(self.handle, cur)
        req = nv.c_nvmlGpmMetricsGet_t()
        req.version = nv.NVML_GPM_METRICS_GET_VERSION
        req.numMetrics = len(self.rows)
        req.sample1, req.sample2 = prev, cur
        for i, (_metric, mid) in enumerate(self.rows):
            req.metrics[i].metricId = mid
        nv.nvmlGpmMetricsGet(req)
        self.samples = [cur, prev]
        return {metric: float(req.metrics[i].value) for i, (metric, _mid) in enumerate(self.rows)
                if req.metrics[i].nvmlReturn == nv.NVML_SUCCESS}

    def close(self) -> None:
        for s in self.samples:
            self.nv.nvmlGpmSampleFree(s)


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
    """This rank's GPU: utilization, memory (device and this process), power, energy,
    temperature, clocks, PCIe and NVLink traffic, and GPM pipe utilizations where present."""

    name = "nvml"
    scope = "device"

    def __init__(self, local_index: int):
        self._local_index = local_index
        self._handle = None
        self._getters: list[tuple[str, Getter]] = []
        self._gpm: Gpm | None = None
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
        # Keep the first getter of each metric the device answers (e.g. no energy counter on old boards).
        kept: set[str] = set()
        for metric, get in _getters(nv, os.getpid()):
            if metric in kept:
                continue
            try:
                get(self._handle)
            except Exception:  # noqa: BLE001
                log.info("tbdprof: %s: one way of reading %s is not supported", self._label, metric)
                continue
            self._getters.append((metric, get))
            kept.add(metric)
        if Gpm.supported(nv, self._handle):
            try:
                self._gpm = Gpm(nv, self._handle)
            except Exception as e:  # noqa: BLE001 - e.g. not permitted in this container
                log.info("tbdprof: %s: no GPM metrics (%s)", self._label, e.__class__.__name__)

    def sample(self, emit: Emit) -> None:
        for metric, get in self._getters:
            v = get(self._handle)
            if v is not None:
                emit(metric, self._label, float(v))
        if self._gpm is not None:
            try:
                readings = self._gpm.read()
            except Exception as e:  # noqa: BLE001 - GPM alone is dropped, the rest goes on
                log.warning("tbdprof: %s: GPM metrics disabled (%s)", self._label, e.__class__.__name__)
                self._gpm.close()
                self._gpm = None
                return
            for metric, v in readings.items():
                emit(metric, self._label, v)

    def close(self) -> None:
        try:
            if self._gpm is not None:
                self._gpm.close()
        finally:
            self._shutdown()

    @staticmethod
    def _shutdown() -> None:
        try:
            _nvml().nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


# (metric, torch.cuda.memory_stats key) for the caching allocator
ALLOCATOR_STATS = (
    ("torch.allocated_bytes", "allocated_bytes.all.current"),
    ("torch.reserved_bytes", "reserved_bytes.all.current"),
    ("torch.inactive_split_bytes", "inactive_split_bytes.all.current"),
    ("torch.alloc_retries", "num_alloc_retries"),
)


class TorchAllocatorSampler(Sampler):
    """The CUDA caching allocator (one ``torch.cuda.memory_stats`` per tick), once CUDA is initialised:
    allocated, reserved, inactive split blocks (fragmentation) and cudaMalloc retries.

    The device is ``local_index`` modulo the visible devices (the runner's
    mapping), not the current device: that is per thread, and this runs on
    the sampling thread.
    """

    name = "torch_allocator"
    scope = "device"

    def __init__(self, local_index: int = 0):
        self._local_index = local_index

    def is_available(self) -> bool:
        import sys

        torch = sys.modules.get("torch")
        return bool(torch is not None and torch.cuda.is_available())

    def sample(self, emit: Emit) -> None:
        import torch

        if not torch.cuda.is_initialized():
            return
        dev = self._local_index % torch.cuda.device_count()
        label = f"cuda:{dev}"
        stats = torch.cuda.memory_stats(dev)
        for metric, key in ALLOCATOR_STATS:
            emit(metric, label, float(stats.get(key, 0)))

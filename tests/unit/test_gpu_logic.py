"""The GPU path's logic, on CPU: the NVML getter table and GPM against a fake
``pynvml`` module, CUDA-event span resolution with fake events, the CPU
fallback of ``cuda_phase``, the allocator sampler against faked torch.cuda
calls, analysis/gpu.py on a synthetic store, and ``--amp`` handling.

These check tbdprof's own logic only; nothing here says that the real NVML
or CUDA calls behave as faked (tests/gpu/ does that, on a GPU machine).
"""

from __future__ import annotations

import threading
import types

import pynvml
import pytest
import torch

from tbdprof import clock, cuda, schema
from tbdprof.analysis.gpu import UNAVAILABLE, gpu_figures
from tbdprof.analysis.load import open_run
from tbdprof.samplers import nvml
from tbdprof.workloads import train

from storebuilder import gauge, steps, write_rank, write_run


# --- a fake pynvml --------------------------------------------------------------


class FakeNvmlError(Exception):
    def __init__(self, value):
        super().__init__(value)
        self.value = value


def _sample(ts, v):
    s = pynvml.c_nvmlSample_t()
    s.timeStamp, s.sampleValue.uiVal = ts, v
    return s


def fake_nvml(gpm: bool = True, samples: bool = True, energy: bool = True, pid: int = 4242):
    """A module object with the pynvml calls tbdprof makes; real ctypes structures where it builds them."""
    nv = types.SimpleNamespace(**{k: getattr(pynvml, k) for k in dir(pynvml) if k.startswith("NVML_")})
    nv.NVMLError = FakeNvmlError
    nv.c_nvmlGpmMetricsGet_t = pynvml.c_nvmlGpmMetricsGet_t
    nv.buffer = [_sample(100, 40), _sample(200, 60)]  # the driver's utilization samples
    nv.gpm_values = {pynvml.NVML_GPM_METRIC_FP32_UTIL: 12.5, pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 30.0}
    nv.calls = []

    def get_samples(h, kind, last_ts):
        nv.calls.append(("samples", kind, last_ts))
        if not samples:
            raise FakeNvmlError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        new = [s for s in nv.buffer if s.timeStamp > last_ts]
        if not new:
            raise FakeNvmlError(pynvml.NVML_ERROR_NOT_FOUND)
        return pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, new

    def energy_fn(h):
        if not energy:
            raise FakeNvmlError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 5_000_000  # mJ

    def field_values(h, ids):
        out = []
        for fid, scope in ids:
            v = pynvml.c_nvmlFieldValue_t()
            v.fieldId, v.scopeId, v.valueType = fid, scope, pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
            v.value.ullVal = 3 if fid == pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX else 4
            v.nvmlReturn = pynvml.NVML_SUCCESS
            out.append(v)
        return out

    def gpm_get(req):
        for i in range(req.numMetrics):
            mid = req.metrics[i].metricId
            if mid in nv.gpm_values:
                req.metrics[i].value, req.metrics[i].nvmlReturn = nv.gpm_values[mid], pynvml.NVML_SUCCESS
            else:
                req.metrics[i].nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return req

    proc = types.SimpleNamespace(pid=pid, usedGpuMemory=123 * 2**20)
    nv.__dict__.update(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: ("h", i), nvmlDeviceGetHandleByUUID=lambda u: ("h", u),
        nvmlDeviceGetSamples=get_samples,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=77, memory=33),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=10 * 2**30, total=80 * 2**30),
        nvmlDeviceGetComputeRunningProcesses=lambda h: [types.SimpleNamespace(pid=1, usedGpuMemory=1), proc],
        nvmlDeviceGetPowerUsage=lambda h: 250_000, nvmlDeviceGetTotalEnergyConsumption=energy_fn,
        nvmlDeviceGetTemperature=lambda h, s: 60, nvmlDeviceGetClockInfo=lambda h, c: 1980,
        nvmlDeviceGetPcieThroughput=lambda h, c: 2, nvmlDeviceGetFieldValues=field_values,
        nvmlGpmQueryDeviceSupport=lambda h: types.SimpleNamespace(isSupportedDevice=int(gpm)),
        nvmlGpmSampleAlloc=pynvml.c_nvmlGpmSample_t, nvmlGpmSampleGet=lambda h, s: s, nvmlGpmSampleFree=lambda s: None,
        nvmlGpmMetricsGet=gpm_get,
    )
    return nv


def _sampler(monkeypatch, **kw):
    nv = fake_nvml(**kw)
    monkeypatch.setattr(nvml, "_nvml", lambda: nv)
    monkeypatch.setattr(nvml.os, "getpid", lambda: 4242)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    s = nvml.NvmlSampler(0)
    assert s.is_available()
    s.start()
    return s, nv


def _readings(s) -> dict[str, float]:
    got = []
    s.sample(lambda m, d, v: got.append((m, d, v)))
    assert {d for _, d, _ in got} == {"gpu0"}
    return {m: v for m, _, v in got}


def test_every_nvml_metric_is_in_the_schema():
    names = {m for m, _ in nvml._getters(fake_nvml(), 1)} | {m for m, _ in nvml.GPM_METRICS}
    assert names <= set(schema.METRICS)
    assert {m for m, _ in nvml.ALLOCATOR_STATS} <= set(schema.METRICS)


def test_the_fake_matches_the_real_pynvml_names_and_arguments():
    """Every NVML call faked here (so every call the sampler makes) exists in nvidia-ml-py with that many arguments."""
    import inspect

    faked = {k: v for k, v in vars(fake_nvml()).items() if k.startswith("nvml")}
    assert len(faked) >= 20
    for name, fake in faked.items():
        real = getattr(pynvml, name, None)
        assert callable(real), f"pynvml has no {name}"
        if inspect.isfunction(fake):
            params = inspect.signature(real).parameters.values()
            required = sum(p.default is inspect.Parameter.empty for p in params)
            assert required <= len(inspect.signature(fake).parameters) <= len(params), name


def test_table_reads_every_metric_once_with_units(monkeypatch):
    s, nv = _sampler(monkeypatch)
    nv.buffer.append(_sample(300, 90))
    r = _readings(s)
    assert r["gpu.util_pct"] == 90  # only the sample newer than the start-up probe
    assert r["gpu.mem_used_bytes"] == 10 * 2**30 and r["gpu.mem_total_bytes"] == 80 * 2**30
    assert r["gpu.process_mem_bytes"] == 123 * 2**20  # this pid's entry, not pid 1's
    assert r["gpu.power_w"] == 250 and r["gpu.energy_j"] == 5000
    assert r["gpu.pcie_tx_bytes_s"] == 2048  # KB/s -> bytes/s
    assert r["gpu.nvlink_tx_bytes"] == 3 * 1024 and r["gpu.nvlink_rx_bytes"] == 4 * 1024
    assert r["gpu.fp32_util_pct"] == 12.5 and r["gpu.tensor_util_pct"] == 30
    assert "gpu.sm_occupancy_pct" not in r  # refused by the device: left out, not zero
    assert [m for m, _ in s._getters].count("gpu.util_pct") == 1


def test_utilization_samples_are_averaged_between_ticks(monkeypatch):
    s, nv = _sampler(monkeypatch)
    nv.buffer += [_sample(300, 10), _sample(400, 30), _sample(500, 50)]
    assert _readings(s)["gpu.util_pct"] == pytest.approx(30)
    assert "gpu.util_pct" not in _readings(s)  # nothing new: no reading rather than a repeat
    assert nv.calls[-2] == ("samples", pynvml.NVML_GPU_UTILIZATION_SAMPLES, 500)


def test_utilization_falls_back_to_rates_and_unsupported_getters_are_dropped(monkeypatch):
    s, _ = _sampler(monkeypatch, samples=False, energy=False)
    r = _readings(s)
    assert r["gpu.util_pct"] == 77 and r["gpu.mem_util_pct"] == 33
    assert "gpu.energy_j" not in r


def test_no_gpm_means_no_gpm_metrics(monkeypatch):
    s, _ = _sampler(monkeypatch, gpm=False)
    r = _readings(s)
    assert s._gpm is None and not {m for m, _ in nvml.GPM_METRICS} & set(r)


def test_a_failing_gpm_read_drops_gpm_only(monkeypatch):
    s, nv = _sampler(monkeypatch)
    nv.nvmlGpmMetricsGet = lambda req: (_ for _ in ()).throw(FakeNvmlError(999))
    r = _readings(s)
    assert s._gpm is None and r["gpu.power_w"] == 250


def test_allocator_sampler_reads_memory_stats_of_its_own_device(monkeypatch):
    seen = []
    stats = {"allocated_bytes.all.current": 100, "reserved_bytes.all.current": 400, "inactive_split_bytes.all.current": 50}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda dev: seen.append(dev) or stats)
    s = nvml.TorchAllocatorSampler(3)
    got = {}
    assert s.is_available()
    s.sample(lambda m, d, v: got.__setitem__((m, d), v))
    assert seen == [1]
    assert got == {("torch.allocated_bytes", "cuda:1"): 100, ("torch.reserved_bytes", "cuda:1"): 400,
                   ("torch.inactive_split_bytes", "cuda:1"): 50, ("torch.alloc_retries", "cuda:1"): 0}


# --- CUDA-event spans with fake events ----------------------------------------------


class FakeEvent:
    def __init__(self, gpu_ms: float, done: bool = True):
        self.gpu_ms, self.done = gpu_ms, done

    def query(self):
        return self.done

    def synchronize(self):
        self.done = True

    def elapsed_time(self, other):
        return other.gpu_ms - self.gpu_ms


class FakeEvents:
    """Events at the test's GPU time ``gpu_ms``; recorded events stay pending until the test completes them."""

    def __init__(self):
        self.gpu_ms = 0.0
        self.recorded: list[FakeEvent] = []
        self.anchors = 0

    def record(self):
        ev = FakeEvent(self.gpu_ms, done=False)
        self.recorded.append(ev)
        return ev

    def anchor(self):
        self.anchors += 1
        return clock.now_ns(), FakeEvent(self.gpu_ms)


def _pending():
    spans = []
    return cuda.CudaPending(spans.append, events=FakeEvents()), spans


def test_spans_are_placed_through_the_anchor_and_wait_for_their_events():
    p, spans = _pending()
    p.events.gpu_ms = 0
    begun = p.begin()
    p.events.gpu_ms = 2.5  # the GPU ran the phase for 2.5 ms, 0.5 ms after the anchor
    begun[1].gpu_ms = 0.5
    end = p.record()
    p.add(3, "h2d", schema.KIND_PHASE, None, begun, end)
    p.resolve()
    assert spans == [] and len(p.items) == 1  # end event not complete yet
    for ev in p.events.recorded:
        ev.done = True
    p.resolve()
    t = begun[0][0]
    assert spans == [schema.SpanRow(3, "h2d", schema.KIND_PHASE, t + 500_000, t + 2_500_000)]
    assert not p.items


def test_force_waits_for_every_event_and_one_bad_event_loses_only_its_span():
    p, spans = _pending()
    good = p.begin()
    p.add(0, "allreduce", schema.KIND_COMM, 64, good, p.record())
    bad_end = p.record()
    bad_end.synchronize = lambda: (_ for _ in ()).throw(RuntimeError("event not recorded"))
    p.add(0, "allreduce", schema.KIND_COMM, 64, p.begin(), bad_end)
    p.resolve(force=True)
    assert [s[5] for s in spans] == [64] and not p.items


def test_spans_added_while_resolving_are_not_lost():
    p, spans = _pending()

    def producer():
        for i in range(3000):
            b = p.begin()
            b[1].done = True
            end = p.record()
            end.done = i % 3 != 0  # a third stay pending until the final forced resolve
            p.add(i, "x", schema.KIND_COMM, 1, b, end)

    t = threading.Thread(target=producer)
    t.start()
    while t.is_alive():
        p.resolve()
    p.resolve(force=True)
    assert sorted(s[0] for s in spans) == list(range(3000))


def test_anchor_is_renewed_only_when_old():
    p, _ = _pending()
    p.begin(), p.begin()
    assert p.events.anchors == 1
    p._anchor = (p._anchor[0] - 2_000_000_000, p._anchor[1])
    p.begin()
    assert p.events.anchors == 2


def test_cuda_phase_is_the_host_phase_without_cuda_and_event_timed_with_it(tmp_path, monkeypatch):
    import tbdprof

    prof = tbdprof.Profiler(out=tmp_path, run_id="r", samplers=[], clock_sync=False)
    with prof:
        prof.begin_step()
        assert not cuda.in_use()
        with prof.cuda_phase("h2d"):
            pass
        assert prof._cuda is None and prof._spans[-1][1:3] == ("h2d", schema.KIND_PHASE)
        monkeypatch.setattr(cuda, "in_use", lambda: True)
        prof._cuda = cuda.CudaPending(prof._record_span, events=FakeEvents())
        with prof.cuda_phase("forward"):
            prof._cuda.events.gpu_ms = 4.0
        for ev in prof._cuda.events.recorded:
            ev.done = True
        prof.end_step()
    run = open_run(tmp_path / "r")
    (row,) = run.sql("SELECT step, kind, end_ns - start_ns FROM spans WHERE name = 'forward'")
    assert row == (0, schema.KIND_PHASE, 4_000_000)


class TickingEvents(FakeEvents):
    """Each recorded event is 1 ms of GPU time after the previous one."""

    def record(self):
        ev = super().record()
        self.gpu_ms += 1.0
        return ev


def test_instrumented_phases_are_event_timed_when_the_model_is_on_a_gpu(tmp_path, monkeypatch):
    import importlib

    import tbdprof

    monkeypatch.setattr(importlib.import_module("tbdprof.phases"), "on_gpu", lambda module: True)
    prof = tbdprof.Profiler(out=tmp_path, run_id="r", samplers=[], clock_sync=False)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with prof:
        prof._cuda = cuda.CudaPending(prof._record_span, events=TickingEvents())
        tbdprof.instrument(prof, model, opt)
        for _ in range(3):
            model(torch.randn(4, 8)).sum().backward()
            opt.step()
            opt.zero_grad()
    rows = open_run(tmp_path / "r").sql("SELECT step, name, end_ns - start_ns FROM spans WHERE kind = 'phase' ORDER BY step, start_ns")
    # forward: begin, end; backward: begin (autograd reaches the output), end; optimizer: begin, end = 1 ms each
    assert rows == [(s, n, 1_000_000) for s in range(3) for n in ("forward", "backward", "optimizer")]


# --- analysis/gpu.py on a synthetic store -----------------------------------------------


def test_gpu_figures_per_rank_with_and_without_gpm(tmp_path):
    run_dir = write_run(tmp_path / "run", world_size=2)
    span_rows = steps(10)
    common = (gauge("gpu.util_pct", [80, 90], device="gpu0") + gauge("gpu.power_w", [300, 500], device="gpu0")
              + gauge("torch.reserved_bytes", [1000, 1000], device="cuda:0")
              + gauge("torch.allocated_bytes", [600, 800], device="cuda:0")
              + gauge("torch.inactive_split_bytes", [100, 300], device="cuda:0")
              + gauge("gpu.energy_j", [100, 140], device="gpu0"))
    write_rank(run_dir, 0, spans=span_rows, world_size=2,
               samples=common + gauge("gpu.fp32_util_pct", [10, 20], device="gpu0") + gauge("gpu.tensor_util_pct", [40, 60], device="gpu0"))
    write_rank(run_dir, 1, spans=span_rows, world_size=2, samples=common)
    fig = gpu_figures(open_run(run_dir))
    r0, r1 = fig["per_rank"]["0"], fig["per_rank"]["1"]
    assert fig["gpu_recorded"] and r0["devices"] == ["cuda:0", "gpu0"]
    assert r0["gpu_compute_util_pct"] == pytest.approx(85) and r0["fp32_util_pct"] == pytest.approx(15)
    assert r0["tensor_util_pct"] == pytest.approx(50)
    assert r1["fp32_util_pct"] == UNAVAILABLE and r1["tensor_util_pct"] == UNAVAILABLE and "gpm" in fig["unavailable"]
    assert r1["memory"]["fragmentation"] == pytest.approx(0.2) and r1["memory"]["allocator_slack_bytes"] == pytest.approx(300)
    assert r1["power"] == {"avg_w": 400, "max_w": 500, "energy_j": 40}


def test_gpu_figures_on_a_cpu_run(tmp_path):
    run_dir = write_run(tmp_path / "run", world_size=1)
    write_rank(run_dir, 0, spans=steps(3), samples=gauge("cpu.process_pct", [50, 60]))
    assert gpu_figures(open_run(run_dir)) == {"per_rank": {}, "gpu_recorded": False, "unavailable": gpu_figures.__globals__["WHY_UNAVAILABLE"]}


# --- the runner's --amp --------------------------------------------------------------------


def test_amp_options():
    autocast, scaler = train._mixed_precision("none", torch.device("cpu"))
    assert scaler is None
    with autocast():
        assert not torch.is_autocast_enabled("cpu")
    autocast, scaler = train._mixed_precision("bf16", torch.device("cpu"))
    with autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert scaler is None and train._mixed_precision("fp16", torch.device("cpu"))[1] is not None


def test_amp_fp16_is_refused_for_workloads_with_their_own_step():
    args = train.build_parser().parse_args(["wgan", "--amp", "fp16"])
    with pytest.raises(train.UsageError, match="bf16"):
        train.validate(args)
    assert train.runner_argv(train.build_parser().parse_args(["resnet50", "--amp", "bf16"]))[-2:] == ["--amp", "bf16"]

"""The recorder on a real GPU: NVML rows, GPM on Hopper, the CUDA memory breakdown,
CUDA-event phases, NCCL comm spans and ``--amp bf16``. Skipped without CUDA."""

from __future__ import annotations

import time

import pytest
import torch

import tbdprof
from gpucommon import HOPPER, cuda_run, needs_cuda, rank_json
from tbdprof.analysis.diagnose import diagnose_run
from tbdprof.analysis.gpu import UNAVAILABLE, gpu_figures
from tbdprof.analysis.load import open_run

pytestmark = needs_cuda

HZ, BUSY_S = 20, 3.0


@pytest.fixture(scope="module")
def busy_run(tmp_path_factory):
    """A profiled loop of FP32 (non-TF32) and bf16 matrix products for BUSY_S seconds at HZ."""
    out = tmp_path_factory.mktemp("busy")
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(4096, 4096, device="cuda")
    with tbdprof.Profiler(out=out, run_id="busy", sample_hz=HZ, clock_sync=False) as prof:
        t0 = time.monotonic()
        while time.monotonic() - t0 < BUSY_S:
            with prof.step():
                with prof.cuda_phase("fp32"):
                    a = torch.tanh(a @ a)
                with prof.cuda_phase("bf16"):
                    (a.bfloat16() @ a.bfloat16()).float()
                torch.cuda.synchronize()
    return open_run(out / "busy")


def _values(run, metric):
    return [v for (v,) in run.sql("SELECT value FROM samples WHERE metric = ? ORDER BY ts_ns", [metric])]


def test_nvml_rows_at_the_sample_rate_with_plausible_values(busy_run):
    power = _values(busy_run, "gpu.power_w")
    assert len(power) >= 0.6 * HZ * BUSY_S and all(10 < p < 2000 for p in power)
    util = _values(busy_run, "gpu.util_pct")
    assert util and max(util) > 50 and all(0 <= u <= 100 for u in util)
    used, total = _values(busy_run, "gpu.mem_used_bytes"), _values(busy_run, "gpu.mem_total_bytes")
    assert 0 < max(used) <= total[0]
    assert all(10 < t < 110 for t in _values(busy_run, "gpu.temp_c"))
    assert max(_values(busy_run, "gpu.sm_clock_mhz")) > 500
    assert max(_values(busy_run, "torch.allocated_bytes")) >= 4096 * 4096 * 4
    proc = _values(busy_run, "gpu.process_mem_bytes")
    if proc:  # where the driver reports per-process memory
        assert max(proc) >= 4096 * 4096 * 4
    meta = rank_json(busy_run.path)
    assert "nvml" in meta["samplers_active"] and meta["sampler_cpu_s"] / meta["sampler_ticks"] < 0.005


@pytest.mark.skipif(not HOPPER, reason="GPM metrics exist on Hopper and newer GPUs only")
def test_gpm_metrics_on_hopper(busy_run):
    for metric in ("gpu.sm_util_pct", "gpu.sm_occupancy_pct", "gpu.tensor_util_pct", "gpu.fp32_util_pct", "gpu.dram_bw_util_pct"):
        vals = _values(busy_run, metric)
        assert vals and all(0 <= v <= 100 for v in vals), metric
    assert max(_values(busy_run, "gpu.fp32_util_pct")) > 0 and max(_values(busy_run, "gpu.tensor_util_pct")) > 0
    fig = gpu_figures(busy_run)["per_rank"]["0"]
    assert isinstance(fig["fp32_util_pct"], float) and isinstance(fig["tensor_util_pct"], float)


def _matmul_run(out, run_id: str, dtype) -> object:
    """A profiled loop of 8192^3 matrix products in ``dtype`` (TF32 off) for BUSY_S seconds, 6+ steps."""
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    with tbdprof.Profiler(out=out, run_id=run_id, sample_hz=HZ, clock_sync=False, warmup_steps=1) as prof:
        t0 = time.monotonic()
        while time.monotonic() - t0 < BUSY_S or prof.step_index < 6:
            with prof.step():
                for _ in range(4):
                    a = torch.tanh(a @ a)
                torch.cuda.synchronize()
    return open_run(out / run_id)


@pytest.mark.skipif(not HOPPER, reason="GPM metrics exist on Hopper and newer GPUs only")
def test_fp32_matrix_math_is_diagnosed_and_bf16_is_not(tmp_path):
    fp32 = [f for f in diagnose_run(_matmul_run(tmp_path, "fp32", torch.float32)) if f.kind == "fp32_math"]
    assert len(fp32) == 1 and fp32[0].ranks == [0], fp32
    bf16 = [f for f in diagnose_run(_matmul_run(tmp_path, "bf16", torch.bfloat16)) if f.kind == "fp32_math"]
    assert bf16 == []


def test_gpu_figures_never_guess(busy_run):
    fig = gpu_figures(busy_run)["per_rank"]["0"]
    assert 0 < fig["gpu_compute_util_pct"] <= 100
    if not HOPPER:
        assert fig["fp32_util_pct"] == UNAVAILABLE


def test_cuda_phases_are_device_time_inside_their_step(busy_run):
    rows = busy_run.sql("SELECT p.name, p.start_ns, p.end_ns, s.start_ns, s.end_ns FROM spans p JOIN spans s "
                        "ON p.step = s.step AND s.kind = 'step' WHERE p.kind = 'phase'")
    assert {r[0] for r in rows} == {"fp32", "bf16"}
    slack = 1_000_000  # anchor placement error allowed: 1 ms
    for name, a, b, s, e in rows:
        assert 0 < b - a < e - s and s - slack <= a and b <= e + slack, name


def test_instrument_times_phases_on_the_device(tmp_path):
    model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(8)]).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(512, 2048, device="cuda")
    with tbdprof.Profiler(out=tmp_path, run_id="hooks", sample_hz=HZ, clock_sync=False) as prof:
        tbdprof.instrument(prof, model, opt)
        for _ in range(6):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
    run = open_run(tmp_path / "hooks")
    # device time, in order; a phase may end after its step's host end (the host runs ahead), never start before it
    rows = run.sql("SELECT p.step, list(p.name ORDER BY p.start_ns), min(p.end_ns - p.start_ns), min(p.start_ns - s.start_ns) "
                   "FROM spans p JOIN spans s ON p.step = s.step AND s.kind = 'step' WHERE p.kind = 'phase' GROUP BY p.step")
    assert len(rows) == 6
    for _step, names, shortest, first_start in rows:
        assert names == ["forward", "backward", "optimizer"] and shortest > 0 and first_start > -1_000_000


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory, data_cache):
    return open_run(cuda_run(tmp_path_factory.mktemp("runs"), "resnet"))


def test_cuda_memory_breakdown_weights_are_params_times_bytes(resnet_run):
    params = rank_json(resnet_run.path)["metadata"]["params"]
    rows = resnet_run.sql("SELECT device, weights, gradients, optimizer_state, activations, total, peak FROM memory WHERE step >= 2")
    assert rows
    for device, weights, grads, opt, act, total, peak in rows:
        assert device.startswith("cuda") and weights == params * 4 and grads == params * 4 and opt == params * 4
        assert act > 0 and weights + opt + act <= total <= peak


def test_h2d_phase_from_cuda_events_is_inside_the_step(resnet_run):
    rows = resnet_run.sql("SELECT p.end_ns - p.start_ns, s.end_ns - s.start_ns FROM spans p JOIN spans s "
                          "ON p.step = s.step AND s.kind = 'step' WHERE p.name = 'h2d'")
    assert len(rows) == 12 and all(0 < d < step for d, step in rows)


def test_amp_bf16_run(tmp_path, data_cache):
    run_dir = cuda_run(tmp_path, "amp", "resnet50", "--amp", "bf16")
    meta = rank_json(run_dir)
    assert meta["status"] == "complete" and meta["metadata"]["dtype"] == "bfloat16"
    assert open_run(run_dir).sql("SELECT count(*) FROM spans WHERE kind = 'step'") == [(12,)]

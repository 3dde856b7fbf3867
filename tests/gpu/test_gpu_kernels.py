"""Table ``kernels`` on a real GPU: a deep window of a small CUDA model records its kernels (device, stream,
start/end, the operator and layer that launched each) and the input copies with their bytes; `tbdprof ops`,
the report and the Chrome export read them. Skipped without CUDA (tests/gpu/run_on_device.sh runs it)."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

import tbdprof
from clirun import run_cli
from gpucommon import needs_cuda
from phased_loop import train_phased
from tbdprof import schema
from tbdprof.analysis.load import open_run

pytestmark = needs_cuda

BATCH, FEATURES = 64, 256


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """12 steps of a 2-layer MLP on cuda:0, the batch copied to the GPU in each step (phase h2d); a window at
    steps 6-8."""
    out = tmp_path_factory.mktemp("kernels")
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = [(torch.randn(BATCH, FEATURES), torch.randint(0, 10, (BATCH,))) for _ in range(12)]
    prof = tbdprof.Profiler(out=out, run_id="k", flush_s=1, clock_sync=False, deep_every=6, deep_steps=3, deep_anomaly=False)
    train_phased(prof, model, opt, batches, device="cuda")
    torch.cuda.synchronize()
    return out / "k"


def test_kernels_rows_with_streams_operators_layers_and_copy_bytes(run_dir):
    run = open_run(run_dir)
    assert run.has(schema.KERNELS)
    rows = run.sql("SELECT step, name, kind, device, stream, start_ns, end_ns, op, module, bytes FROM kernels")
    assert rows and {r[0] for r in rows} <= {6, 7, 8}
    assert all(r[2] in schema.KERNEL_KINDS and r[3] == 0 and r[5] < r[6] for r in rows)
    kernels = [r for r in rows if r[2] == "kernel"]
    assert kernels and all(r[4] >= 0 for r in kernels)
    # the matrix products of both Linear layers, tied to their operator and layer
    launched = {(r[7], r[8]) for r in kernels}
    assert any(op in ("aten::addmm", "aten::mm") and m == "0" for op, m in launched), launched
    assert any(op in ("aten::addmm", "aten::mm") and m == "2" for op, m in launched), launched
    copies = [r for r in rows if r[2] == "memcpy"]
    assert BATCH * FEATURES * 4 in {r[9] for r in copies}, copies  # the batch, host to device, once per step
    # inside the window, on the aligned clock
    (mark_start, mark_end), = run.sql(f"SELECT start_ns, end_ns FROM spans_all WHERE name = '{schema.MARK_DEEP_WINDOW}'")
    assert all(mark_start <= r[5] and r[6] <= mark_end + 10**9 for r in rows)
    (w,) = json.loads(next(run_dir.glob("host=*/rank=0/deep.json")).read_text())["windows"]
    assert w["kernels"] == len(rows)


def test_analysis_reads_the_kernels(run_dir, tmp_path):
    ops = json.loads(run_cli("ops", run_dir, "--json").stdout)["kernels"]
    assert ops["recorded"] and ops["top"][0]["gpu_ms"] > 0
    text = run_cli("ops", run_dir).stdout
    assert "GPU kernels, per window step" in text
    run_cli("report", run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["operators"]["kernels"] == "recorded"
    out = tmp_path / "trace.json.gz"
    run_cli("export", run_dir, "--format", "chrome", "-o", out)
    events = json.loads(gzip.open(out).read())["traceEvents"]
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    gpu = [e for e in events if e.get("cat") in schema.KERNEL_KINDS]
    assert gpu and all(threads[(e["pid"], e["tid"])].startswith("GPU 0 stream ") for e in gpu)
    assert any(e["args"].get("op") in ("aten::addmm", "aten::mm") for e in gpu)

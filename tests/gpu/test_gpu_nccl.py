"""NCCL comm spans timed with CUDA events: bytes per step equal the gradient bytes.

Two ranks through ``tbdprof run`` where two GPUs exist; otherwise a 1-rank
NCCL process group in this process (DDP still allreduces every bucket).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import tbdprof
from gpucommon import CUDA, cuda_run, needs_cuda, rank_json
from tbdprof.analysis.load import open_run

pytestmark = needs_cuda
TWO_GPUS = CUDA and torch.cuda.device_count() >= 2


def _check_comm(run, grad_bytes: int, ranks: int) -> None:
    per_step = run.sql("SELECT rank, step, sum(bytes), min(end_ns - start_ns) FROM spans WHERE kind = 'comm' "
                       "AND name = 'allreduce' GROUP BY ALL ORDER BY ALL")
    assert {r for r, *_ in per_step} == set(range(ranks))
    for _rank, _step, nbytes, shortest in per_step:
        assert nbytes == grad_bytes and shortest > 0
    inside = run.sql("SELECT count(*) FROM spans c JOIN spans s ON c.rank = s.rank AND c.step = s.step AND s.kind = 'step' "
                     "WHERE c.kind = 'comm' AND (c.start_ns < s.start_ns - 1000000 OR c.end_ns > s.end_ns + 1000000)")
    assert inside == [(0,)]


@pytest.mark.skipif(not TWO_GPUS, reason="needs two GPUs for a 2-rank NCCL run")
def test_two_rank_nccl_comm_bytes_are_gradient_bytes(tmp_path, data_cache):
    from clirun import run_cli

    run_cli("run", "resnet50", "--nproc", 2, "--device", "cuda", "--preset", "tiny", "--steps", 8, "--out", tmp_path, "--run-id", "nccl")
    params = rank_json(tmp_path / "nccl")["metadata"]["params"]
    _check_comm(open_run(tmp_path / "nccl"), params * 4, 2)


def test_one_rank_nccl_comm_spans(tmp_path):
    dist.init_process_group("nccl", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024)).cuda()
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0], bucket_cap_mb=4)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
        x = torch.randn(256, 1024, device="cuda")
        with tbdprof.Profiler(out=tmp_path, run_id="one", clock_sync=False) as prof:
            prof.watch(ddp, opt)
            for _ in range(5):
                with prof.step():
                    ddp(x).square().mean().backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    torch.cuda.synchronize()
    finally:
        dist.destroy_process_group()
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    run = open_run(tmp_path / "one")
    assert run.sql("SELECT count(DISTINCT bytes) > 1 FROM spans WHERE kind = 'comm'") == [(True,)]  # several buckets
    _check_comm(run, grad_bytes, 1)

"""Shared by the GPU tests: the skip for machines without CUDA and runs of the runner on the GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clirun import run_cli

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(
    not CUDA, reason="no CUDA device on this machine: the GPU tests run on a GPU machine (tests/gpu/run_on_device.sh)")
HOPPER = CUDA and torch.cuda.get_device_capability(0) >= (9, 0)


def cuda_run(out: Path, run_id: str, workload: str = "resnet50", *args) -> Path:
    """``tbdprof run WORKLOAD`` on one GPU (tiny preset, 12 steps, 20 Hz sampling); returns the run folder."""
    run_cli("run", workload, "--nproc", 1, "--device", "cuda", "--preset", "tiny", "--steps", 12, "--warmup", 2,
            "--sample-hz", 20, "--flush-s", 1, "--memory-every", 1, "--out", out, "--run-id", run_id, *args)
    return out / run_id


def rank_json(run_dir: Path, rank: int = 0) -> dict:
    (path,) = run_dir.glob(f"host=*/rank={rank}/rank.json")
    return json.loads(path.read_text())

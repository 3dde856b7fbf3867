"""tests/gpu/run_on_device.sh's environment set-up, on CPU: a virtualenv layered over
the Python that holds torch (here the test's own, itself a virtualenv, as on the GPU
image), tbdprof installed into it without the network, and a clear stop where torch
sees no GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs the whole GPU check")
def test_the_layered_environment_sees_torch_and_tbdprof_and_stops_without_a_gpu(tmp_path):
    venv = tmp_path / "venv"
    env = dict(os.environ, PYTHON=sys.executable, VENV=str(venv), OUT=str(tmp_path / "out"), PIP_NO_INDEX="1")
    proc = subprocess.run(["bash", str(ROOT / "tests/gpu/run_on_device.sh")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"torch {torch.__version__} sees no CUDA device"
    probe = "import duckdb, torch, tbdprof.workloads, tbdprof.analysis; print(torch.__file__); print(tbdprof.workloads.__file__)"
    out = subprocess.run([str(venv / "bin/python"), "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    torch_file, workloads_file = out.splitlines()
    assert torch_file == torch.__file__ and Path(workloads_file) == ROOT / "workloads/__init__.py"
    assert not (venv / "bin/pip").exists()  # pip and the rest are the base Python's

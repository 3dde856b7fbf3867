"""tests/gpu/run_on_device.sh's environment set-up, on CPU: a virtualenv layered over
the Python that holds torch (here the test's own, itself a virtualenv, as on the GPU
image), carried wheels and tbdprof installed into it without the network, and a clear
stop where torch sees no GPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _probe_wheel(tmp_path) -> Path:
    """A folder holding one small wheel the test's own Python lacks, built here without the network."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "pyproject.toml").write_text('[project]\nname = "tbdprof-probe"\nversion = "1.0"\n'
                                        '[tool.setuptools]\npy-modules = ["tbdprof_probe"]\n')
    (pkg / "tbdprof_probe.py").write_text("PROBE = 1\n")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp_path / "wheels"), str(pkg)], check=True, capture_output=True, timeout=120)
    return tmp_path / "wheels"


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs the whole GPU check")
def test_the_layered_environment_sees_torch_and_tbdprof_and_stops_without_a_gpu(tmp_path):
    venv = tmp_path / "venv"
    env = dict(os.environ, PYTHON=sys.executable, VENV=str(venv), OUT=str(tmp_path / "out"), PIP_NO_INDEX="1",
               WHEELS=str(_probe_wheel(tmp_path)))
    proc = subprocess.run(["bash", str(ROOT / "tests/gpu/run_on_device.sh")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"torch {torch.__version__} sees no CUDA device"
    probe = ("import duckdb, torch, tbdprof.workloads, tbdprof.analysis, tbdprof_probe; "
             "print(torch.__file__); print(tbdprof.workloads.__file__); print(tbdprof_probe.__file__)")
    out = subprocess.run([str(venv / "bin/python"), "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    torch_file, workloads_file, probe_file = out.splitlines()
    assert torch_file == torch.__file__ and Path(workloads_file) == ROOT / "workloads/__init__.py"
    assert Path(probe_file).is_relative_to(venv)  # the carried wheel went into the layer, not the base
    assert importlib.util.find_spec("tbdprof_probe") is None
    assert not (venv / "bin/pip").exists()  # pip and the rest are the base Python's

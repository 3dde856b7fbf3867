"""The one direction of flow, checked: analysis reads files and tbdprof's pure modules, nothing else."""

import subprocess
import sys
from pathlib import Path

import tbdprof.analysis

ANALYSIS = sorted(f"tbdprof.analysis.{p.stem}" for p in Path(tbdprof.analysis.__file__).parent.glob("*.py") if p.stem != "__init__")
# What analysis must never load: the recorder (and its psutil, samplers, threads), torch, launchers, workloads, the CLI.
FORBIDDEN = ("torch", "psutil", "tbdprof.profiler", "tbdprof.sampling", "tbdprof.samplers", "tbdprof.writer",
             "tbdprof.launch", "tbdprof.workloads", "tbdprof.cli")


def test_analysis_imports_only_pure_modules():
    code = ("import importlib, sys\n"
            f"for m in {ANALYSIS!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'psutil') or "
            f"any(m == f or m.startswith(f + '.') for f in {FORBIDDEN!r})))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(ANALYSIS) > 20 and proc.stdout.strip() == "[]", proc.stdout


def test_the_package_top_level_is_lazy():
    proc = subprocess.run([sys.executable, "-c", "import sys, tbdprof; print('tbdprof.profiler' in sys.modules); "
                           "tbdprof.Profiler; print('tbdprof.profiler' in sys.modules)"], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["False", "True"], proc.stderr

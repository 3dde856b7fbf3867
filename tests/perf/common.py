"""Shared helpers for the benchmarks (run as scripts, not collected by pytest)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def tbdprof(*args, env=None, timeout=1800) -> subprocess.CompletedProcess:
    """Run the tbdprof CLI; raises with its output when it fails."""
    proc = subprocess.run([sys.executable, "-m", "tbdprof", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"tbdprof {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc


def timed(cmd: list[str], env=None, timeout=1800, stdout=subprocess.DEVNULL) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a child command (wait4's rusage of that child only); its output goes
    to ``stdout`` (a file), else nowhere."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def step_medians(run_dir: Path, warmup: int) -> list[float]:
    """Median runner step time per rank from timing.json (same measurement profiled or not)."""
    import statistics

    out = []
    for f in sorted(Path(run_dir).glob("host=*/rank=*/timing.json")):
        times = json.loads(f.read_text())["step_times_s"][warmup:]
        out.append(statistics.median(times))
    return out


def emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


def timed_steps(batches, model, crit, opt, prof=None, clock=time.perf_counter):
    """Train over ``batches`` (input, label pairs) with ``crit`` and ``opt``, yielding each step's seconds on
    ``clock``; with ``prof``, the three phase blocks a script on the API writes (``prof.phase``)."""
    null = contextlib.nullcontext()
    phase = prof.phase if prof is not None else (lambda name: null)
    t = clock()
    for x, y in batches:
        with phase("forward"):
            loss = crit(model(x), y)
        with phase("backward"):
            loss.backward()
        with phase("optimizer"):
            opt.step()
            opt.zero_grad()
        now = clock()
        yield now - t
        t = now

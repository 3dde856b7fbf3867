"""Sweeps: one run per (ranks, batch size, repeat) into one folder, indexed by ``sweep.json``.

Strong scaling keeps the global batch fixed (each of n ranks gets global/n);
weak scaling keeps the per-rank batch fixed (the global batch grows with n).
``sweep.json`` is the input of the scaling report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from tbdprof import clock, store

from .local import LaunchError

SWEEP_FILE = "sweep.json"
SCALINGS = ("strong", "weak")


@dataclass(frozen=True)
class Config:
    """One run of a sweep."""

    nproc: int
    batch_size: int  # per rank
    global_batch_size: int
    repeat: int

    @property
    def run_id(self) -> str:
        return f"n{self.nproc}-gb{self.global_batch_size}-r{self.repeat}"


def plan_sweep(nprocs: list[int], batch_sizes: list[int], repeat: int = 1, scaling: str = "weak") -> list[Config]:
    """The runs of a sweep, in order. ``batch_sizes`` are global (strong) or per rank (weak)."""
    if scaling not in SCALINGS:
        raise LaunchError(f"--scaling must be strong or weak (got {scaling})")
    if repeat < 1:
        raise LaunchError(f"--repeat must be at least 1 (got {repeat})")
    if not nprocs or any(n < 1 for n in nprocs):
        raise LaunchError(f"--nproc values must be at least 1 (got {nprocs})")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise LaunchError(f"--batch-size values must be at least 1 (got {batch_sizes})")
    configs = []
    for n in nprocs:
        for b in batch_sizes:
            if scaling == "strong" and b % n:
                raise LaunchError(f"strong scaling: global batch {b} does not divide over {n} ranks")
            per_rank, total = (b // n, b) if scaling == "strong" else (b, b * n)
            configs += [Config(n, per_rank, total, k) for k in range(repeat)]
    return configs


def run_sweep(sweep_dir: Path, entries: list[dict], launch_one: Callable[[int], int], meta: dict) -> int:
    """Run ``launch_one(i)`` for each entry, keeping ``sweep.json`` current; 0 when all succeed.

    A failed run is recorded and the sweep goes on: one bad configuration
    should not cost the others.
    """
    index = {**meta, "created_ns": clock.now_ns(), "runs": [dict(e, status="pending") for e in entries]}
    path = sweep_dir / SWEEP_FILE
    store.write_json_atomic(path, index)
    failed = 0
    for i, run in enumerate(index["runs"]):
        run["status"] = "running"
        store.write_json_atomic(path, index)
        try:
            code = launch_one(i)
        except LaunchError as e:
            code, run["error"] = 2, str(e)
        run.update(status="complete" if code == 0 else "failed", exit_code=code)
        failed += code != 0
        store.write_json_atomic(path, index)
    index["status"] = "failed" if failed else "complete"
    store.write_json_atomic(path, index)
    return 1 if failed else 0


def entry(config: Config, hosts: list[str], run_dir: Path) -> dict:
    """A ``sweep.json`` row for ``config``."""
    return {**asdict(config), "run_id": config.run_id, "path": run_dir.name, "hosts": hosts}

"""Run a launcher's plan: check first, start every process, wait, record the run.

Everything that can be checked before a rank starts is: the launcher is
installed, every remote host answers over ssh. A failing process stops the
others (SIGTERM, then SIGKILL), so no half-started job is left behind.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import TextIO

from tbdprof import clock, store

from .gather import gather
from .hosts import Host
from .launchers import Launcher, Local, Plan, Spec
from .local import LaunchError, default_threads, exit_code, free_port, wait_all
from .remote import check_reachable


def print_plan(launcher: Launcher, spec: Spec, out: TextIO | None = None) -> None:
    """``--dry-run``: the files a launch would write and its exact command lines."""
    out = out or sys.stdout
    plan = launcher.plan(spec)
    for path, text in plan.files.items():
        print(f"# --- {path} ---", file=out)
        print(text.rstrip("\n"), file=out)
    if plan.files:
        print("# --- commands ---", file=out)
    for line in plan.lines():
        print(line, file=out)


def write_plan(plan: Plan, spec: Spec, meta: dict, status: str = "prepared") -> list[Path]:
    """Write the plan's files and the run's ``run.json`` (launcher, hosts, command lines)."""
    for path, text in plan.files.items():
        path.write_text(text)
    store.update_run_json(
        spec.run_dir, run_id=spec.run_dir.name, launcher=plan.launcher, world_size=spec.nproc,
        hosts=[h.hostname for h in spec.hosts], slots=[h.slots for h in spec.hosts], command=plan.lines(),
        argv=sys.argv, status=status, started_ns=clock.now_ns(), **meta,
    )
    return list(plan.files)


def preflight(launcher: Launcher, spec: Spec) -> Plan:
    """The plan, once the launcher is known installed and every remote host answers."""
    plan = launcher.plan(spec)
    launcher.check()
    if plan.remote_hosts:
        check_reachable(plan.remote_hosts)
    return plan


def execute(plan: Plan, spec: Spec, meta: dict, stage: Path | None = None) -> int:
    """Run a checked ``plan`` into the (created) ``spec.run_dir``; returns the job's exit code.

    ``stage``: ranks write under this folder on their own hosts (no shared
    filesystem); their folders are gathered into ``spec.run_dir`` at the end.
    """
    write_plan(plan, spec, meta, status="running")
    if not plan.waits:
        return _submit(plan, spec.run_dir)
    try:
        procs = [subprocess.Popen(p.argv, env=os.environ | p.env, stdin=subprocess.DEVNULL) for p in plan.procs]
    except OSError as e:
        raise LaunchError(f"launcher {plan.launcher}: cannot start {e.filename}: {e.strerror}") from None
    codes, first = wait_all(procs)
    code = exit_code(codes, first)
    if stage is not None:
        gather(spec.run_dir, spec.hosts, stage / spec.run_dir.name)
    # rank 0 records the launcher it detected (e.g. openmpi); the run keeps the one used
    store.update_run_json(
        spec.run_dir, launcher=plan.launcher, status="failed" if code else "complete", exit_codes=codes, ended_ns=clock.now_ns()
    )
    return code


def run_here(command: list[str], nproc: int, run_dir: Path, meta: dict, horovod: bool = False) -> int:
    """``command`` as ``nproc`` ranks on this machine, through the local launcher's plan (the path
    ``tbdprof launch --launcher local`` takes too); returns the job's exit code.

    ``horovod``: with Horovod's gloo rendezvous running here, and each rank's HOROVOD_* variables
    set by an exec shim, as ``horovodrun --gloo`` would.
    """
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or default_threads(nproc)}
    if horovod:
        from .horovod import SHIM, gloo_rendezvous

        command = [*SHIM, *command]
    with gloo_rendezvous(nproc) if horovod else contextlib.nullcontext({}) as rendezvous:
        spec = Spec([Host("localhost", nproc)], command, run_dir, free_port(), env | rendezvous)
        return execute(Local().plan(spec), spec, meta)


def _submit(plan: Plan, run_dir: Path) -> int:
    """Submit to a scheduler: the job runs later, the run is marked submitted."""
    (proc,) = plan.procs
    res = subprocess.run(proc.argv, capture_output=True, text=True)
    sys.stdout.write(res.stdout)
    if res.returncode:
        raise LaunchError(f"{Path(proc.argv[0]).name} failed: {(res.stderr.strip().splitlines() or ['no message'])[-1]}")
    store.update_run_json(run_dir, status="submitted", submit_output=res.stdout.strip())
    return 0

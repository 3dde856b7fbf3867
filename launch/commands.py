"""Launch subcommands: ``run`` (this machine), ``launch`` (a real launcher, many hosts),
``sweep`` (one run per configuration) and ``gather`` (per-host folders into one run)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_run(args) -> int:
    """``tbdprof run``: the workload as ``--nproc`` ranks on this machine."""
    from ..workloads.train import runner_argv, validate
    from .execute import run_here
    from .local import LaunchError, new_run_dir

    if args.nproc < 1:
        raise LaunchError(f"--nproc must be at least 1 (got {args.nproc})")
    wl, _ = validate(args)
    run_dir = new_run_dir(args.out, args.run_id, wl.name)
    command = [sys.executable, "-m", "tbdprof.workloads.train", *runner_argv(args)]
    meta = {"workload": wl.name, "preset": args.preset, "profiled": not args.no_profile}
    print(f"tbdprof: run {run_dir} ({args.nproc} rank{'s' if args.nproc != 1 else ''})", file=sys.stderr)
    code = run_here(command, args.nproc, run_dir, meta, horovod=args.engine == "horovod")
    if code == 0 and not args.no_profile and not args.no_report:
        args.then_report = run_dir
    return code


def _hosts(args, nproc: int | None):
    """The hosts the ranks go to, each with its rank count."""
    from .hosts import Host, parse_hosts, place, read_hostfile
    from .launchers import slurm_hosts
    from .local import LaunchError

    if args.hosts and args.hostfile:
        raise LaunchError("give --hosts or --hostfile, not both")
    listed = parse_hosts(args.hosts) if args.hosts else read_hostfile(args.hostfile) if args.hostfile else None
    if listed is None and args.launcher == "slurm":
        listed = slurm_hosts(args.nnodes or 1, args.nproc_per_node or 1)
    elif listed is None:
        if args.nnodes not in (None, 1):
            raise LaunchError("--nnodes without --hosts works with --launcher slurm only; name the hosts with --hosts")
        listed = [Host("localhost", args.nproc_per_node or nproc or 1)]
    return place(listed, nproc, args.nproc_per_node)


def _spec(args, hosts, run_dir, command):
    import os

    from .launchers import Spec
    from .local import default_threads, free_port

    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or default_threads(max(h.slots for h in hosts))}
    if args.stage_dir:
        env["TBDPROF_RUN_DIR"] = str(Path(args.stage_dir).absolute() / run_dir.name)
    return Spec(hosts, command, run_dir, free_port(), env, iface=args.iface)


def _launcher(args):
    """The launcher ``--launcher`` names, with its own options from the command line."""
    from . import launchers

    return launchers.get(args.launcher, hostfile=bool(args.hostfile), horovod_mode=args.horovod_mode,
                         slurm_mode=args.slurm_mode, slurm_time=args.slurm_time, slurm_partition=args.slurm_partition,
                         wait=args.wait)


def _launch(args, launcher, spec, meta, announce: str = "") -> int:
    """Dry-run, write (SLURM without --submit) or check and run one launch."""
    from .execute import execute, preflight, print_plan, write_plan
    from .local import new_run_dir

    if args.dry_run:
        print_plan(launcher, spec)
        return 0
    write_only = launcher.name == "slurm" and not (getattr(args, "submit", False) or args.wait)
    plan = launcher.plan(spec) if write_only else preflight(launcher, spec)
    new_run_dir(spec.run_dir.parent, spec.run_dir.name, "")
    if write_only:
        for path in write_plan(plan, spec, meta):
            print(f"tbdprof: wrote {path} (submit it with sbatch, or rerun with --submit)", file=sys.stderr)
        return 0
    if announce:
        print(announce, file=sys.stderr)
    stage = Path(args.stage_dir).absolute() if args.stage_dir else None
    return execute(plan, spec, meta, stage)


def cmd_launch(args) -> int:
    import time

    from ..workloads.train import runner_argv, validate

    wl, _ = validate(args)
    launcher = _launcher(args)
    hosts = _hosts(args, args.nproc)
    run_dir = Path(args.out).absolute() / (args.run_id or f"{wl.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    spec = _spec(args, hosts, run_dir, [sys.executable, "-m", "tbdprof.workloads.train", *runner_argv(args)])
    meta = {"workload": wl.name, "preset": args.preset, "profiled": not args.no_profile}
    announce = f"tbdprof: launch {run_dir} ({spec.nproc} ranks on {', '.join(map(str, hosts))}, {launcher.name})"
    code = _launch(args, launcher, spec, meta, announce)
    if code == 0 and not (args.dry_run or args.no_profile or args.no_report or (args.launcher == "slurm" and not args.wait)):
        args.then_report = run_dir
    return code


def cmd_sweep(args) -> int:
    import time

    from ..workloads.train import runner_argv, validate
    from .local import new_run_dir
    from .sweep import entry, plan_sweep, run_sweep

    wl, preset = validate(_with(args, batch_size=None))
    launcher = _launcher(args)
    configs = plan_sweep(args.nproc, args.batch_size or [preset.batch_size], args.repeat, args.scaling)
    sweep_id = args.run_id or f"sweep-{wl.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_dir = Path(args.out).absolute() / sweep_id
    planned = []
    for c in configs:  # every configuration is checked before the first run starts
        hosts = _hosts(args, c.nproc)
        run_args = _with(args, batch_size=c.batch_size)
        spec = _spec(run_args, hosts, sweep_dir / c.run_id, [sys.executable, "-m", "tbdprof.workloads.train", *runner_argv(run_args)])
        launcher.plan(spec)
        planned.append(spec)
    if args.dry_run:
        for c, spec in zip(configs, planned):
            print(f"# === {c.run_id}: {c.nproc} ranks, batch {c.batch_size}/rank, {c.global_batch_size} global ===")
            _launch(args, launcher, spec, {})
        return 0
    new_run_dir(sweep_dir.parent, sweep_id, "")
    meta = {"workload": wl.name, "preset": args.preset, "profiled": not args.no_profile, "sweep": sweep_id}

    def launch_one(i: int) -> int:
        announce = f"tbdprof: sweep run {i + 1}/{len(planned)}: {planned[i].run_dir.name}"
        return _launch(args, launcher, planned[i], meta | {"batch_size": configs[i].batch_size}, announce)

    entries = [entry(c, [str(h) for h in s.hosts], s.run_dir) for c, s in zip(configs, planned)]
    index = {"workload": wl.name, "preset": args.preset, "scaling": args.scaling, "launcher": launcher.name, "steps": args.steps}
    code = run_sweep(sweep_dir, entries, launch_one, index)
    print(f"tbdprof: sweep {sweep_dir} ({len(configs)} runs) {'complete' if code == 0 else 'had failures'}", file=sys.stderr)
    return code


def cmd_gather(args) -> int:
    from .gather import gather
    from .hosts import parse_hosts, read_hostfile

    hosts = parse_hosts(args.hosts) if args.hosts else read_hostfile(args.hostfile)
    run_dir = gather(args.run_dir, hosts, args.source)
    print(f"tbdprof: gathered {run_dir} from {', '.join(h.name for h in hosts)}", file=sys.stderr)
    return 0


def _with(args, **changes):
    import copy

    new = copy.copy(args)
    for k, v in changes.items():
        setattr(new, k, v)
    return new


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_launch_options(p, sweep: bool) -> None:
    from .launchers import LAUNCHERS

    p.add_argument("--launcher", default="local" if sweep else "torchrun", choices=list(LAUNCHERS),
                   help=f"how ranks are started (default {'local' if sweep else 'torchrun'})")
    p.add_argument("--hosts", default=None, help="hosts and their slots: h1:2,h2:2 (default: this machine)")
    p.add_argument("--hostfile", default=None, help="a hostfile: lines 'host', 'host:N' or 'host slots=N'")
    p.add_argument("--nproc-per-node", type=int, default=None, help="ranks per host (default: its slots)")
    p.add_argument("--nnodes", type=int, default=None, help="nodes of a SLURM job when no --hosts are named")
    p.add_argument("--iface", default=None, help="network interface the ranks talk over (e.g. eth0)")
    p.add_argument("--stage-dir", default=None,
                   help="no shared filesystem: ranks write under this folder on their own hosts, gathered at the end")
    p.add_argument("--horovod-mode", default="gloo", choices=["gloo", "mpi"], help="horovodrun controller")
    p.add_argument("--slurm-mode", default="srun", choices=["srun", "torchrun"],
                   help="SLURM: srun one task per rank, or one torchrun per node")
    p.add_argument("--slurm-time", default="00:30:00", help="SLURM time limit")
    p.add_argument("--slurm-partition", default=None, help="SLURM partition")
    p.add_argument("--wait", action="store_true",
                   help="SLURM: submit with sbatch --wait and wait for the job (a sweep's jobs run one after another)")
    p.add_argument("--dry-run", action="store_true", help="print the command lines (and files) instead of running")
    p.add_argument("--out", default="runs", help="folder for runs (default ./runs)")
    p.add_argument("--run-id", default=None, help="run (or sweep) folder name")


def add_parsers(sub) -> None:
    from ..workloads.train import add_training_args

    s = sub.add_parser("run", help="profile a reference workload on this machine with N ranks")
    add_training_args(s)
    s.add_argument("--nproc", type=int, default=1, help="ranks on this machine (default 1)")
    s.add_argument("--out", default="runs", help="folder for runs (default ./runs)")
    s.add_argument("--run-id", default=None, help="run folder name (default WORKLOAD-TIMESTAMP)")
    s.add_argument("--no-report", action="store_true", help="do not print the report at the end")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("launch", help="profile a workload across hosts with torchrun, mpirun, horovodrun or SLURM")
    add_training_args(s)
    _add_launch_options(s, sweep=False)
    s.add_argument("--nproc", type=int, default=None, help="total ranks (default: every slot)")
    s.add_argument("--submit", action="store_true", help="SLURM: submit the script with sbatch (else only write it)")
    s.add_argument("--no-report", action="store_true", help="do not print the report at the end")
    s.set_defaults(func=cmd_launch)

    s = sub.add_parser("sweep", help="one run per rank count / batch size / repeat, indexed in sweep.json")
    add_training_args(s)
    batch = next(a for a in s._actions if a.dest == "batch_size")
    batch.type, batch.help = _int_list, "batch sizes: global (strong scaling) or per rank (weak), e.g. 16,32"
    _add_launch_options(s, sweep=True)
    s.add_argument("--nproc", type=_int_list, required=True, help="rank counts, e.g. 1,2,4")
    s.add_argument("--repeat", type=int, default=1, help="runs per configuration (default 1)")
    s.add_argument("--scaling", default="weak", choices=["strong", "weak"], help="strong: fixed global batch; weak: fixed per-rank batch")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("gather", help="collect per-host run folders into one run (no shared filesystem)")
    s.add_argument("run_dir", help="the run folder to fill")
    s.add_argument("--hosts", default=None, help="hosts holding parts of the run: h1,h2")
    s.add_argument("--hostfile", default=None, help="or a hostfile")
    s.add_argument("--source", default=None, help="the run's folder on the hosts (default: the same path as run_dir)")
    s.set_defaults(func=cmd_gather)

    from .profile import add_parser as add_profile_parser

    add_profile_parser(sub)

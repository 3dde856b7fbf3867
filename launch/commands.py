"""``tbdprof run``: the embedded local launcher for reference workloads."""

from __future__ import annotations

import sys


def cmd_run(args) -> int:
    from ..workloads.train import runner_argv, validate
    from .local import LaunchError, new_run_dir, run_local

    if args.nproc < 1:
        raise LaunchError(f"--nproc must be at least 1 (got {args.nproc})")
    wl, _ = validate(args)
    run_dir = new_run_dir(args.out, args.run_id, wl.name)
    command = [sys.executable, "-m", "tbdprof.workloads.train", *runner_argv(args)]
    meta = {"workload": wl.name, "preset": args.preset, "profiled": not args.no_profile}
    print(f"tbdprof: run {run_dir} ({args.nproc} rank{'s' if args.nproc != 1 else ''})", file=sys.stderr)
    code = run_local(command, args.nproc, run_dir, meta)
    if code == 0 and not args.no_profile and not args.no_report:
        args.then_report = run_dir
    return code


def add_parsers(sub) -> None:
    from ..workloads.train import add_training_args

    s = sub.add_parser("run", help="profile a reference workload on this machine with N ranks")
    add_training_args(s)
    s.add_argument("--nproc", type=int, default=1, help="ranks on this machine (default 1)")
    s.add_argument("--out", default="runs", help="folder for runs (default ./runs)")
    s.add_argument("--run-id", default=None, help="run folder name (default WORKLOAD-TIMESTAMP)")
    s.add_argument("--no-report", action="store_true", help="do not print the report at the end")
    s.set_defaults(func=cmd_run)

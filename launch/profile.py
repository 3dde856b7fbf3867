"""``tbdprof profile -- COMMAND``: record any training command, unchanged.

The command runs as a child with tbdprof's start-up hook first on its
PYTHONPATH (see :mod:`tbdprof.autoprofile`) and the run folder and settings in
its environment, so every training process it starts, directly or through a
launcher, records itself as its rank. Meanwhile a monitor samples the child's
process tree and the host; when no rank recorded itself (a non-Python or
non-PyTorch command, a crash at start) the monitor's timelines become rank 0
of the run, else they are discarded (docs/profile.md).

The child's output passes through; its exit code is ours (128+N for signal N,
127 for a command that does not exist). SIGINT and SIGTERM sent to us are
forwarded to it, except a terminal's Ctrl-C, which the child receives itself.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import tbdprof
from tbdprof import autoprofile, clock, deep, exits, ranks, schema, store
from tbdprof.profiler import Profiler
from tbdprof.samplers import default_samplers
from tbdprof.samplers.system import ProcessSampler

from .local import LaunchError, new_run_dir

INJECT_DIR = Path(tbdprof.__file__).resolve().parent / "_inject"
EXIT_NOT_FOUND, EXIT_NOT_EXECUTABLE = 127, 126  # as a shell says it
MPI_LAUNCHERS = ("mpirun", "mpiexec", "orterun", "prterun")
_FORWARDED = (signal.SIGINT, signal.SIGTERM)
_SI_KERNEL = 0x80  # si_code of a signal the kernel sent, e.g. a terminal's Ctrl-C to its process group


def child_env(base: dict, run_dir: Path, sample_hz: float, flush_s: float,
              deep_every: int | None = None, deep_steps: int | None = None, deep_anomaly: str | None = None) -> dict:
    """The environment that makes every Python process of the command record itself
    (with deep windows every ``deep_every`` steps; unset: what ``base`` says, else none; and on
    anomalies by ``deep_anomaly``, unset: what ``base`` says, else the default)."""
    env = dict(base)
    env.pop(autoprofile.ENV_RANK_PID, None)
    path = env.get("PYTHONPATH")
    env.update({
        "PYTHONPATH": str(INJECT_DIR) + (os.pathsep + path if path else ""),
        autoprofile.ENV_AUTO: "1",
        autoprofile.ENV_SAMPLE_HZ: str(sample_hz),
        autoprofile.ENV_FLUSH_S: str(flush_s),
        "TBDPROF_RUN_DIR": str(run_dir),
        "TBDPROF_RUN_ID": run_dir.name,
        deep.ENV_DEEP_EVERY: str(deep_every) if deep_every is not None else env.get(deep.ENV_DEEP_EVERY) or "0",
        deep.ENV_DEEP_STEPS: str(deep_steps) if deep_steps is not None else env.get(deep.ENV_DEEP_STEPS) or str(deep.DEFAULT_STEPS),
        deep.ENV_DEEP_ANOMALY: deep_anomaly or env.get(deep.ENV_DEEP_ANOMALY) or deep.DEFAULT_ANOMALY,
    })
    return env


FORWARDED_ENV = ("PYTHONPATH", autoprofile.ENV_AUTO, autoprofile.ENV_SAMPLE_HZ, autoprofile.ENV_FLUSH_S, "TBDPROF_RUN_DIR", "TBDPROF_RUN_ID",
                 deep.ENV_DEEP_EVERY, deep.ENV_DEEP_STEPS, deep.ENV_DEEP_ANOMALY)


def _is_open_mpi(exe: str) -> bool:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return "Open MPI" in out.stdout + out.stderr


def forward_env(command: list[str], exe: str) -> list[str]:
    """Open MPI's mpirun passes no environment to remote ranks unless told: add ``-x VAR`` for ours.

    Other MPIs (MPICH, Intel MPI) forward the whole environment already.
    """
    if Path(command[0]).name not in MPI_LAUNCHERS or not _is_open_mpi(exe):
        return command
    flags = [x for name in FORWARDED_ENV for x in ("-x", name)]
    return [command[0], *flags, *command[1:]]


def resolve(command: list[str], env: dict) -> tuple[str | None, int]:
    """(the executable, 0), or (None, the shell's exit code for why not)."""
    exe = shutil.which(command[0], path=env.get("PATH"))
    if exe is not None:
        return exe, 0
    if os.sep in command[0] and os.path.exists(command[0]):
        return None, EXIT_NOT_EXECUTABLE
    return None, EXIT_NOT_FOUND


def exit_status(returncode: int) -> int:
    """A shell's exit code for a child's return code (128+N when signal N killed it)."""
    return 128 - returncode if returncode < 0 else returncode


class Monitor:
    """Samples the child's process tree and the host, staged beside the run.

    It records as the rank tbdprof itself detects (rank 0 unless ``tbdprof
    profile`` runs once per task under srun), into a hidden staging folder;
    :meth:`finish` moves that into the run only when no rank recorded itself.
    """

    def __init__(self, run_dir: Path, pid: int, sample_hz: float, flush_s: float, command: list[str]):
        samplers = [ProcessSampler(pid) if isinstance(s, ProcessSampler) else s for s in default_samplers(0)]
        self.run_dir = run_dir
        self.prof = Profiler(sample_hz=sample_hz, flush_s=flush_s, samplers=samplers,
                             metadata={"monitor": True, "command": command})
        info = self.prof.info
        self.staging = run_dir / f".monitor-{store.safe_host(info.host)}-{info.rank}"
        self.prof.out, self.prof.run_id = self.staging, run_dir.name  # staging/<run_id>/host=H/rank=R

    def start(self) -> None:
        self.prof.start()

    def finish(self, status: str) -> bool:
        """Stop sampling; True when the monitor's timelines became a rank of the run."""
        why = "the command recorded nothing itself (not PyTorch, or it ended before its first training step): " \
              "only the system timelines tbdprof profile sampled around it"
        for item in schema.COVERAGE_ITEMS:
            self.prof.note_coverage(item, schema.COVERAGE_MISSING, why)
        self.prof.close(status=status)
        target = store.rank_dir(self.run_dir, self.prof.info.host, self.prof.info.rank)
        promote = not target.exists() and not any(self.run_dir.glob(f"host=*/rank=*/{schema.RANK_FILE}"))
        if promote:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.prof.rank_dir, target)
        shutil.rmtree(self.staging, ignore_errors=True)
        return promote


def _wait(child: subprocess.Popen) -> int:
    """Wait for ``child``, forwarding SIGINT/SIGTERM sent to us (not a terminal's, which it got too)."""
    watched = {*_FORWARDED, signal.SIGCHLD}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        while child.poll() is None:
            info = signal.sigtimedwait(watched, 0.5)
            if info is not None and info.si_signo in _FORWARDED and info.si_code != _SI_KERNEL:
                child.send_signal(info.si_signo)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return child.returncode


def _record_signal(run_dir: Path, pid: int, returncode: int) -> None:
    """A signal ended the command, which was itself a rank (``python train.py``): say so for that rank, which
    could not (tbdprof.exits)."""
    for path in run_dir.glob(f"host=*/rank=*/{schema.RANK_FILE}"):
        try:
            meta = store.read_json(path)
        except (OSError, ValueError):
            continue
        if meta.get("pid") == pid and isinstance(meta.get("rank"), int):
            exits.write_exits(run_dir, "tbdprof profile", {meta["rank"]: {"exit_code": returncode, "pid": pid,
                                                                          "seen_ns": clock.now_ns()}})


def _profile_run_dir(out: str, run_id: str | None, info: ranks.RankInfo) -> Path:
    """A new run folder; under srun (one ``tbdprof profile`` per task) the tasks share one."""
    if info.world_size == 1:
        return new_run_dir(Path(out).absolute(), run_id, "profile")
    run_dir = Path(out).absolute() / (run_id or f"profile-{info.job_id or 'job'}")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def add_parser(sub) -> None:
    """The ``profile`` subcommand."""
    s = sub.add_parser("profile", help="profile any training command, unchanged: tbdprof profile -- torchrun ... train.py")
    s.add_argument("--out", default="runs", help="folder for runs (default ./runs)")
    s.add_argument("--run-id", default=None, help="run folder name (default profile-TIMESTAMP)")
    s.add_argument("--sample-hz", type=float, default=10.0, help="system sampling rate (default 10)")
    s.add_argument("--flush-s", type=float, default=5.0, help="seconds between Parquet segments (default 5)")
    deep.add_options(s)
    s.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...: the command to run and record")
    s.set_defaults(func=lambda args: run_profile(args.command[args.command[:1] == ["--"]:], args.out, args.run_id, args.sample_hz, args.flush_s,
                                                 deep_every=args.deep_every, deep_steps=args.deep_steps,
                                                 deep_anomaly=args.deep_anomaly))


def run_profile(command: list[str], out: str, run_id: str | None, sample_hz: float, flush_s: float,
                deep_every: int | None = None, deep_steps: int | None = None, deep_anomaly: str | None = None) -> int:
    """Run ``command`` under the profiler; returns its exit code."""
    if not command:
        raise LaunchError("give the command to profile after --: tbdprof profile -- python train.py")
    if sample_hz <= 0 or flush_s <= 0:
        raise LaunchError("--sample-hz and --flush-s must be positive")
    deep.check_options(deep_every, deep_steps, deep_anomaly)
    exe, code = resolve(command, dict(os.environ))
    if exe is None:
        why = "command not found" if code == EXIT_NOT_FOUND else "permission denied"
        print(f"tbdprof: {command[0]}: {why}", file=sys.stderr)
        return code
    os.environ.pop("TBDPROF_RUN_DIR", None)  # ours goes to the child; the monitor writes where we say
    info = ranks.detect()
    run_dir = _profile_run_dir(out, run_id, info)
    env = child_env(dict(os.environ), run_dir, sample_hz, flush_s, deep_every, deep_steps, deep_anomaly)
    argv = forward_env(command, exe)
    lead = info.rank == 0
    if lead:
        # one task per rank under srun: the hosts are the rank folders', not the lead task's alone
        hosts = [socket.gethostname()] if info.world_size == 1 else None
        store.update_run_json(run_dir, run_id=run_dir.name, launcher="profile", command=command,
                              command_line=shlex.join(command), argv=sys.argv, hosts=hosts, world_size=info.world_size,
                              status="running", started_ns=clock.now_ns())
    print(f"tbdprof: profiling into {run_dir}: {shlex.join(argv)}", file=sys.stderr, flush=True)
    child: subprocess.Popen | None = None
    previous = {s: signal.signal(s, lambda signum, frame: child and child.send_signal(signum)) for s in _FORWARDED}
    try:
        try:
            child = subprocess.Popen(argv, env=env)
        except OSError as e:  # e.g. not an executable format
            print(f"tbdprof: {command[0]}: {e.strerror}", file=sys.stderr)
            store.update_run_json(run_dir, status="failed", exit_code=EXIT_NOT_EXECUTABLE)
            return EXIT_NOT_EXECUTABLE
        monitor = Monitor(run_dir, child.pid, sample_hz, flush_s, command)
        monitor.start()
        returncode = _wait(child)
        code = exit_status(returncode)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    status = "complete" if code == 0 else "terminated" if code > 128 else "failed"
    if returncode < 0:
        _record_signal(run_dir, child.pid, returncode)
    promoted = monitor.finish(status)
    recorded = len(list(run_dir.glob(f"host=*/rank=*/{schema.RANK_FILE}")))
    if lead:
        fields = {"world_size": 1} if promoted else {}
        store.update_run_json(run_dir, launcher="profile", status=status, exit_code=code, ended_ns=clock.now_ns(), **fields)
    what = "no rank recorded itself: the command's system timelines are rank 0" if promoted else f"{recorded} rank(s) recorded"
    print(f"tbdprof: exit code {code}; {what}; see: tbdprof report {run_dir}", file=sys.stderr)
    return code

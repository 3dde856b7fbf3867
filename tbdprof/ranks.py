"""Who am I in the job: rank, world size and launcher, read from the launcher's environment.

The launchers are tried in order; the first whose rank variable is set wins.
A rank variable without its world-size partner (or the reverse) is an error
with a message that says what to set: guessing a world size of 1 would
silently record a distributed job as many single-rank runs.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass
from typing import Mapping

from .errors import UserError


PROCESS_GROUP = "torch.distributed"  # the launcher name of ranks known only from their process group


class LaunchEnvError(UserError):
    """The launcher environment is inconsistent (one half of a pair is set)."""


@dataclass(frozen=True)
class Launcher:
    name: str
    rank: str
    world: str
    local_rank: str | None
    local_world: str | None
    job_id: str | None = None
    marker: str | None = None  # must also be set for this row to match


# Ordered: a horovodrun job under mpirun also has OMPI_* set, a torchrun under
# srun also has SLURM_* set; the more specific launcher comes first.
LAUNCHERS: tuple[Launcher, ...] = (
    Launcher("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RUN_ID"),
    Launcher("horovod", "HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK", "HOROVOD_LOCAL_SIZE"),
    Launcher("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_MCA_ess_base_jobid"),
    Launcher("pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
    Launcher("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_ID"),
    Launcher("env", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
)


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str
    host: str
    pid: int
    job_id: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _int(env: Mapping[str, str], var: str) -> int:
    raw = env[var]
    try:
        return int(raw)
    except ValueError:
        raise LaunchEnvError(f"{var}={raw!r} is not an integer") from None


def detect(env: Mapping[str, str] | None = None) -> RankInfo:
    """Detect rank and world from ``env`` (default: ``os.environ``).

    Raises :class:`LaunchEnvError` when a launcher's variables are half set or
    out of range.
    """
    env = os.environ if env is None else env
    host = socket.gethostname()
    pid = os.getpid()
    for row in LAUNCHERS:
        if row.marker and row.marker not in env:
            continue
        has_rank, has_world = row.rank in env, row.world in env
        if not has_rank and not has_world:
            continue
        if has_rank != has_world:
            present, missing = (row.rank, row.world) if has_rank else (row.world, row.rank)
            raise LaunchEnvError(
                f"{present} is set but {missing} is not ({row.name} launcher): "
                f"set both, or neither for a single-process run"
            )
        rank, world = _int(env, row.rank), _int(env, row.world)
        if world < 1 or not 0 <= rank < world:
            raise LaunchEnvError(f"{row.rank}={rank} is outside 0..{row.world}-1 (={world - 1})")
        local_rank = _int(env, row.local_rank) if row.local_rank and row.local_rank in env else 0
        local_world = world
        if row.local_world and row.local_world in env:
            local_world = _local_world(env[row.local_world])
        elif row.local_rank and row.local_rank not in env:
            local_world = 1
        name = env.get("TBDPROF_LAUNCHER", row.name) if row.name == "env" else row.name
        job_id = env.get(row.job_id) if row.job_id else None
        return RankInfo(rank, world, local_rank, local_world, name, host, pid, job_id)
    return RankInfo(0, 1, 0, 1, "none", host, pid, None)


def _local_world(raw: str) -> int:
    # SLURM_NTASKS_PER_NODE may read "2" or "2(x3)"; the leading count is ours.
    digits = raw.split("(")[0].split(",")[0]
    try:
        return max(1, int(digits))
    except ValueError:
        return 1


def from_process_group(dist, group=None) -> RankInfo:
    """This process's place from an initialised ``torch.distributed`` process group, for ranks
    no launcher variable describes (``torch.multiprocessing.spawn``, an explicit
    ``init_process_group(rank=..., world_size=...)``). Collective: every rank of ``group``
    (default: the world) must call it; the local rank comes from the hosts' names."""
    host, pid = socket.gethostname(), os.getpid()
    rank, world = dist.get_rank(), dist.get_world_size()
    hosts: list = [None] * world
    dist.all_gather_object(hosts, host, group=group)
    return RankInfo(rank, world, hosts[:rank].count(host), hosts.count(host), PROCESS_GROUP, host, pid, None)

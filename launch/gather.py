"""``tbdprof gather``: collect per-host run folders into one run (clusters without a shared filesystem).

Each host holds ``<source>/host=<its name>/rank=*/``; the folders are copied
(``tar`` over ssh for remote hosts) into the run folder, which then reads
like a run written to a shared path.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tbdprof import clock, store

from .hosts import Host
from .local import LaunchError
from .remote import SSH_OPTS


def _copy_local(source: Path, run_dir: Path) -> None:
    if source.resolve() == run_dir.resolve():
        return
    for d in source.glob("host=*"):
        shutil.copytree(d, run_dir / d.name, dirs_exist_ok=True)


def _copy_remote(host: str, source: Path, run_dir: Path) -> None:
    remote = f"cd {source} && tar -cf - host=*"
    pull = subprocess.Popen(["ssh", *SSH_OPTS, host, remote], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    untar = subprocess.run(["tar", "-xf", "-", "-C", str(run_dir)], stdin=pull.stdout, capture_output=True)
    pull.stdout.close()
    err = pull.stderr.read().decode(errors="replace").strip()
    if pull.wait() or untar.returncode:
        why = err or untar.stderr.decode(errors="replace").strip() or "no message"
        raise LaunchError(f"gather from host {host}: {why.splitlines()[-1]}")


def gather(run_dir: str | Path, hosts: list[Host], source: str | Path | None = None) -> Path:
    """Copy every host's ``source`` folder (default: ``run_dir`` on that host) into ``run_dir``."""
    run_dir = Path(run_dir).absolute()
    source = Path(source).absolute() if source else run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    for h in hosts:
        if h.local:
            _copy_local(source, run_dir)
        else:
            _copy_remote(h.name, source, run_dir)
    ranks = sorted(int(p.name.split("=", 1)[1]) for p in run_dir.glob("host=*/rank=*"))
    if not ranks:
        raise LaunchError(f"gather: no host=*/rank=* folders found under {source} on {', '.join(h.name for h in hosts)}")
    store.update_run_json(run_dir, gathered_from=[h.name for h in hosts], gathered_ns=clock.now_ns(), gathered_ranks=ranks)
    return run_dir

"""Python front of ``testbed.sh``: N emulated hosts (network namespaces with sshd) on this machine.

```python
from tbdprof.launch import testbed

with testbed.hosts(2, bandwidth="100mbit") as tb:     # node0, node1
    tb.run(["tbdprof", "launch", "resnet50", "--hosts", "node0:2,node1:2", ...])
    tb.shape(bandwidth="20mbit")                      # slow the links down
    env = tb.slurm()                                  # a SLURM cluster on the hosts: {"SLURM_CONF": ...}
```

Launches start inside node0 (:meth:`Testbed.run`), as they would on a
cluster's first node. Needs root; :func:`unavailable` says why not, for
skipping tests.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SCRIPT = Path(__file__).with_name("testbed.sh")


class TestbedError(RuntimeError):
    """The testbed script refused or failed (its message says why)."""


def _script(*args: str, state: Path) -> None:
    res = subprocess.run(["bash", str(SCRIPT), *args, "--state", str(state)], capture_output=True, text=True)
    if res.returncode:
        raise TestbedError((res.stderr.strip().splitlines() or [f"testbed.sh {args[0]} failed"])[-1])


DEFAULT_NAME = "tbdp"


@dataclass
class Testbed:
    """A running testbed: ``n`` hosts ``node0``..``node{n-1}``, in namespaces ``{name}-node{i}``."""

    n: int
    state: Path
    name: str = DEFAULT_NAME

    @property
    def names(self) -> list[str]:
        return [f"node{i}" for i in range(self.n)]

    def namespace(self, host: str) -> str:
        """The network namespace of ``host`` (for ``ip netns``)."""
        return f"{self.name}-{host}"

    def shape(self, bandwidth: str | None = None, delay: str | None = None) -> None:
        """Change every host's outgoing link: ``bandwidth`` like ``"20mbit"`` (None: unshaped)."""
        _script("shape", *_shaping(bandwidth, delay), state=self.state)

    def slurm(self) -> dict[str, str]:
        """Start SLURM on the hosts (slurmctld on node0, slurmd on each; installed with apt-get when
        missing); returns the environment its clients (sbatch, srun) need."""
        res = subprocess.run(["bash", str(SCRIPT), "slurm", "--state", str(self.state)], capture_output=True, text=True)
        if res.returncode:
            raise TestbedError((res.stderr.strip().splitlines() or ["testbed.sh slurm failed"])[-1])
        return dict(line.split("=", 1) for line in res.stdout.splitlines() if line.startswith("SLURM_CONF="))

    def command(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run on ``host`` (its network, hostname and /etc/hosts)."""
        return ["bash", str(SCRIPT), "exec", "--state", str(self.state), host, *argv]

    def run(self, argv: list[str], host: str = "node0", timeout: float = 300, **kw) -> subprocess.CompletedProcess:
        """Run ``argv`` on ``host`` and wait; output captured as text."""
        return subprocess.run(self.command(host, argv), capture_output=True, text=True, timeout=timeout, **kw)


def _shaping(bandwidth: str | None, delay: str | None) -> list[str]:
    return ["--bandwidth", bandwidth or "none", *(["--delay", delay] if delay else [])]


def unavailable() -> str | None:
    """Why a testbed cannot be made here (not root, no namespaces), or None."""
    if os.geteuid() != 0:
        return "the multi-node testbed needs root (network namespaces, veth, sshd)"
    res = subprocess.run(["bash", str(SCRIPT), "deps"], capture_output=True, text=True)
    if res.returncode:
        return (res.stderr.strip().splitlines() or ["testbed.sh deps failed"])[-1]
    probe = "tbdp-probe"
    res = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if res.returncode:
        return f"cannot create network namespaces: {res.stderr.strip() or 'ip netns add failed'}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def up(n: int, bandwidth: str | None = None, delay: str | None = None, host_env: dict[str, dict[str, str]] | None = None,
       state: str | os.PathLike | None = None, name: str = DEFAULT_NAME) -> Testbed:
    """Create ``n`` hosts; ``host_env`` = {host: {VAR: value}} is set in every session on that host.

    ``name`` prefixes the testbed's namespaces: testbeds of different names can be up at once.
    """
    state = Path(state or tempfile.mkdtemp(prefix="tbdprof-testbed-"))
    env_args = [a for h, env in (host_env or {}).items() for k, v in env.items() for a in ("--host-env", f"{h}:{k}={v}")]
    _script("up", str(n), *(_shaping(bandwidth, delay) if bandwidth or delay else []), *env_args, "--name", name, state=state)
    return Testbed(n, state, name)


def down(tb: Testbed | None = None, name: str = DEFAULT_NAME) -> None:
    """Remove ``tb``'s hosts; without ``tb``, every host of the testbeds named ``name``
    (also those a crashed run left, whose state folder is gone)."""
    if tb:
        _script("down", state=tb.state)
    else:
        _script("down", "--name", name, state=Path(tempfile.gettempdir()) / "tbdprof-testbed")


@contextlib.contextmanager
def hosts(n: int, **kw) -> Iterator[Testbed]:
    """A testbed for the ``with`` block; torn down even when the block fails."""
    tb = up(n, **kw)
    try:
        yield tb
    finally:
        down(tb)

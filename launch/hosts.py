"""Host lists: ``--hosts h1:2,h2:2`` or a hostfile, and placing ranks on their slots.

A hostfile line is ``host``, ``host:N`` or Open MPI's ``host slots=N``;
``#`` starts a comment. A bad line is reported with its file and line number.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path

from .local import LaunchError

_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_LOCAL = {"localhost", "127.0.0.1", "::1"}


class HostfileError(LaunchError):
    """A host list or hostfile entry that cannot be read."""


@dataclass(frozen=True)
class Host:
    name: str
    slots: int

    @property
    def local(self) -> bool:
        """True when the host is this machine (no ssh needed)."""
        return self.name in _LOCAL or self.name == socket.gethostname()

    @property
    def hostname(self) -> str:
        """The host's own name: this machine's for ``localhost`` (what its ranks record), else the given name."""
        return socket.gethostname() if self.name in _LOCAL else self.name

    def __str__(self) -> str:
        return f"{self.name}:{self.slots}"


def _entry(text: str, where: str) -> Host:
    m = re.fullmatch(r"(\S+?)(?::(\S+)|\s+slots\s*=\s*(\S+))?", text.strip())
    if not m or not _NAME.match(m.group(1)):
        raise HostfileError(f"{where}: {text.strip()!r} is not 'host', 'host:N' or 'host slots=N'")
    raw = m.group(2) or m.group(3) or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise HostfileError(f"{where}: slots of {m.group(1)} must be a positive integer (got {raw!r})")
    return Host(m.group(1), int(raw))


def _unique(hosts: list[Host], where: str) -> list[Host]:
    seen = set()
    for h in hosts:
        if h.name in seen:
            raise HostfileError(f"{where}: host {h.name} is listed twice")
        seen.add(h.name)
    if not hosts:
        raise HostfileError(f"{where}: no hosts")
    return hosts


def parse_hosts(spec: str) -> list[Host]:
    """``"h1:2,h2:2"`` -> hosts with their slots (a bare name has 1 slot)."""
    return _unique([_entry(part, f"--hosts entry {part!r}") for part in spec.split(",")], "--hosts")


def read_hostfile(path: str | Path) -> list[Host]:
    """Read a hostfile; :class:`HostfileError` names the file and line of a bad entry."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise HostfileError(f"hostfile {path}: {e.strerror}") from None
    hosts = []
    for no, line in enumerate(lines, 1):
        text = line.split("#", 1)[0]
        if text.strip():
            hosts.append(_entry(text, f"hostfile {path} line {no}"))
    return _unique(hosts, f"hostfile {path}")


def place(hosts: list[Host], nproc: int | None = None, per_node: int | None = None) -> list[Host]:
    """The hosts that ``nproc`` ranks fill, in order, each with the ranks it gets.

    ``per_node`` caps the ranks per host (and with no ``nproc``, gives every
    host that many). More ranks than slots is a :class:`LaunchError`.
    """
    if per_node is not None and per_node < 1:
        raise LaunchError(f"--nproc-per-node must be at least 1 (got {per_node})")
    cap = [min(h.slots, per_node) if per_node else h.slots for h in hosts]
    if per_node and any(h.slots < per_node for h in hosts) and nproc is None:
        short = next(h for h in hosts if h.slots < per_node)
        raise LaunchError(f"host {short.name} has {short.slots} slot(s), fewer than --nproc-per-node {per_node}")
    total = sum(cap)
    nproc = total if nproc is None else nproc
    if nproc < 1:
        raise LaunchError(f"--nproc must be at least 1 (got {nproc})")
    if nproc > total:
        listed = ", ".join(f"{h.name}:{c}" for h, c in zip(hosts, cap))
        raise LaunchError(f"{nproc} ranks requested but the hosts offer {total} slot(s) ({listed})")
    placed, left = [], nproc
    for h, c in zip(hosts, cap):
        if left == 0:
            break
        placed.append(Host(h.name, min(c, left)))
        left -= placed[-1].slots
    return placed


def hostfile_text(hosts: list[Host]) -> str:
    """An Open MPI hostfile for ``hosts``."""
    return "".join(f"{h.name} slots={h.slots}\n" for h in hosts)

"""Running commands on other hosts over ssh (key-based login, as on a cluster)."""

from __future__ import annotations

import shlex
import subprocess

from .local import LaunchError

SSH_OPTS = ("-o", "BatchMode=yes")
CONNECT_TIMEOUT_S = 5


def remote_shell(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> str:
    """A shell line running ``argv`` with ``env`` added, from ``cwd``."""
    line = shlex.join(["env", *(f"{k}={v}" for k, v in (env or {}).items()), *argv] if env else argv)
    return f"cd {shlex.quote(cwd)} && exec {line}" if cwd else f"exec {line}"


def ssh_argv(host: str, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> list[str]:
    """``ssh host`` running ``argv`` there.

    ``-tt`` gives the remote command a terminal, so that stopping this ssh
    client hangs it up: the remote process gets SIGHUP instead of lingering.
    """
    return ["ssh", "-tt", *SSH_OPTS, host, remote_shell(argv, env, cwd)]


def check_reachable(hosts: list[str]) -> None:
    """Raise :class:`LaunchError` naming the first host that ssh cannot log in to."""
    probes = {
        h: subprocess.Popen(
            ["ssh", *SSH_OPTS, "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}", h, "true"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for h in hosts
    }
    failed = []
    for h, p in probes.items():
        try:
            _, err = p.communicate(timeout=CONNECT_TIMEOUT_S * 3)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        if p.returncode != 0:
            failed.append((h, (err.strip().splitlines() or ["no answer"])[-1]))
    if failed:
        h, why = failed[0]
        raise LaunchError(f"host {h} is unreachable over ssh ({why})")

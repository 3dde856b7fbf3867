"""How ranks ended, as their launcher saw it: torchrun's record of a rank that died of a signal.

A rank killed by a signal (SIGKILL from the OOM killer or a user, SIGSEGV)
runs no code of ours: its recording just stops, and only its parent learns
how it ended. Under ``tbdprof profile`` the start-up hook also runs in
torchrun's agent (a launcher, never a rank); :func:`watch_torchrun` chains
``sys.excepthook`` there. When the agent ends with ``ChildFailedError`` (a
worker failed; torchrun's own error file stays empty for a worker killed by
a signal, it has no traceback to write), the hook writes the failures it
carries, per global rank: exit code (-N: signal N), pid, the time torchrun noticed,
into ``exits-HOST-PID.json`` in the run folder (one file per agent: one per
host). ``tbdprof profile`` writes one too when the command it started was
itself the rank (``python train.py``) and a signal ended it. Analysis reads
them beside ``run.json``'s ``exit_codes``, which tbdprof's own launchers write.
"""

from __future__ import annotations

import os
import socket
import sys

from . import schema, store


def write_exits(run_dir: str | os.PathLike, launcher: str, ranks: dict[int, dict]) -> None:
    """``ranks`` (global rank -> ``exit_code``, ``pid``, ``local_rank``, ``seen_ns``) as this process's file."""
    host = socket.gethostname()
    name = f"{schema.EXITS_PREFIX}{store.safe_host(host)}-{os.getpid()}.json"
    store.write_json_atomic(os.path.join(run_dir, name),
                            {"launcher": launcher, "host": host, "ranks": {str(r): v for r, v in ranks.items()}})


def write_failures(run_dir: str | os.PathLike, launcher: str, failures: dict) -> None:
    """``failures`` (global rank -> torchrun's ``ProcessFailure``) into the run folder."""
    ranks = {}
    for rank, f in failures.items():
        ts = getattr(f, "timestamp", None)
        ranks[rank] = {"exit_code": getattr(f, "exitcode", None), "pid": getattr(f, "pid", None),
                       "local_rank": getattr(f, "local_rank", None),
                       "seen_ns": int(ts * 1e9) if isinstance(ts, (int, float)) else None}
    write_exits(run_dir, launcher, ranks)


def watch_torchrun(run_dir: str | None) -> None:
    """In torchrun's agent: record the failed workers of a ``ChildFailedError`` that ends it (see the module)."""
    if not run_dir or getattr(sys.excepthook, "_tbdprof", False):
        return
    previous = sys.excepthook

    def excepthook(kind, value, tb):
        failures = getattr(value, "failures", None)
        if isinstance(failures, dict) and kind.__name__ == "ChildFailedError":
            try:
                write_failures(run_dir, "torchrun", failures)
            except Exception as e:  # noqa: BLE001 - the agent's own report below must still come
                print(f"tbdprof: cannot record torchrun's failures: {e}", file=sys.stderr)
        previous(kind, value, tb)

    excepthook._tbdprof = True
    sys.excepthook = excepthook

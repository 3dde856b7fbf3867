"""Storage I/O: read and write rates per rank and per disk, set against the time spent waiting for data.

``io.read_chars`` counts bytes through read syscalls (page-cache hits
included), ``io.read_bytes`` only what reached the block device; both cover
the rank and its data-loader workers. A rank whose data wait is a large share
of its step while its read rate is low is bound by loading or preprocessing,
not by storage bandwidth.
"""

from __future__ import annotations

from tbdprof import schema

from .load import Run
from .timeline import counter_rates

PROCESS_IO = ("io.read_chars", "io.read_bytes", "io.write_chars", "io.write_bytes")
DISK_IO = ("disk.read_bytes", "disk.write_bytes")


def io_figures(run: Run) -> dict:
    """Per rank: bytes and bytes/s per process I/O counter, and data wait per step; per host and disk: bytes/s."""
    wait = {
        r: (ns / 1e9 / n, ns / total if total else None)
        for r, ns, n, total in run.sql(
            "SELECT p.rank, sum(p.end_ns - p.start_ns), count(DISTINCT p.step), any_value(s.total) FROM steady_phases p "
            "LEFT JOIN (SELECT rank, sum(end_ns - start_ns) AS total FROM steady_steps GROUP BY rank) s "
            "USING (rank) WHERE p.name = ? GROUP BY p.rank",
            [schema.PHASE_DATA],
        )
    }
    per_rank: dict[str, dict] = {}
    disks: dict[str, dict] = {}
    for (host, rank, metric, device), v in counter_rates(run, PROCESS_IO + DISK_IO).items():
        if metric in DISK_IO:
            disks.setdefault(host, {}).setdefault(device, {})[metric.split(".", 1)[1]] = v
        else:
            per_rank.setdefault(str(rank), {"host": host})[metric.split(".", 1)[1]] = v
    for rank, (s_per_step, fraction) in wait.items():
        per_rank.setdefault(str(rank), {})["data_wait"] = {"s_per_step": s_per_step, "fraction": fraction}
    return {"per_rank": dict(sorted(per_rank.items(), key=lambda kv: int(kv[0]))), "disks": disks}

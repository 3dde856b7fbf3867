"""Network: traffic per host and interface, and the bandwidth collectives achieved.

Interface traffic comes from the host counters ``net.bytes_sent`` and
``net.bytes_recv``. Collective bandwidth comes from the ``comm`` spans, with
nccl-tests' definitions: algorithm bandwidth ``algbw = bytes / time`` and bus
bandwidth ``busbw = algbw x factor(n)``, where the factor (2(n-1)/n for
allreduce) makes busbw comparable with the link's capacity whatever the
number of ranks ``n``. Time is the union of a rank's spans of that
collective, so buckets in flight together are not counted twice.
"""

from __future__ import annotations

import re

from tbdprof import schema
from tbdprof.errors import UserError

from . import rollups
from .breakdown import coverage_ns
from .load import Run
from .network import ring_factor
from .timeline import counter_rates

NET_METRICS = ("net.bytes_sent", "net.bytes_recv")

# nccl-tests' bus-bandwidth factors, by collective name.
BUS_FACTORS = {
    schema.COMM_ALLREDUCE: ring_factor,
    schema.COMM_ALLGATHER: lambda n: (n - 1) / n,
    schema.COMM_REDUCE_SCATTER: lambda n: (n - 1) / n,
    "alltoall": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "reduce": lambda n: 1.0,
}


def bus_factor(collective: str | None, n: int) -> float | None:
    """nccl-tests' bus-bandwidth factor of ``collective`` over ``n`` ranks (None where it defines none)."""
    factor = BUS_FACTORS.get(collective)
    return factor(n) if factor and n > 0 else None


def bus_bandwidth(algbw: float | None, collective: str | None, n: int) -> float | None:
    """busbw = algbw x :func:`bus_factor`: comparable with a link's capacity whatever the number of ranks."""
    factor = bus_factor(collective, n)
    return algbw * factor if algbw is not None and factor is not None else None


_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_BW = re.compile(r"^\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]i?)?\s*(bit|bps|b)?(?:/s|ps)?\s*$", re.IGNORECASE)


def parse_bandwidth(text: str) -> float:
    """A link capacity such as ``10Gbit``, ``25Gbps``, ``1.25GB/s`` or ``400MiB/s``, in bytes/s.

    Lower-case ``b``/``bit``/``bps`` mean bits, ``B`` bytes; a bare number is bytes/s.
    """
    m = _BW.match(text or "")
    if not m or m.group(1).count(".") > 1:
        raise UserError(f"cannot read {text!r} as a bandwidth (examples: 10Gbit, 25Gbps, 1.25GB/s)")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    unit = m.group(3) or "B"
    bits = unit.lower() in ("bit", "bps") or unit == "b"
    return value / 8 if bits else value


def network_usage(run: Run) -> dict:
    """Per host and interface: bytes sent/received over the run, bytes/s and bytes per step in steady state."""
    steps = run.sql("SELECT count(*) FROM steady_steps GROUP BY rank ORDER BY 1 DESC LIMIT 1")
    window = run.steady_window
    period = (window[1] - window[0]) / 1e9 / steps[0][0] if window and steps else None
    out: dict[str, dict] = {}
    for (host, _rank, metric, device), v in counter_rates(run, NET_METRICS).items():
        direction = metric.rsplit("_", 1)[1]  # sent / recv
        nic = out.setdefault(host, {}).setdefault(device, {})
        nic[f"bytes_{direction}"] = v["total"]
        nic[f"{direction}_bytes_per_s"] = v["per_s"]
        nic[f"{direction}_bytes_per_step"] = v["per_s"] * period if period and v["per_s"] is not None else None
    return out


def collective_bandwidth(run: Run, link_bytes_per_s: float | None = None) -> dict:
    """Per collective, per rank and over all ranks: bytes, busy time, algbw, busbw (bytes/s), busbw / link.

    Steady-state steps only. ``link_fraction`` is None when the link's
    capacity is unknown (no ``--link-bandwidth``).
    """
    n = run.world_size
    out: dict[str, dict] = {}
    names = [n for (n,) in run.sql("SELECT DISTINCT name FROM steady_comm ORDER BY 1")]
    for name in names:
        # one collective: the same spans as the breakdown's, whose islands are cached
        busy = {r: c["total"] / 1e9 for r, c in coverage_ns(run, None if len(names) == 1 else name).items()}
        rows = run.sql(
            "SELECT rank, count(*), sum(bytes), median(bytes / nullif((end_ns - start_ns) / 1e9, 0)) FROM steady_comm "
            "WHERE name = ? GROUP BY rank ORDER BY rank", [name]
        )
        if run.zoom:  # scale mode: calls and bytes of the whole run (rollups), busy time scaled from the zoom window's
            whole = {r: m for (r, c), m in rollups.merged(run, schema.KIND_COMM).items() if c == name}
            busy = {r: b * whole[r].count / calls for r, calls, _, _ in rows if (b := busy.get(r)) and r in whole}
            rows = [(r, whole[r].count, whole[r].bytes, call_bw) for r, _, _, call_bw in rows if r in whole]
        bw = (name, n, link_bytes_per_s)
        per_rank = {str(r): _bw(calls, nbytes or 0, busy.get(r, 0.0), call_bw, *bw) for r, calls, nbytes, call_bw in rows}
        total = _bw(sum(p["calls"] for p in per_rank.values()), sum(p["bytes"] for p in per_rank.values()),
                    sum(p["busy_s"] for p in per_rank.values()), None, *bw)
        out[name] = total | {"bus_factor": bus_factor(name, n), "ranks": n, "per_rank": per_rank}
    return {"link_bytes_per_s": link_bytes_per_s, "collectives": out}


def best_call_busbw(run: Run) -> float | None:
    """The highest bus bandwidth (payload bytes/s) any single steady-state allreduce call achieved.

    ``bytes / duration`` per ``comm`` span, times the bus factor: a lower bound
    on the capacity of the slowest link the ring crosses (a call's span also
    holds queueing and waiting for other ranks, which only lower it).
    """
    if run.world_size < 2:
        return None
    (best,), = run.sql("SELECT max(bytes / ((end_ns - start_ns) / 1e9)) FROM steady_comm "
                       "WHERE name = ? AND end_ns > start_ns AND bytes > 0", [schema.COMM_ALLREDUCE])
    return bus_bandwidth(float(best), schema.COMM_ALLREDUCE, run.world_size) if best else None


def _bw(calls: int, nbytes: int, busy: float, call_bw: float | None, collective: str, n: int, link: float | None) -> dict:
    algbw = nbytes / busy if busy else None
    busbw = bus_bandwidth(algbw, collective, n)
    return {"calls": calls, "bytes": int(nbytes), "busy_s": busy, "algbw_bytes_per_s": algbw,
            "median_call_algbw_bytes_per_s": call_bw, "busbw_bytes_per_s": busbw,
            "link_fraction": busbw / link if busbw is not None and link else None}

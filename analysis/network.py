"""Network traffic per host against the ring-allreduce model.

Data-parallel training allreduces the gradients every step. A ring (or, for
two ranks, any bandwidth-optimal) allreduce of ``B`` bytes over ``n`` ranks
sends ``2(n-1)/n * B`` bytes from every rank. On the wire TCP/IP adds
headers: at most ``HEADER_BYTES`` per ``MSS`` bytes of payload on a 1500-byte
MTU link, less with segmentation offload, plus the ACKs of what the host
receives. :func:`network_vs_model` compares the bytes each host sent on an
interface during the steady-state steps with that model.
"""

from __future__ import annotations

import numpy as np

from tbdprof import schema

from .load import Run

HEADER_BYTES = 14 + 20 + 32  # Ethernet + IPv4 + TCP with timestamps
MSS = 1500 - 20 - 32  # payload of a full 1500-byte frame
PROTOCOL_OVERHEAD = HEADER_BYTES / MSS  # ~4.6%: the most headers add to the payload


def ring_allreduce_bytes(grad_bytes: float, n: int) -> float:
    """Bytes each of ``n`` ranks sends to allreduce ``grad_bytes`` with a ring."""
    return 2 * (n - 1) / n * grad_bytes if n > 1 else 0.0


def link_seconds(nbytes: float, rate_bits_per_s: float, overhead: float = PROTOCOL_OVERHEAD) -> float:
    """Time to push ``nbytes`` of payload (plus header ``overhead``) through a link of the given rate."""
    return nbytes * (1 + overhead) * 8 / rate_bits_per_s


def _steady(run: Run) -> str:
    return f"kind = '{schema.KIND_STEP}' AND step >= {run.warmup_steps}"


def gradient_bytes_per_step(run: Run) -> float | None:
    """Bytes allreduced per step and rank: the comm spans' ``bytes``, else the weights in memory."""
    rows = run.sql(
        f"SELECT median(b) FROM (SELECT rank, step, sum(bytes) AS b FROM spans "
        f"WHERE kind = '{schema.KIND_COMM}' AND step >= {run.warmup_steps} GROUP BY rank, step)"
    )
    if rows and rows[0][0]:
        return float(rows[0][0])
    rows = run.sql("SELECT median(weights) FROM memory") if run.has(schema.MEMORY) else []
    return float(rows[0][0]) if rows and rows[0][0] else None


def bytes_sent_per_step(run: Run, interface: str = "eth0") -> dict[str, dict]:
    """Per host: bytes sent on ``interface`` per steady-state step.

    The counter is interpolated at the start of the first steady step and the
    end of the last one, so traffic before (rendezvous, model broadcast) and
    after (clock sync, teardown) the steps is left out.
    """
    windows = run.sql(
        f"SELECT host, min(start_ns), max(end_ns), count(DISTINCT step) FROM spans WHERE {_steady(run)} GROUP BY host"
    )
    out = {}
    for host, t0, t1, steps in windows:
        rows = run.sql(
            "SELECT ts_ns, value FROM samples WHERE metric = 'net.bytes_sent' AND device = ? AND host = ? ORDER BY ts_ns",
            [interface, host],
        )
        if len(rows) < 2 or not steps:
            continue
        ts, value = np.array(rows, dtype=float).T
        if t0 < ts[0] or t1 > ts[-1]:
            continue  # the window is not covered by samples: no honest figure
        sent = float(np.interp(t1, ts, value) - np.interp(t0, ts, value))
        out[host] = {"bytes_per_step": sent / steps, "steps": int(steps), "window_s": (t1 - t0) / 1e9}
    return out


def network_vs_model(run: Run, interface: str = "eth0") -> dict:
    """Measured bytes sent per step and host vs the ring-allreduce model.

    Returns ``{"gradient_bytes", "world_size", "model_bytes_per_step",
    "overhead", "hosts": {host: {"bytes_per_step", "ratio", ...}}}``; ``ratio``
    is measured / (model x (1 + overhead)).
    """
    grad = gradient_bytes_per_step(run)
    n = run.world_size
    # With ranks placed host by host, one edge of the ring leaves each host.
    model = ring_allreduce_bytes(grad or 0.0, n)
    expected = model * (1 + PROTOCOL_OVERHEAD)
    hosts = bytes_sent_per_step(run, interface)
    for figs in hosts.values():
        figs["ratio"] = figs["bytes_per_step"] / expected if expected else None
    return {
        "interface": interface, "gradient_bytes": grad, "world_size": n,
        "model_bytes_per_step": model, "overhead": PROTOCOL_OVERHEAD, "hosts": hosts,
    }


def comm_seconds_per_step(run: Run) -> float | None:
    """Median over steady steps and ranks of the time any allreduce was in flight (overlaps counted once)."""
    rows = run.sql(
        f"SELECT rank, step, start_ns, end_ns FROM spans WHERE kind = '{schema.KIND_COMM}' "
        f"AND step >= {run.warmup_steps} ORDER BY rank, step, start_ns"
    )
    busy: dict[tuple, float] = {}
    last: dict[tuple, int] = {}
    for rank, step, start, end in rows:
        key = (rank, step)
        lo = max(start, last.get(key, start))
        busy[key] = busy.get(key, 0.0) + max(0, end - lo) / 1e9
        last[key] = max(end, last.get(key, end))
    return float(np.median(list(busy.values()))) if busy else None


def ring_allreduce_seconds(grad_bytes: float, n: int, link_bytes_per_s: float, latency_s: float = 0.0,
                           overhead: float = PROTOCOL_OVERHEAD) -> float:
    """Lower bound on one step's allreduce of ``grad_bytes`` over ``n`` ranks on a ring.

    Bandwidth term: :func:`ring_allreduce_bytes` through the slowest ring edge
    at ``link_bytes_per_s`` (plus header ``overhead``; pass 0 when the rate is
    already a payload rate). Latency term: ``2(n-1)`` sequential ring hops of
    ``latency_s`` each (reduce-scatter then allgather).
    """
    if n < 2:
        return 0.0
    return link_seconds(ring_allreduce_bytes(grad_bytes, n), link_bytes_per_s * 8, overhead) + 2 * (n - 1) * latency_s


def best_call_busbw(run: Run) -> float | None:
    """The highest bus bandwidth (payload bytes/s) any single steady-state allreduce call achieved.

    ``bytes / duration x 2(n-1)/n`` per ``comm`` span: a lower bound on the
    capacity of the slowest link the ring crosses (a call's span also holds
    queueing and waiting for other ranks, which only lower it).
    """
    n = run.world_size
    if n < 2:
        return None
    rows = run.sql(
        f"SELECT max(bytes / ((end_ns - start_ns) / 1e9)) FROM spans WHERE kind = '{schema.KIND_COMM}' "
        f"AND name = '{schema.COMM_ALLREDUCE}' AND step >= {int(run.warmup_steps)} AND end_ns > start_ns AND bytes > 0"
    )
    best = rows[0][0] if rows else None
    return float(best) * 2 * (n - 1) / n if best else None

"""Network traffic per host against the ring-allreduce model.

Data-parallel training allreduces the gradients every step. A ring (or, for
two ranks, any bandwidth-optimal) allreduce of ``B`` bytes over ``n`` ranks
sends ``2(n-1)/n * B`` bytes from every rank. On the wire TCP/IP adds
headers: at most ``HEADER_BYTES`` per ``MSS`` bytes of payload on a 1500-byte
MTU link, less with segmentation offload, plus the ACKs of what the host
receives. Scaling uses the model and its bounds; the multi-host tests check
a host's counters against it (tests/multinode/netcheck.py).
"""

from __future__ import annotations

from tbdprof import schema

from .load import Run

HEADER_BYTES = 14 + 20 + 32  # Ethernet + IPv4 + TCP with timestamps
MSS = 1500 - 20 - 32  # payload of a full 1500-byte frame
PROTOCOL_OVERHEAD = HEADER_BYTES / MSS  # ~4.6%: the most headers add to the payload


def ring_factor(n: int) -> float:
    """2(n-1)/n: the share of an allreduce's bytes each of ``n`` ranks sends on a ring (nccl-tests' bus factor)."""
    return 2 * (n - 1) / n if n > 1 else 0.0


def ring_allreduce_bytes(grad_bytes: float, n: int) -> float:
    """Bytes each of ``n`` ranks sends to allreduce ``grad_bytes`` with a ring."""
    return ring_factor(n) * grad_bytes


def link_seconds(nbytes: float, rate_bits_per_s: float, overhead: float = PROTOCOL_OVERHEAD) -> float:
    """Time to push ``nbytes`` of payload (plus header ``overhead``) through a link of the given rate."""
    return nbytes * (1 + overhead) * 8 / rate_bits_per_s


def gradient_bytes_per_step(run: Run) -> float | None:
    """Bytes allreduced per step and rank: the comm spans' ``bytes``, else the weights in memory."""
    rows = run.sql("SELECT median(b) FROM (SELECT rank, step, sum(bytes) AS b FROM steady_comm GROUP BY rank, step)")
    if rows and rows[0][0]:
        return float(rows[0][0])
    rows = (run.sql("SELECT median(value_sum / count) FROM rollups WHERE kind = ? AND name = 'weights'", [schema.ROLLUP_MEMORY])
            if run.memory_rollups else run.sql("SELECT median(weights) FROM memory") if run.has(schema.MEMORY) else [])
    return float(rows[0][0]) if rows and rows[0][0] else None


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

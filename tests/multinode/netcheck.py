"""What the multi-host tests measure against the ring-allreduce model (analysis/network.py):
bytes a host sent per steady step on an interface, and communication time per step."""

from __future__ import annotations

import numpy as np

from tbdprof.analysis.breakdown import coverage_ns
from tbdprof.analysis.load import Run
from tbdprof.analysis.network import PROTOCOL_OVERHEAD, gradient_bytes_per_step, ring_allreduce_bytes


def bytes_sent_per_step(run: Run, interface: str = "eth0") -> dict[str, dict]:
    """Per host: bytes sent on ``interface`` per steady-state step.

    The counter is interpolated at the start of the first steady step and the
    end of the last one, so traffic before (rendezvous, model broadcast) and
    after (clock sync, teardown) the steps is left out.
    """
    windows = run.sql("SELECT host, min(start_ns), max(end_ns), count(DISTINCT step) FROM steady_steps GROUP BY host")
    out = {}
    for host, t0, t1, steps in windows:
        rows = run.sql("SELECT ts_ns, value FROM samples WHERE metric = 'net.bytes_sent' AND device = ? AND host = ? "
                       "ORDER BY ts_ns", [interface, host])
        if len(rows) < 2 or not steps:
            continue
        ts, value = np.array(rows, dtype=float).T
        if t0 < ts[0] or t1 > ts[-1]:
            continue  # the window is not covered by samples: no honest figure
        sent = float(np.interp(t1, ts, value) - np.interp(t0, ts, value))
        out[host] = {"bytes_per_step": sent / steps, "steps": int(steps), "window_s": (t1 - t0) / 1e9}
    return out


def network_vs_model(run: Run, interface: str = "eth0") -> dict:
    """Measured bytes sent per step and host vs the ring-allreduce model: ``{"gradient_bytes", "world_size",
    "model_bytes_per_step", "overhead", "hosts": {host: {"bytes_per_step", "ratio", ...}}}``, where ``ratio``
    is measured / (model x (1 + overhead))."""
    grad = gradient_bytes_per_step(run)
    model = ring_allreduce_bytes(grad or 0.0, run.world_size)  # ranks placed host by host: one ring edge leaves each host
    expected = model * (1 + PROTOCOL_OVERHEAD)
    hosts = bytes_sent_per_step(run, interface)
    for figs in hosts.values():
        figs["ratio"] = figs["bytes_per_step"] / expected if expected else None
    return {"interface": interface, "gradient_bytes": grad, "world_size": run.world_size,
            "model_bytes_per_step": model, "overhead": PROTOCOL_OVERHEAD, "hosts": hosts}


def comm_seconds_per_step(run: Run) -> float | None:
    """Median over ranks of the time a collective was in flight per steady step (overlaps counted once:
    the breakdown's union of intervals)."""
    busy = coverage_ns(run)
    steps = dict(run.sql("SELECT rank, count(*) FROM steady_steps GROUP BY rank"))
    per = [v["total"] / 1e9 / steps[r] for r, v in busy.items() if steps.get(r)]
    return float(np.median(per)) if per else None

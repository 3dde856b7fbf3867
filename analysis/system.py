"""CPU, memory, network, disk and process I/O: averages and totals over the whole run (timelines: :mod:`.timeline`)."""

from __future__ import annotations

from tbdprof import schema

from .load import Run
from .timeline import COUNTERS, counter_rates, gauge_stats


def system_figures(run: Run) -> dict:
    """Averages and totals over the run, per rank (process metrics) and per host (host metrics)."""
    if not run.has(schema.SAMPLES):
        return {}
    gauges = [r[:6] for r in gauge_stats(run, steady=False)]
    counters = counter_rates(run, COUNTERS, steady=False)
    per_rank: dict[str, dict] = {}
    per_host: dict[str, dict] = {}

    def slot(host, rank, metric):
        scope = schema.METRICS[metric].scope if metric in schema.METRICS else "process"
        if scope == "host":
            return per_host.setdefault(host, {})
        return per_rank.setdefault(str(rank), {"host": host})

    for host, rank, metric, device, avg, mx in gauges:
        key = metric if not device else f"{metric}[{device}]"
        slot(host, rank, metric)[key] = {"avg": avg, "max": mx}
    for (host, rank, metric, device), fig in counters.items():
        key = metric if not device else f"{metric}[{device}]"
        slot(host, rank, metric)[key] = fig
    return {"per_rank": per_rank, "per_host": per_host, "network": _network(per_host), "io": _io(per_rank)}


def _network(per_host: dict) -> dict:
    """Bytes sent and received per host, summed over its interfaces."""
    out = {}
    for host, figs in per_host.items():
        sent = sum(v["total"] for k, v in figs.items() if k.startswith("net.bytes_sent["))
        recv = sum(v["total"] for k, v in figs.items() if k.startswith("net.bytes_recv["))
        by_nic = {k.split("[", 1)[1][:-1]: v["total"] for k, v in figs.items() if k.startswith("net.bytes_sent[")}
        out[host] = {"bytes_sent": sent, "bytes_recv": recv, "bytes_sent_by_interface": by_nic}
    return out


def _io(per_rank: dict) -> dict:
    return {
        r: {m: figs[m]["total"] for m in ("io.read_chars", "io.read_bytes", "io.write_bytes") if m in figs}
        for r, figs in per_rank.items()
    }

"""CPU, memory, network, disk and process I/O: averages and totals over the whole run (timelines: :mod:`.timeline`)."""

from __future__ import annotations

from tbdprof import schema

from .load import Run, sql_list

COUNTERS = tuple(m.name for m in schema.METRICS.values() if m.counter)


def system_figures(run: Run) -> dict:
    """Averages and totals over the run, per rank (process metrics) and per host (host metrics)."""
    if not run.has(schema.SAMPLES):
        return {}
    gauges = run.sql(
        f"SELECT host, rank, metric, device, avg(value), max(value) FROM samples "
        f"WHERE metric NOT IN {sql_list(COUNTERS)} GROUP BY ALL ORDER BY ALL"
    )
    counters = run.sql(
        f"SELECT host, rank, metric, device, max(value) - min(value), (max(ts_ns) - min(ts_ns)) / 1e9 FROM samples "
        f"WHERE metric IN {sql_list(COUNTERS)} GROUP BY ALL ORDER BY ALL"
    )
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
    for host, rank, metric, device, delta, dur in counters:
        key = metric if not device else f"{metric}[{device}]"
        slot(host, rank, metric)[key] = {"total": delta, "per_s": delta / dur if dur > 0 else None}
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

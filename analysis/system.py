"""CPU, memory, network, disk and process I/O: run totals and timelines."""

from __future__ import annotations

from tbdprof import schema

from .load import Run

COUNTERS = tuple(m.name for m in schema.METRICS.values() if m.counter)


def _in(names) -> str:
    return "(" + ", ".join(f"'{n}'" for n in names) + ")"


def system_figures(run: Run) -> dict:
    """Averages and totals over the run, per rank (process metrics) and per host (host metrics)."""
    if not run.has(schema.SAMPLES):
        return {}
    gauges = run.sql(
        f"SELECT host, rank, metric, device, avg(value), max(value) FROM samples "
        f"WHERE metric NOT IN {_in(COUNTERS)} GROUP BY ALL ORDER BY ALL"
    )
    counters = run.sql(
        f"SELECT host, rank, metric, device, max(value) - min(value), (max(ts_ns) - min(ts_ns)) / 1e9 FROM samples "
        f"WHERE metric IN {_in(COUNTERS)} GROUP BY ALL ORDER BY ALL"
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


def series(run: Run, metric: str) -> dict[str, list[tuple[float, float]]]:
    """A metric over time, per (rank/host, device): (seconds since run start, value).

    Counters come back as per-second rates between consecutive samples.
    """
    if not run.has(schema.SAMPLES):
        return {}
    t0 = run.sql("SELECT min(ts_ns) FROM samples")[0][0]
    if metric in COUNTERS:
        rows = run.sql(
            "SELECT host, rank, device, ts, rate FROM (SELECT host, rank, device, (ts_ns - ?) / 1e9 AS ts, "
            "(value - lag(value) OVER w) / ((ts_ns - lag(ts_ns) OVER w) / 1e9) AS rate FROM samples WHERE metric = ? "
            "WINDOW w AS (PARTITION BY host, rank, device ORDER BY ts_ns)) WHERE rate IS NOT NULL ORDER BY host, rank, device, ts",
            [t0, metric],
        )
    else:
        rows = run.sql(
            "SELECT host, rank, device, (ts_ns - ?) / 1e9, value FROM samples WHERE metric = ? ORDER BY host, rank, device, ts_ns",
            [t0, metric],
        )
    out: dict[str, list[tuple[float, float]]] = {}
    scope = schema.METRICS[metric].scope
    for host, rank, device, ts, value in rows:
        who = host if scope == "host" else f"rank {rank}"
        label = f"{who} {device}".strip()
        out.setdefault(label, []).append((ts, value))
    return out

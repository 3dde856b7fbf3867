"""Scaling report: how throughput grows with workers, and where every lost percent of efficiency goes.

Input: a sweep folder (``sweep.json``) or any run folders of one workload.
Each run becomes a per-step time split (:func:`step_split`); runs of the same
configuration (ranks, hosts) are repeats and give medians with min/max;
configurations of one batch setting form a series (weak: fixed per-rank
batch; strong: fixed global batch) compared with its smallest configuration.
The method (efficiency attribution, synchronization wait, communication model,
projection, noise) is stated in docs/scaling.md; ``scaling.json``'s keys too.
Rendering lives in :mod:`.scaling_html`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from statistics import median

from tbdprof import schema, store
from tbdprof.errors import UserError

from . import network
from .bandwidth import best_call_busbw
from .breakdown import COMPUTE, Phases, coverage_ns
from .load import Run, RunError, analyse
from .steps import step_stats

SCALING_FILE = "scaling.json"
CAUSES = ("compute", "comm_exposed", "data_wait", "sync_wait", "other")
SCALINGS = ("weak", "strong", "mixed")
_BATCH_KEY = {"weak": "batch_size", "strong": "global_batch_size"}


class ScalingError(UserError):
    """Nothing in the input can be compared (the CLI's exit 2)."""


# ---------------------------------------------------------------- one run

# The phases the step split sums: data wait, explicit comm waits, compute.
_SPLIT_PHASES = {"data": Phases(only=(schema.PHASE_DATA,)), "cph": Phases(only=(schema.PHASE_COMM,)), "comp": COMPUTE}


def _split_sql() -> tuple[str, dict]:
    ov = "greatest(0, least(p.end_ns, w.we) - greatest(p.start_ns, w.ws))"
    dur = "(p.end_ns - p.start_ns)"
    cols, params = [], {}
    for k, phases in _SPLIT_PHASES.items():
        cond, p = phases.sql(k)
        cols.append(f"coalesce(sum({dur}) FILTER (WHERE {cond}), 0) AS {k}, coalesce(sum({ov}) FILTER (WHERE {cond}), 0) AS {k}_w")
        params |= p
    return (
        "WITH st AS (SELECT rank, step, start_ns AS s, end_ns AS e FROM steady_steps), "
        "c AS (SELECT rank, step, max(start_ns) AS l, max(end_ns) AS ce FROM steady_comm GROUP BY ALL), "
        "lm AS (SELECT step, max(l) AS last FROM c GROUP BY step), "
        # no comm in the step: an empty wait at its start (DuckDB's least/greatest skip NULLs)
        "w0 AS (SELECT st.*, CASE WHEN c.l IS NULL THEN st.s ELSE least(greatest(c.l, st.s), st.e) END AS ws, "
        "c.ce, lm.last FROM st LEFT JOIN c USING (rank, step) LEFT JOIN lm USING (step)), "
        "w AS (SELECT *, CASE WHEN ce IS NULL THEN ws ELSE greatest(least(ce, e), ws) END AS we FROM w0), "
        "p AS (SELECT rank, step, name, start_ns, end_ns FROM steady_phases), "
        f"ph AS (SELECT w.rank, w.step, {', '.join(cols)} FROM w JOIN p USING (rank, step) GROUP BY ALL), "
        "r AS (SELECT w.e - w.s AS step_ns, w.we - w.ws AS wait, greatest(0, least(w.last, w.we) - w.ws) AS sync, "
        "coalesce(data, 0) AS data, coalesce(data_w, 0) AS data_w, coalesce(cph, 0) AS cph, coalesce(cph_w, 0) AS cph_w, "
        "coalesce(comp, 0) AS comp, coalesce(comp_w, 0) AS comp_w FROM w LEFT JOIN ph USING (rank, step)) "
        "SELECT count(*), avg(step_ns), avg(comp - comp_w), avg(wait - sync + cph - cph_w), avg(data - data_w), avg(sync), "
        "avg(step_ns - comp - data - cph - (wait - comp_w - data_w - cph_w)) FROM r"
    ), params


def step_split(run: Run) -> dict:
    """Mean seconds per steady-state step (over ranks and steps) in each cause; they add up to ``step_s``.

    Per rank and step, the *wait* is the interval from the hand-off of the
    step's last gradient bucket (the latest ``comm`` span start: gradient
    computation is over) to the end of the step's last collective, clipped to
    the step. ``sync_wait`` is the part of the wait before the slowest rank
    handed over its own last bucket (the collective cannot finish earlier);
    ``comm_exposed`` is the rest of the wait plus any explicit ``comm`` phase.
    ``compute`` is the time in phases other than data wait and comm, outside
    the wait; ``data_wait`` the data-wait phase outside the wait; ``other``
    the step time no phase and no wait covers.
    """
    n, step_ns, *parts = run.sql(*_split_sql())[0]
    return {"rank_steps": int(n or 0), "step_s": (step_ns or 0) / 1e9} | {c: (v or 0) / 1e9 for c, v in zip(CAUSES, parts)}


def _workload(run: Run) -> tuple[str | None, str | None]:
    md = run.ranks[min(run.ranks)].get("metadata") or {}
    return run.meta.get("workload") or md.get("workload"), run.meta.get("preset") or md.get("preset")


def run_figures(run: Run, repeat: int | None = None) -> dict:
    """What the scaling report needs of one run: identity, batch setting, throughput, the step split, comm figures."""
    stats = step_stats(run)
    split = step_split(run)
    md = run.ranks[min(run.ranks)].get("metadata") or {}
    n = run.world_size
    workload, preset = _workload(run)
    batch = md.get("batch_size")
    rank_steps = sum(p["steps"] for p in stats.get("per_rank", {}).values())
    items = stats.get("items") or 0
    rate = stats.get("throughput_per_s")
    period = stats["wall_s"] / stats["steps"] if stats.get("steps") else None
    fig = {
        "path": str(run.path), "run_id": run.meta.get("run_id") or run.path.name, "workload": workload, "preset": preset,
        "unit": stats["unit"], "nproc": n, "hosts": sorted({str(m.get("host")) for m in run.ranks.values()}),
        "batch_size": batch, "global_batch_size": md.get("global_batch_size") or (batch * n if batch else None),
        "repeat": repeat, "throughput_per_s": rate, "items_per_rank_step": items / rank_steps if rank_steps else None,
        "period_s": period, "step_s": split["step_s"], "problems": list(run.problems),
    }
    causes = {c: split[c] for c in CAUSES}
    if period is not None:
        causes["other"] += period - split["step_s"]  # time between steps
    fig["split_s"] = causes
    busy_ns = sum(c["total"] for c in coverage_ns(run).values())
    busy = busy_ns / 1e9 / split["rank_steps"] if busy_ns and split["rank_steps"] else None
    fig["comm"] = {
        "busy_s": busy, "transfer_s": max(0.0, busy - split["sync_wait"]) if busy is not None else None,
        "grad_bytes": network.gradient_bytes_per_step(run) if n > 1 else None, "best_busbw": best_call_busbw(run),
    }
    fig["latency_s"] = hop_latency(run)
    if rate is None or not split["rank_steps"]:
        raise RunError(f"{run.path}: no steady-state steps")
    return fig


def hop_latency(run: Run) -> dict[str, float | None]:
    """One-way small-message latency per fabric, from the clock alignment at the start of the run:
    each rank's best ping-pong with rank 0 (half the round trip, the estimate's uncertainty). The
    slowest rank on rank 0's host gives ``local``, the slowest on another host ``network``."""
    host0 = run.ranks[min(run.ranks)].get("host")
    found: dict[str, list[float]] = {"local": [], "network": []}
    for rank, meta in run.ranks.items():
        est = ((meta.get("clock") or {}).get("start") or {})
        if rank != min(run.ranks) and est.get("uncertainty_ns"):
            found["local" if meta.get("host") == host0 else "network"].append(est["uncertainty_ns"] / 1e9)
    return {fabric: max(v) if v else None for fabric, v in found.items()}


# ---------------------------------------------------------------- collecting the runs

def _expand(paths: list[Path], notes: list[str]) -> tuple[list[tuple[Path, int | None]], set[str]]:
    """Run folders to read (with repeat index) and the scaling modes the sweeps name."""
    out, modes = [], set()
    for p in paths:
        index = p / "sweep.json"
        if not index.is_file():
            out.append((p, None))
            continue
        try:
            sweep = store.read_json(index)
        except (OSError, ValueError) as e:
            notes.append(f"{index}: unreadable ({e.__class__.__name__})")
            continue
        if sweep.get("scaling") in _BATCH_KEY:
            modes.add(sweep["scaling"])
        for entry in sweep.get("runs", []):
            if entry.get("status") != "complete":
                notes.append(f"{p.name}/{entry.get('path')}: run {entry.get('status', 'missing')}, left out")
                continue
            out.append((p / str(entry.get("path")), entry.get("repeat")))
    return out, modes


def collect(paths: list[str | Path]) -> tuple[list[dict], set[str], list[str]]:
    """The figures of every readable run under ``paths`` (sweep folders or run folders), the
    scaling modes the sweeps declare, and a note per run left out."""
    notes: list[str] = []
    targets, modes = _expand([Path(p) for p in paths], notes)
    runs = []
    for path, repeat in targets:
        try:
            runs.append(analyse(path, lambda run, r=repeat: run_figures(run, r)))
        except RunError as e:
            notes.append(f"{e}, left out")
    return runs, modes, notes


# ---------------------------------------------------------------- series

def _largest(groups: dict) -> tuple:
    return max(groups, key=lambda k: len(groups[k]))


def _group(runs: list[dict], key) -> dict:
    groups: dict = {}
    for r in runs:
        groups.setdefault(key(r), []).append(r)
    return groups


def detect_scaling(runs: list[dict]) -> str:
    """``weak`` when every run has the same per-rank batch, ``strong`` when the same global batch, else ``mixed``."""
    for mode in ("weak", "strong"):
        if len({r[_BATCH_KEY[mode]] for r in runs}) == 1:
            return mode
    return "mixed"


def form_series(runs: list[dict], modes: set[str], force: bool = False) -> tuple[str, dict, list[str]]:
    """(scaling mode, {batch value: runs}, notes). Runs of another workload or batch setting are left
    out (with a note) unless ``force``, which compares everything per sample in one ``mixed`` series."""
    notes: list[str] = []
    workloads = _group(runs, lambda r: (r["workload"], r["preset"]))
    if len(workloads) > 1:
        names = ", ".join(f"{w}/{p} ({len(g)} runs)" for (w, p), g in workloads.items())
        if force:
            notes.append(f"comparing different workloads or presets (--force): {names}")
        else:
            keep = _largest(workloads)
            notes.append(f"different workloads or presets: {names}; comparing {keep[0]}/{keep[1]} only (--force compares all)")
            runs = workloads[keep]
    mode = next(iter(modes)) if len(modes) == 1 else detect_scaling(runs)
    if mode == "mixed" and force:
        notes.append("runs with neither a common per-rank nor a common global batch (--force): compared per sample")
        return "mixed", {None: runs}, notes
    if mode == "mixed":
        options = {m: _group(runs, lambda r, m=m: r[_BATCH_KEY[m]]) for m in ("weak", "strong")}
        mode = max(options, key=lambda m: len(options[m][_largest(options[m])]))
        keep = _largest(options[mode])
        notes.append(f"batch settings are neither weak nor strong scaling; comparing the {len(options[mode][keep])} runs "
                     f"with {_BATCH_KEY[mode]} {keep} as {mode} scaling (--force compares all)")
        return mode, {keep: options[mode][keep]}, notes
    return mode, _group(runs, lambda r: r[_BATCH_KEY[mode]]), notes


# ---------------------------------------------------------------- configurations, attribution, noise

def spread(values: list[float]) -> dict:
    """``{"median", "min", "max", "n"}`` of the figures of repeated runs."""
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": median(values), "min": min(values), "max": max(values), "n": len(values)}


def overlaps(a: dict, b: dict) -> bool:
    """Noise: the [min, max] ranges of two figures overlap, so their difference is within the run-to-run spread."""
    return None not in (a["min"], b["min"]) and a["min"] <= b["max"] and b["min"] <= a["max"]


def _scaled(s: dict, k: float) -> dict:
    return {key: (v * k if v is not None and key != "n" else v) for key, v in s.items()}


def config_figures(runs: list[dict]) -> dict:
    """One configuration (same ranks and hosts) over its repeats: medians with min/max."""
    per_sample = {c: spread([r["split_s"][c] / r["items_per_rank_step"] for r in runs]) for c in CAUSES}
    return {
        "nproc": runs[0]["nproc"], "hosts": len(runs[0]["hosts"]), "host_names": runs[0]["hosts"],
        "batch_size": runs[0]["batch_size"], "global_batch_size": runs[0]["global_batch_size"],
        "runs": [r["path"] for r in runs], "repeats": len(runs),
        "throughput": spread([r["throughput_per_s"] for r in runs]),
        "sample_time_s": spread([r["nproc"] / r["throughput_per_s"] for r in runs]),
        "items_per_rank_step": spread([r["items_per_rank_step"] for r in runs]),
        "step_s": spread([r["step_s"] for r in runs]), "period_s": spread([r["period_s"] for r in runs]),
        "split_s_per_step": {c: spread([r["split_s"][c] for r in runs]) for c in CAUSES},
        "split_s_per_sample": per_sample,
        "comm": {k: spread([r["comm"][k] for r in runs])["median"] for k in ("busy_s", "transfer_s", "grad_bytes", "best_busbw")},
        "latency_s": {f: spread([r["latency_s"][f] for r in runs])["median"] for f in ("local", "network")},
    }


def attribute(cfg: dict, base: dict) -> dict:
    """The efficiency gap of ``cfg`` against ``base`` split into causes (fractions of ideal throughput).

    With ``tau`` = worker-seconds per sample (``n / throughput``), linear
    scaling keeps ``tau`` at the baseline's, so efficiency = ``tau_base / tau``
    and the gap ``1 - efficiency = sum over causes (tau_c - tau_base_c) / tau``:
    each cause's share is the per-sample time it gained, over ``tau``.
    ``residual`` = gap - sum of shares (0 for single runs; medians of
    repeats need not add up exactly).
    """
    ideal = _scaled(base["throughput"], cfg["nproc"] / base["nproc"])
    eff = [x / ideal["median"] for x in (cfg["throughput"]["median"], cfg["throughput"]["min"], cfg["throughput"]["max"])]
    tau = cfg["sample_time_s"]["median"]
    gap = 1 - eff[0]
    shares = {c: (cfg["split_s_per_sample"][c]["median"] - base["split_s_per_sample"][c]["median"]) / tau for c in CAUSES}
    return {
        "ideal_throughput": ideal["median"], "speedup": cfg["throughput"]["median"] / base["throughput"]["median"],
        "ideal_speedup": cfg["nproc"] / base["nproc"],
        "efficiency": {"median": eff[0], "min": eff[1], "max": eff[2], "n": cfg["throughput"]["n"]},
        "gap": gap, "causes": shares, "sum": sum(shares.values()), "residual": gap - sum(shares.values()),
        "noise": {"gap": cfg is not base and overlaps(cfg["throughput"], ideal),
                  **{c: cfg is not base and overlaps(cfg["split_s_per_sample"][c], base["split_s_per_sample"][c]) for c in CAUSES}},
    }


# ---------------------------------------------------------------- communication model

def link_rates(configs: list[dict], link_bytes_per_s: float | None, latency_s: float | None = None) -> dict:
    """Per fabric (``network``: >1 host; ``local``: ranks of one host): the rate and hop latency the ring bound uses.

    ``--link-bandwidth`` sets the network's rate (a wire rate: headers are
    added); otherwise the best single-call bus bandwidth measured on that
    fabric (a payload rate). ``--link-latency-us`` sets the latency of every
    fabric; otherwise the median over the configurations of the runs' measured
    hop latency on it (:func:`hop_latency`), else 0.
    """
    out = {}
    for fabric in ("network", "local"):
        best = [c["comm"]["best_busbw"] for c in configs if _fabric(c) == fabric and c["comm"]["best_busbw"]]
        if fabric == "network" and link_bytes_per_s:
            out[fabric] = {"bytes_per_s": link_bytes_per_s, "source": "given", "overhead": network.PROTOCOL_OVERHEAD}
        elif best:
            out[fabric] = {"bytes_per_s": max(best), "source": "measured (best call busbw)", "overhead": 0.0}
        else:
            continue
        measured = [c["latency_s"][fabric] for c in configs if c["latency_s"][fabric] is not None]
        if latency_s is not None:
            out[fabric] |= {"latency_s": latency_s, "latency_source": "given"}
        elif measured:
            out[fabric] |= {"latency_s": median(measured), "latency_source": "measured (clock-alignment ping-pong)"}
        else:
            out[fabric] |= {"latency_s": 0.0, "latency_source": "not measured"}
    return out


def _fabric(cfg: dict) -> str | None:
    return None if cfg["nproc"] < 2 else "network" if cfg["hosts"] > 1 else "local"


def _bound(grad: float, n: int, link: dict) -> float:
    return network.ring_allreduce_seconds(grad, n, link["bytes_per_s"], link["latency_s"], link["overhead"])


def comm_model(cfg: dict, rates: dict) -> dict:
    """Measured allreduce time per step against the ring lower bound for ``cfg``."""
    fabric, grad = _fabric(cfg), cfg["comm"]["grad_bytes"]
    link = rates.get(fabric) if fabric else None
    bound = _bound(grad, cfg["nproc"], link) if link and grad else None
    measured = cfg["comm"]["transfer_s"]
    return {"fabric": fabric, "grad_bytes": grad, "ring_bytes": network.ring_allreduce_bytes(grad, cfg["nproc"]) if grad else None,
            "link_bytes_per_s": link["bytes_per_s"] if link else None, "latency_s": link["latency_s"] if link else None,
            "bound_s": bound,
            "busy_s": cfg["comm"]["busy_s"], "transfer_s": measured,
            "ratio": measured / bound if bound and measured is not None else None}


# ---------------------------------------------------------------- projection

def project(configs: list[dict], fit: list[int], sizes: list[int], scaling: str, link_bytes_per_s: float | None,
            latency_s: float | None, base: dict) -> dict:
    """Expected throughput at ``sizes`` from the largest fitted configuration and the ring model.

    Kept from the fit: compute and data wait per step (scaled with the
    per-rank batch under strong scaling), other and synchronization wait per
    step, the communication hidden behind compute, and ``k`` = measured /
    bound on the fit's fabric (1 elsewhere, or when the fit has no multi-rank
    run). Communication at size m is ``k x bound(m)``, exposed beyond what the
    fit hid. Ranks per host as in the fit, each rank with cores of its own.
    Only the fitted runs are read: a measured size held out of the fit is
    shown beside its projection with the relative error.
    """
    fitted = [c for c in configs if c["nproc"] in fit]
    if not fitted:
        return {"fit": fit, "assumptions": [f"no projection: no measured configuration of sizes {fit}"], "sizes": []}
    b = max(fitted, key=lambda c: (c["nproc"], c["hosts"]))
    per_host = math.ceil(b["nproc"] / b["hosts"])
    rates = link_rates(fitted, link_bytes_per_s, latency_s)
    split = {c: b["split_s_per_step"][c]["median"] for c in CAUSES}
    fit_model = comm_model(b, rates)
    hidden = max(0.0, (fit_model["transfer_s"] or 0.0) - split["comm_exposed"]) if b["nproc"] > 1 else 0.0
    grad = next((c["comm"]["grad_bytes"] for c in sorted(fitted, key=lambda c: -c["nproc"]) if c["comm"]["grad_bytes"]), None)
    assumptions = [
        f"fitted on n={b['nproc']} ({b['hosts']} host(s)); fit sizes {sorted({c['nproc'] for c in fitted})}",
        f"{per_host} rank(s) per host as in the fit; every rank has cores of its own (no CPU contention modelled)",
        ("compute and data wait per step scale with the per-rank batch" if scaling == "strong"
         else "compute and data wait per step stay as measured"),
        "other and synchronization wait per step stay as measured (none on 1 rank)",
        f"ring allreduce of {grad or 0:.0f} B per step; "
        + ", ".join(f"{f} link {v['bytes_per_s'] * 8 / 1e6:.1f} Mbit/s ({v['source']}), {v['latency_s'] * 1e6:.0f} us per hop "
                    f"({v['latency_source']})" for f, v in rates.items()),
        f"communication = {fit_model['ratio'] or 1.0:.2f} x the bound on the {fit_model['fabric'] or 'fit'} fabric "
        f"(the fit's measured ratio; 1 where none was measured); {hidden * 1e3:.1f} ms per step stays hidden behind compute",
    ]
    held_out = {c["nproc"]: c for c in configs if c["nproc"] not in fit}
    out, skipped = [], []
    for m in sizes:
        hosts = math.ceil(m / per_host)
        fabric = None if m < 2 else "network" if hosts > 1 else "local"
        link = rates.get(fabric)
        if m > 1 and not (link and grad):
            skipped.append(m)
            continue
        k = (fit_model["ratio"] or 1.0) if fabric == fit_model["fabric"] else 1.0
        bound = _bound(grad, m, link) if m > 1 else 0.0
        scale = b["nproc"] / m if scaling == "strong" else 1.0
        parts = dict(split)
        for c in ("compute", "data_wait"):
            parts[c] *= scale
        parts["comm_exposed"] = max(0.0, k * bound - hidden)
        parts["sync_wait"] = split["sync_wait"] if m > 1 else 0.0
        step = sum(parts.values())
        rate = m * b["items_per_rank_step"]["median"] * scale / step
        row = {"nproc": m, "hosts": hosts, "fabric": fabric, "bound_s": bound, "split_s_per_step": parts, "step_s": step,
               "throughput": rate, "efficiency": rate / (base["throughput"]["median"] * m / base["nproc"])}
        if m in held_out:
            row["measured"] = held_out[m]["throughput"]
            row["error"] = rate / row["measured"]["median"] - 1
        out.append(row)
    if skipped:
        assumptions.append(f"not projected: n={skipped} (no link rate for their fabric in the fit; pass --link-bandwidth)")
    return {"fit": sorted({c["nproc"] for c in fitted}), "from": {"nproc": b["nproc"], "hosts": b["hosts"]},
            "assumptions": assumptions, "sizes": out}


# ---------------------------------------------------------------- the report

def _series_report(runs: list[dict], key, mode: str, rates_in: float | None, latency_s: float | None,
                   fit: list[int] | None, sizes: list[int] | None, notes: list[str]) -> dict | None:
    configs = [config_figures(g) for g in _group(runs, lambda r: (r["nproc"], len(r["hosts"]))).values()]
    configs.sort(key=lambda c: (c["nproc"], c["hosts"]))
    label = f"{_BATCH_KEY.get(mode, 'batch')} {key}" if key is not None else "all runs"
    if len({c["nproc"] for c in configs}) < 2:
        notes.append(f"{label}: only one size (n={configs[0]['nproc']}), nothing to compare")
        return None
    base = configs[0]
    if base["nproc"] > 1:
        notes.append(f"{label}: no 1-rank run; efficiency is relative to n={base['nproc']}")
    rates = link_rates(configs, rates_in, latency_s)
    prev = None
    for c in configs:
        c["attribution"] = attribute(c, base)
        c["noise_vs_previous"] = prev is not None and overlaps(c["throughput"], prev["throughput"])
        c["comm_model"] = comm_model(c, rates)
        prev = c
    largest = max(c["nproc"] for c in configs)
    fit = fit or sorted({c["nproc"] for c in configs})
    targets = sorted({2 * largest, 4 * largest} | {c["nproc"] for c in configs if c["nproc"] not in fit}) if not sizes else sizes
    return {"key": {_BATCH_KEY.get(mode, "batch"): key}, "label": label, "baseline": {"nproc": base["nproc"], "hosts": base["hosts"]},
            "link": rates, "configs": configs, "projection": project(configs, fit, targets, mode, rates_in, latency_s, base)}


def scaling(paths: list[str | Path], force: bool = False, link_bytes_per_s: float | None = None, latency_s: float | None = None,
            fit: list[int] | None = None, sizes: list[int] | None = None) -> dict:
    """The scaling report of ``paths`` (sweep folders and/or run folders) as a JSON-ready dict.

    Raises :class:`ScalingError` when nothing can be compared; every other
    defect (a missing or failed run, another workload, a lone size) is a note
    in ``problems`` and the rest is reported.
    """
    runs, modes, notes = collect(paths)
    if not runs:
        raise ScalingError("no readable runs: " + ("; ".join(notes) or "nothing given"))
    mode, groups, more = form_series(runs, modes, force)
    notes += more
    series = [s for key, g in sorted(groups.items(), key=lambda kv: str(kv[0]))
              if (s := _series_report(g, key, mode, link_bytes_per_s, latency_s, fit, sizes, notes))]
    if not series:
        raise ScalingError("nothing to compare: " + "; ".join(notes))
    first = series[0]["configs"][0]
    one = next(r for r in runs if r["path"] in first["runs"])
    return {"schema_version": 1, "workload": one["workload"], "preset": one["preset"], "unit": one["unit"], "scaling": mode,
            "causes": list(CAUSES), "latency_s": latency_s, "problems": notes, "series": series}


def scaling_command(paths: list[str], out: str | None = None, json_out: bool = False, plots: str = "png", **kw) -> int:
    """``tbdprof scaling``: write scaling.json, scaling.html and plot files; print the tables (or the JSON)."""
    from .scaling_html import print_scaling, write_report

    result = scaling(paths, **kw)  # a ScalingError is bad input: the CLI prints it, exit code 2
    for note in result["problems"]:
        print(f"tbdprof scaling: {note}", file=sys.stderr)
    folder = Path(out) if out else _default_out([Path(p) for p in paths])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        store.write_json_atomic(folder / SCALING_FILE, result)
        written = [folder / SCALING_FILE, *write_report(result, folder, plots)]
    except OSError as e:
        print(f"tbdprof scaling: cannot write into {folder} ({e.strerror}); printing only", file=sys.stderr)
        written = []
    if json_out:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_scaling(result)
        if written:
            print("wrote " + ", ".join(p.name for p in written) + f" in {folder}")
    return 0


def _default_out(paths: list[Path]) -> Path:
    """A lone sweep folder itself; else the folder holding the given runs."""
    if len(paths) == 1 and (paths[0] / "sweep.json").is_file():
        return paths[0]
    parents = {p.absolute().parent for p in paths}
    return parents.pop() if len(parents) == 1 else Path.cwd()

"""Two runs side by side: each figure with its relative difference, and how their environments differ.

Works on the dicts :func:`.report.summarize` returns, so it compares what the
reports show. Relative difference is ``(b - a) / a``; None when ``a`` is 0 or
either side is missing. When both runs have deep windows, the operators and
layers whose self time per window step changed most (:func:`compare_operators`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tbdprof import schema

from .environment import INCIDENTAL
from .fmt import fmt_bytes, fmt_num, fmt_pct, fmt_rate, fmt_s
from .load import Run, analyse

_FORMAT = {"s": fmt_s, "bytes": fmt_bytes, "bytes/s": fmt_rate, "fraction": fmt_pct, "percent": lambda x: fmt_num(x) + "%",
           "watts": lambda x: fmt_num(x) + " W"}
# compared GPU figure -> key of analysis/gpu.py's per-rank figures
GPU_FIGURES = {"GPU SM occupancy (avg)": "sm_occupancy_pct", "GPU tensor-core utilization (avg)": "tensor_util_pct",
               "GPU FP32 utilization (avg)": "fp32_util_pct", "GPU DRAM bandwidth utilization (avg)": "dram_bw_util_pct"}


def _get(d, *path):
    for k in path:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def figures(summary: dict) -> dict[str, tuple[float | None, str]]:
    """The comparable figures of one summary: name -> (value, unit)."""
    tp = summary.get("throughput") or {}
    out: dict[str, tuple[float | None, str]] = {f"throughput ({tp.get('unit', 'samples')}/s)": (tp.get("per_s"), "per_s")}
    for q in ("median", "p90", "p99"):
        out[f"step time {q}"] = (_get(summary, "step_time_s", q), "s")
    out["step time rank spread"] = (_get(summary, "step_time_spread", "rank_spread"), "fraction")
    for phase, v in summary.get("phase_fraction", {}).items():
        out[f"phase {phase}"] = (v, "fraction")
    for k in ("overlapped", "exposed"):
        out[f"comm {k}"] = (_get(summary, "comm_fraction", k), "fraction")
    for c in (*schema.MEMORY_CATEGORIES, "peak"):
        out[f"memory {c}"] = (_get(summary, "memory_bytes", c), "bytes")
    util = summary.get("utilization") or {}
    out["CPU per rank (avg)"] = (_mean(_get(u, "cpu.process_pct", "avg") for u in util.get("per_rank", {}).values()), "percent")
    out["host CPU (avg)"] = (_mean(_get(u, "cpu.system_pct", "avg") for u in util.get("per_host", {}).values()), "percent")
    out["GPU utilization (avg)"] = (_mean(_get(u, "util_pct", "avg") for u in util.get("gpus", {}).values()), "percent")
    gpus = list((_get(summary, "gpu", "per_rank") or {}).values())
    for name, key in GPU_FIGURES.items():  # GPM figures where recorded ("unavailable" elsewhere is left out)
        out[name] = (_mean(g[key] for g in gpus if isinstance(g.get(key), (int, float))), "percent")
    for name, path, unit in (("GPU memory max (avg per rank)", ("memory", "device_used_bytes_max"), "bytes"),
                             ("allocator reserved max (avg per rank)", ("memory", "reserved_bytes_max"), "bytes"),
                             ("GPU power (avg per rank)", ("power", "avg_w"), "watts")):
        out[name] = (_mean(_get(g, *path) for g in gpus), unit)
    net = summary.get("network") or {}
    per_step = [v.get("sent_bytes_per_step") for nics in net.get("interfaces", {}).values() for v in nics.values()]
    out["network sent / step (all hosts)"] = (sum(v for v in per_step if v) if any(per_step) else None, "bytes")
    for name, c in net.get("collectives", {}).items():
        out[f"{name} algbw"] = (c.get("algbw_bytes_per_s"), "bytes/s")
        out[f"{name} busbw"] = (c.get("busbw_bytes_per_s"), "bytes/s")
    io = (summary.get("io") or {}).get("per_rank", {})
    out["data wait share (avg)"] = (_mean(_get(v, "data_wait", "fraction") for v in io.values()), "fraction")
    out["read/s per rank (avg)"] = (_mean(_get(v, "read_chars", "per_s") for v in io.values()), "bytes/s")
    return out


def _setting_values(summary: dict) -> dict[str, str]:
    env = summary.get("environment") or {}
    out = {}
    for row in env.get("rows", []):
        if not INCIDENTAL.search(row["key"]):
            out[row["key"]] = " | ".join(dict.fromkeys(row["values"]))
    run = summary.get("run") or {}
    out |= {"workload": str(run.get("workload")), "preset": str(run.get("preset")), "world size": str(summary.get("world_size")),
            "hosts": str(len(summary.get("hosts", []))), "warm-up steps": str(summary.get("warmup_steps"))}
    return out


def compare_summaries(a: dict, b: dict) -> dict:
    """``figures``: rows {figure, unit, a, b, diff, relative}; ``environment``: settings whose values differ."""
    fa, fb = figures(a), figures(b)
    rows = []
    for name in dict.fromkeys([*fa, *fb]):
        (va, unit_a), (vb, unit_b) = fa.get(name, (None, None)), fb.get(name, (None, None))
        unit = unit_a or unit_b
        if va is None and vb is None:
            continue
        both = va is not None and vb is not None
        rows.append({"figure": name, "unit": unit, "a": va, "b": vb, "diff": vb - va if both else None,
                     "relative": (vb - va) / va if both and va else None})
    ea, eb = _setting_values(a), _setting_values(b)
    env = [{"setting": k, "a": ea.get(k, "-"), "b": eb.get(k, "-")} for k in dict.fromkeys([*ea, *eb]) if ea.get(k, "-") != eb.get(k, "-")]
    notes = [f"A: {p}" for p in a.get("problems", [])] + [f"B: {p}" for p in b.get("problems", [])]
    return {"a": _get(a, "run", "run_id"), "b": _get(b, "run", "run_id"), "figures": rows, "environment": env, "problems": notes}


OPS_TOP = 10


def compare_operators(a: dict | None, b: dict | None) -> dict | None:
    """Operators and layers (:func:`.ops.self_ms_per_step` of each run) whose self time per window step changed
    most, with both values; a note instead when one run has no deep window; None when neither has."""
    if a is None and b is None:
        return None
    if a is None or b is None:
        return {"note": f"run {'A' if a is None else 'B'} has no deep window: operators not compared "
                        "(record one with --deep-every N, or tbdprof trace on a live run)"}
    out = {"window_steps": {"a": a["window_steps"], "b": b["window_steps"]}}
    for key in ("operators", "layers"):
        rows = []
        for name in dict.fromkeys([*a[key], *b[key]]):
            va, vb = a[key].get(name, 0.0), b[key].get(name, 0.0)
            rows.append({"name": name, "a_ms": va, "b_ms": vb, "diff_ms": vb - va, "relative": (vb - va) / va if va else None})
        out[key] = sorted(rows, key=lambda r: -abs(r["diff_ms"]))[:OPS_TOP]
    return out


def compare_runs(run_a: str | Path, run_b: str | Path, link_bytes_per_s: float | None = None) -> dict:
    """Analyse both runs and compare them (see :func:`compare_summaries` and :func:`compare_operators`)."""
    from .ops import self_ms_per_step
    from .report import summarize

    def one(run: Run) -> tuple[dict, dict | None]:
        return summarize(run, link_bytes_per_s), self_ms_per_step(run) if run.has(schema.OPS) else None

    (sa, oa), (sb, ob) = analyse(run_a, one), analyse(run_b, one)
    return compare_summaries(sa, sb) | {"operators": compare_operators(oa, ob)}


def compare_command(run_a, run_b, json_out: bool = False, link_bytes_per_s: float | None = None, file=None) -> dict:
    """``tbdprof compare``: print the comparison as tables, or as JSON."""
    from .terminal import console, table

    result = compare_runs(run_a, run_b, link_bytes_per_s)
    out = file or sys.stdout
    if json_out:
        json.dump(result, out, indent=2, default=str)
        out.write("\n")
        return result
    con = console(out)
    for p in result["problems"]:
        con.print("note: " + p, markup=False, style="yellow")
    show = lambda v, unit: "-" if v is None else _FORMAT.get(unit, fmt_num)(v)  # noqa: E731
    con.print(table(f"A = {result['a']}   B = {result['b']}", ["figure", "A", "B", "B vs A"],
                     [[r["figure"], show(r["a"], r["unit"]), show(r["b"], r["unit"]),
                       "-" if r["relative"] is None else f"{r['relative'] * 100:+.1f}%"] for r in result["figures"]]))
    ops = result.get("operators")
    if ops and "note" in ops:
        con.print("operators: " + ops["note"], markup=False)
    elif ops:
        steps = ops["window_steps"]
        for key, what in (("operators", "operator"), ("layers", "layer")):
            con.print(table(f"{key} whose self time per window step changed most (ms; deep windows, "
                            f"{steps['a']} and {steps['b']} rank-steps)", [what, "A", "B", "B - A", "B vs A"],
                            [[r["name"][:60], f"{r['a_ms']:.3f}", f"{r['b_ms']:.3f}", f"{r['diff_ms']:+.3f}",
                              "new" if r["relative"] is None else f"{r['relative'] * 100:+.0f}%"] for r in ops[key]]))
    if result["environment"]:
        con.print(table("environment differences", ["setting", "A", "B"], [[e["setting"], e["a"], e["b"]] for e in result["environment"]]))
    else:
        con.print("environment: no differences recorded")
    return result

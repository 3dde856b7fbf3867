"""``tbdprof ops``: operators and layers of a run's deep windows, per rank, and what a slow rank does differently.

Reads table ``ops`` (tbdprof/deep.py). Every figure is per window step (the
rank's window steps, from ``spans_all``), so ranks with different numbers of
window steps compare. An operator's phase is the phase span of its step it
started in; a layer's time is the self time of every operator that ran under
it (forward, and backward through the autograd node its forward made).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from tbdprof import schema
from tbdprof.errors import UserError

from . import load, windows

TOP = 10
WRAPPERS = ("DistributedDataParallel", "FullyShardedDataParallel", "DataParallel")  # not layers: their time is waiting


class OpsError(UserError):
    """The run has no deep window, or the rank or phase asked for is not in it."""


def ops_sql(phase: str | None, rank: int | None) -> tuple[str, list]:
    """SQL (and its parameters) of the ops rows with their phase (the phase span of their step they started in)."""
    where, params = [], [schema.KIND_PHASE]
    if rank is not None:
        where.append("o.rank = ?")
        params.append(rank)
    sql = (
        "WITH ph AS (SELECT rank, step, name AS phase, start_ns AS ps, end_ns AS pe FROM spans_all WHERE kind = ?), "
        "o AS (SELECT o.rank, o.step, o.name, o.module, o.self_ns, o.start_ns, o.end_ns, o.thread, ph.phase FROM ops o "
        "LEFT JOIN ph ON o.rank = ph.rank AND o.step = ph.step AND o.start_ns >= ph.ps AND o.start_ns < ph.pe "
        + ("WHERE " + " AND ".join(where) + " " if where else "")
        + "QUALIFY row_number() OVER (PARTITION BY o.rank, o.step, o.thread, o.start_ns, o.name ORDER BY ph.ps DESC) = 1) "
    )
    if phase is not None:
        sql += "SELECT * FROM o WHERE phase = ?"
        params.append(phase)
    else:
        sql += "SELECT * FROM o"
    return sql, params


def ops_summary(run: load.Run, rank: int | None = None, phase: str | None = None, top: int = TOP) -> dict:
    """``tbdprof ops``: per rank, top operators and layers per window step, the layer tree, and the slow rank's difference."""
    if not run.has(schema.OPS):
        raise OpsError(f"{run.path}: no deep window recorded (run with --deep-every N, or Profiler(deep_every=N))")
    ranks = [r for (r,) in run.sql("SELECT DISTINCT rank FROM ops ORDER BY 1")]
    if rank is not None and rank not in ranks:
        raise OpsError(f"rank {rank} has no deep window; ranks with one: {', '.join(map(str, ranks))}")
    phases = [p for (p,) in run.sql("SELECT DISTINCT name FROM spans_all WHERE kind = ? ORDER BY 1", [schema.KIND_PHASE])]
    if phase is not None and phase not in phases:
        raise OpsError(f"phase {phase!r} not recorded; phases: {', '.join(phases) or 'none'}")
    sql, params = ops_sql(phase, None)
    run.con.execute(f"CREATE OR REPLACE TEMP TABLE op_rows AS {sql}", params)
    steps = {r: (n, t) for r, n, t in run.sql(
        "SELECT s.rank, count(*), sum(s.end_ns - s.start_ns) FROM spans_all s "
        "JOIN (SELECT DISTINCT rank, step FROM ops) w USING (rank, step) "
        "WHERE s.kind = ? GROUP BY 1", [schema.KIND_STEP])}
    always = {r: med for r, med in run.sql("SELECT rank, median(end_ns - start_ns) FROM steady_steps GROUP BY 1")}
    ph_ns = {(r, p): t for r, p, t in run.sql(
        "SELECT s.rank, s.name, sum(s.end_ns - s.start_ns) FROM spans_all s "
        "JOIN (SELECT DISTINCT rank, step FROM ops) w USING (rank, step) "
        "WHERE s.kind = ? GROUP BY 1, 2", [schema.KIND_PHASE])}
    per_rank: dict[int, dict] = {}
    layer_ms: dict[int, dict[str, float]] = {}
    op_ms: dict[int, dict[str, float]] = {}
    for r in ranks:
        n_steps, step_ns = steps.get(r, (0, 0))
        n = max(1, n_steps or run.sql("SELECT count(DISTINCT step) FROM ops WHERE rank = ?", [r])[0][0])
        denom_ns = (ph_ns.get((r, phase), 0) if phase else step_ns) or None
        ops = run.sql(
            "SELECT name, sum(self_ns), count(*) FROM op_rows WHERE rank = ? AND NOT starts_with(name, ?) "
            "GROUP BY 1 ORDER BY 2 DESC", [r, schema.OP_MODULE_PREFIX])
        layers = run.sql(
            "SELECT module, sum(self_ns) FROM op_rows WHERE rank = ? AND module IS NOT NULL GROUP BY 1 ORDER BY 2 DESC", [r])
        # the layer's leading operator: where its time goes
        lead = {m: name for m, name in run.sql(
            "SELECT module, arg_max(name, t) FROM (SELECT module, name, sum(self_ns) AS t FROM op_rows WHERE rank = ? "
            "AND module IS NOT NULL AND NOT starts_with(name, ?) GROUP BY 1, 2) GROUP BY 1", [r, schema.OP_MODULE_PREFIX])}
        op_ms[r] = {name: t / 1e6 / n for name, t, _ in ops}
        layer_ms[r] = {m: t / 1e6 / n for m, t in layers}
        per_rank[r] = {
            "window_steps": n_steps,
            "windows": [[w["first"], w["last"]] for w in windows.windows(run.ranks.get(r, {}))],
            "window_step_ms": step_ns / n / 1e6 if n_steps else None,
            "always_on_step_ms": always[r] / 1e6 if always.get(r) is not None else None,
            "phase_ms": (ph_ns.get((r, phase), 0) / n / 1e6) if phase else None,
            "operators": [{"name": name, "self_ms": t / 1e6 / n, "calls": c / n,
                           "share": _share(t / n, denom_ns / n if denom_ns else None)} for name, t, c in ops[:top]],
            "layers": [{"module": m, "self_ms": t / 1e6 / n, "share": _share(t / n, denom_ns / n if denom_ns else None),
                        "top_op": lead.get(m)} for m, t in layers[:top]],
            "tree": _tree(layer_ms[r]),
        }
    return {"run": str(run.path), "phase": phase, "ranks": ranks, "per_rank": per_rank,
            "difference": _difference(layer_ms, op_ms, rank), "kernels": _kernels(run, rank, top)}


KERNELS_NOT_RECORDED = "not recorded (no CUDA activity in the windows: kernels are recorded on a GPU only)"


def _kernels(run: load.Run, rank: int | None, top: int) -> dict:
    """The GPU time of the windows' kernels (table ``kernels``) per window step, by kernel, with the operator
    and layer that launched it; or why there is none."""
    if not run.has(schema.KERNELS):
        return {"recorded": False, "why": KERNELS_NOT_RECORDED}
    where, params = ("WHERE rank = ?", [rank]) if rank is not None else ("", [])
    n = max(1, run.sql(f"SELECT count(*) FROM (SELECT DISTINCT rank, step FROM kernels {where})", params)[0][0])
    rows = run.sql(f"SELECT name, kind, any_value(op), any_value(module), sum(end_ns - start_ns), count(*), sum(bytes) "
                   f"FROM kernels {where} GROUP BY 1, 2 ORDER BY 5 DESC", params)
    return {"recorded": True, "window_steps": n,
            "top": [{"name": k, "kind": kind, "op": op, "module": m, "gpu_ms": t / 1e6 / n, "calls": c / n,
                     "bytes": b / n if b is not None else None} for k, kind, op, m, t, c, b in rows[:top]]}


def _window_steps(run: load.Run) -> tuple[int, float | None]:
    """(rank-steps in windows, mean window step in ns) over all ranks."""
    n, total = run.sql(
        "SELECT count(*), sum(s.end_ns - s.start_ns) FROM spans_all s JOIN (SELECT DISTINCT rank, step FROM ops) w "
        "USING (rank, step) WHERE s.kind = ?", [schema.KIND_STEP])[0]
    if not n:  # no step spans for the window steps (a recording cut short): count the steps the ops name
        n = run.sql("SELECT count(*) FROM (SELECT DISTINCT rank, step FROM ops)")[0][0]
        return n, None
    return n, total / n


def self_ms_per_step(run: load.Run) -> dict:
    """Self time per window step of every operator and layer, all ranks together (for ``compare``)."""
    n, _ = _window_steps(run)
    n = max(1, n)
    ops = run.sql("SELECT name, sum(self_ns) FROM ops WHERE NOT starts_with(name, ?) GROUP BY 1", [schema.OP_MODULE_PREFIX])
    layers = run.sql("SELECT module, sum(self_ns) FROM ops WHERE module IS NOT NULL GROUP BY 1")
    return {"window_steps": n, "operators": {k: t / 1e6 / n for k, t in ops},
            "layers": {k: t / 1e6 / n for k, t in layers if k.split(".")[0] not in WRAPPERS}}


REPORT_TOP = 5


def report_section(run: load.Run) -> dict | None:
    """``summary.json`` ``operators``: per phase, the top operators and layers per window step (all ranks) with
    their share of the window step; what the windows cost; their bytes; whether GPU kernels were recorded.
    None when the run has no deep window."""
    if not run.has(schema.OPS):
        return None
    n, step_ns = _window_steps(run)
    sql, params = ops_sql(None, None)
    rows = run.sql(f"WITH x AS ({sql}) SELECT coalesce(phase, ''), name, module, sum(self_ns) FROM x GROUP BY 1, 2, 3", params)
    per_phase: dict[str, dict[str, dict[str, float]]] = {}
    for phase, name, module, ns in rows:
        d = per_phase.setdefault(phase or "(outside phases)", {"operators": {}, "layers": {}})
        if not name.startswith(schema.OP_MODULE_PREFIX):
            d["operators"][name] = d["operators"].get(name, 0) + ns
        if module is not None and module.split(".")[0] not in WRAPPERS:
            d["layers"][module] = d["layers"].get(module, 0) + ns
    phase_ns = dict(run.sql(
        "SELECT s.name, sum(s.end_ns - s.start_ns) FROM spans_all s JOIN (SELECT DISTINCT rank, step FROM ops) w "
        "USING (rank, step) WHERE s.kind = ? GROUP BY 1", [schema.KIND_PHASE]))
    n = max(1, n)

    def top(d: dict[str, float], key: str) -> list[dict]:
        best = sorted(d.items(), key=lambda kv: -kv[1])[:REPORT_TOP]
        return [{key: k, "self_ms": ns / 1e6 / n, "share": ns / n / step_ns if step_ns else None} for k, ns in best]

    phases = {ph: {"phase_ms": phase_ns[ph] / 1e6 / n if ph in phase_ns else None,
                   "operators": top(d["operators"], "name"), "layers": top(d["layers"], "module")}
              for ph, d in sorted(per_phase.items(), key=lambda kv: -phase_ns.get(kv[0], 0))}
    return {"window_steps": n, "window_step_ms": step_ns / 1e6 if step_ns else None, "phases": phases,
            "cost": windows.window_cost(run), "bytes": windows.window_bytes(run, n),
            "kernels": "recorded" if run.has(schema.KERNELS) else KERNELS_NOT_RECORDED}


def print_operators(con, section: dict | None) -> None:
    """The report's operators section in the terminal: cost and bytes of the windows, top operators and layers."""
    if not section:
        return
    from .fmt import fmt_bytes, fmt_pct
    from .terminal import table

    cost, size = section["cost"], section["bytes"]
    line = f"deep windows: {cost['windows']} windows, {section['window_steps']} rank-steps"
    if cost.get("window_step_ms") is not None and cost.get("neighbour_step_ms") is not None:
        line += (f"; window step {cost['window_step_ms']:.1f} ms vs {cost['neighbour_step_ms']:.1f} ms in the steps around "
                 f"({fmt_pct(cost['extra_fraction'])} more)")
    line += f"; {fmt_bytes(size['total'])} ({fmt_bytes(size['per_window_step'])} per window step); kernels {section['kernels']}"
    con.print(line, markup=False)
    rows = []
    for ph, d in section["phases"].items():
        for i in range(max(len(d["operators"]), len(d["layers"]))):
            o = d["operators"][i] if i < len(d["operators"]) else None
            m = d["layers"][i] if i < len(d["layers"]) else None
            rows.append([ph if i == 0 else "", o["name"][:40] if o else "", f"{o['self_ms']:.2f}" if o else "",
                         fmt_pct(o["share"]) if o else "", m["module"][:32] if m else "", f"{m['self_ms']:.2f}" if m else "",
                         fmt_pct(m["share"]) if m else ""])
    con.print(table("operators and layers in deep windows (self ms per window step, all ranks; share of the window step)",
                    ["phase", "operator", "ms", "share", "layer", "ms", "share"], rows))


def _share(ns, denom_ns):
    return None if not denom_ns else ns / denom_ns


def _tree(layer_ms: dict[str, float]) -> list[dict]:
    """Layer tree: every module path with its inclusive time (its own ops and its children's), depth-first."""
    incl: dict[str, float] = {}
    for path, ms in layer_ms.items():
        parts = path.replace("/", ".").split(".")
        for i in range(1, len(parts) + 1):
            node = ".".join(parts[:i])
            incl[node] = incl.get(node, 0.0) + ms
    return [{"path": p, "depth": p.count("."), "ms": incl[p]} for p in sorted(incl)]


def _difference(layer_ms: dict[int, dict[str, float]], op_ms: dict[int, dict[str, float]], rank: int | None) -> dict | None:
    """What the slowest rank (or ``rank``) spends more on than the median of the others, by layer and operator."""
    ranks = sorted(layer_ms)
    if len(ranks) < 2:
        return None

    def compute(r):
        return sum(ms for m, ms in layer_ms[r].items() if m.split(".")[0] not in WRAPPERS)

    slow = rank if rank is not None else max(ranks, key=compute)
    others = [r for r in ranks if r != slow]

    def rows(table: dict[int, dict[str, float]], key: str) -> list[dict]:
        names = set().union(*(table[r] for r in ranks))
        out = []
        for name in names:
            if key == "module" and name.split(".")[0] in WRAPPERS:
                continue
            mine = table[slow].get(name, 0.0)
            theirs = statistics.median(table[r].get(name, 0.0) for r in others)
            out.append({key: name, "rank_ms": mine, "others_ms": theirs, "delta_ms": mine - theirs,
                        "ratio": mine / theirs if theirs > 0 else None, "only_here": theirs == 0 and mine > 0})
        return sorted([o for o in out if o["delta_ms"] > 0], key=lambda o: -o["delta_ms"])[:TOP]

    return {"rank": slow, "others": others, "compute_ms": compute(slow),
            "others_compute_ms": statistics.median(compute(r) for r in others),
            "layers": rows(layer_ms, "module"), "operators": rows(op_ms, "name")}


def _ratio(x) -> str:
    return "new" if x is None else f"{x:.1f}x"


def render(s: dict, file=None) -> None:
    out = file or sys.stdout
    w = lambda line="": print(line, file=out)  # noqa: E731
    w(f"operators and layers in deep windows of {s['run']}" + (f", phase {s['phase']}" if s["phase"] else ""))
    for r, d in s["per_rank"].items():
        wins = ", ".join(f"{a}-{b}" for a, b in d["windows"]) or "?"
        step = f"{d['window_step_ms']:.1f} ms" if d["window_step_ms"] is not None else "-"
        base = f", always-on median {d['always_on_step_ms']:.1f} ms" if d["always_on_step_ms"] is not None else ""
        w()
        w(f"rank {r}: window steps {wins} ({d['window_steps']} steps), step {step}{base}")
        w(f"  {'operator':<44} {'self ms/step':>12} {'share':>7} {'calls':>6}")
        for o in d["operators"]:
            w(f"  {o['name'][:44]:<44} {o['self_ms']:12.2f} {_pct(o['share']):>7} {o['calls']:6.0f}")
        w(f"  {'layer (module path)':<44} {'self ms/step':>12} {'share':>7}  top operator")
        for o in d["layers"]:
            w(f"  {o['module'][:44]:<44} {o['self_ms']:12.2f} {_pct(o['share']):>7}  {o['top_op'] or '-'}")
        w("  layer tree (inclusive ms/step)")
        for n in d["tree"][:40]:
            w(f"    {'  ' * n['depth']}{n['path'].rsplit('.', 1)[-1]:<{max(1, 40 - 2 * n['depth'])}} {n['ms']:8.2f}")
    k = s.get("kernels") or {}
    w()
    if not k.get("recorded"):
        w(f"GPU kernels: {k.get('why', KERNELS_NOT_RECORDED)}")
    else:
        w(f"GPU kernels, per window step ({k['window_steps']} steps)")
        w(f"  {'kernel':<58} {'GPU ms/step':>11} {'calls':>6}  operator (layer)")
        for o in k["top"]:
            w(f"  {o['name'][:58]:<58} {o['gpu_ms']:11.3f} {o['calls']:6.0f}  {o['op'] or '-'} ({o['module'] or '-'})")
    diff = s["difference"]
    if diff:
        w()
        w(f"rank {diff['rank']} vs the median of ranks {', '.join(map(str, diff['others']))}: "
          f"layers {diff['compute_ms']:.1f} ms/step vs {diff['others_compute_ms']:.1f}")
        for o in diff["layers"][:5]:
            w(f"  layer {o['module']}: {o['rank_ms']:.2f} ms/step vs {o['others_ms']:.2f} ({_ratio(o['ratio'])}, +{o['delta_ms']:.2f} ms)")
        for o in diff["operators"][:5]:
            w(f"  operator {o['name']}: {o['rank_ms']:.2f} ms/step vs {o['others_ms']:.2f} ({_ratio(o['ratio'])}, +{o['delta_ms']:.2f} ms)")


def _pct(x) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def ops_command(run_dir: str | Path, rank: int | None = None, phase: str | None = None, json_out: bool = False,
                file=None) -> int:
    s = load.analyse(run_dir, lambda run: ops_summary(run, rank, phase))
    try:
        if json_out:
            print(json.dumps(s, indent=2, default=str), file=file or sys.stdout)
        else:
            render(s, file)
    except BrokenPipeError:  # `tbdprof ops RUN | head`: the reader has all it wants
        sys.stdout = None
    return 0

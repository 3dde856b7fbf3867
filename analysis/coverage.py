"""Coverage: what the recording saw, and what it could not, stated before any figure.

Two sources, per rank and item (:data:`tbdprof.schema.COVERAGE_ITEMS`: steps,
phases, comm, memory):

- **declared**: the ``coverage`` entry of each rank's ``rank.json``
  (``{item: {"state", "how"}}``), written by the recorder, which knows what it
  hooked and what it could not (a DDP model whose script registered its own
  comm hook). Stores written before the key existed declare nothing: their
  items start as unknown;
- **evidence** from the data: step spans, phase spans, comm spans (or
  Horovod's timeline), memory rows on each rank; for communication,
  network counters that moved during the steps while no collective was
  recorded; and for phases, the recorder's invariant (standard phases never
  overlap and stay inside their step, :func:`phase_violations`): a rank
  that breaks it has its phases reported missing, with the count.

Per rank, data contradicting a declaration wins when it shows a gap (the
recorder said ``recorded`` but the store holds nothing); a declared
``missing`` stays missing whatever was recorded (part of it may be). Across
ranks, an item missing on any rank is missing for the run, naming those ranks
and each reason. The result maps each item to ``state`` (``recorded``,
``missing``, ``not_applicable`` or ``unknown``), ``how`` (one line: how it was
recorded, or why not) and ``ranks`` (those where it is missing or unknown).
"""

from __future__ import annotations

from tbdprof import schema

from .bandwidth import NET_METRICS
from .findings.base import ranks_text
from .fmt import fmt_bytes, fmt_rate
from .load import Run

UNKNOWN = "unknown"  # neither the recorder nor the data tells (an old store)
STATES = (*schema.COVERAGE_STATES, UNKNOWN)
GAPS = (schema.COVERAGE_MISSING, UNKNOWN)

# Network traffic during the steps that says the ranks communicated: at least this many bytes on the
# busiest host's interfaces, at this average rate (above the background a shared host's loopback carries:
# ~0.8 MB/s measured on the 2-core test machine while other jobs ran).
NIC_MIN_BYTES = 1 << 20
NIC_MIN_BYTES_PER_S = 1 << 20

SYMBOL = {schema.COVERAGE_RECORDED: "✓", schema.COVERAGE_MISSING: "✗", schema.COVERAGE_NOT_APPLICABLE: "–", UNKNOWN: "?"}
LABEL = {schema.COVERAGE_STEPS: "steps", schema.COVERAGE_PHASES: "phases", schema.COVERAGE_COMM: "communication",
         schema.COVERAGE_MEMORY: "memory breakdown"}
STATE_TEXT = {schema.COVERAGE_RECORDED: "recorded", schema.COVERAGE_MISSING: "missing",
              schema.COVERAGE_NOT_APPLICABLE: "not applicable", UNKNOWN: "unknown"}


def declared(run: Run) -> dict[int, dict[str, dict]]:
    """Per rank, the valid entries of its rank.json ``coverage`` (others ignored: unknown)."""
    out: dict[int, dict[str, dict]] = {}
    for rank, meta in run.ranks.items():
        cov = meta.get(schema.COVERAGE_FILE_KEY)
        entries = {}
        if isinstance(cov, dict):
            for item in schema.COVERAGE_ITEMS:
                e = cov.get(item)
                if isinstance(e, dict) and e.get("state") in schema.COVERAGE_STATES:
                    entries[item] = {"state": e["state"], "how": str(e.get("how") or "").strip()}
        out[rank] = entries
    return out


def _span_counts(run: Run) -> dict[int, dict]:
    """Per rank, in one scan: step, phase, comm and Horovod-timeline span counts, and the phase and comm names."""
    if not run.has(schema.SPANS):
        return {}
    if run.zoom:  # scale mode: the whole run's counts from the rollups; Horovod's timeline (not rolled up) in the zoom window
        rows = run.sql(
            "SELECT rank, sum(count) FILTER (WHERE kind = ?), sum(count) FILTER (WHERE kind = ?), "
            "sum(count) FILTER (WHERE kind = ?), (SELECT count(*) FROM spans s WHERE s.rank = r.rank AND s.kind = ?), "
            "list(DISTINCT name) FILTER (WHERE kind = ?), list(DISTINCT name) FILTER (WHERE kind = ?) FROM rollups r "
            "WHERE list_contains(?, kind) GROUP BY rank",
            [schema.KIND_STEP, schema.KIND_PHASE, schema.KIND_COMM, schema.KIND_HOROVOD, schema.KIND_PHASE, schema.KIND_COMM,
             list(schema.SPAN_KINDS)])
        return {r: {"steps": int(s or 0), "phases": int(p or 0), "comm": int(c or 0), "hvd": h, "phase_names": pn or [],
                    "comm_names": cn or []} for r, s, p, c, h, pn, cn in rows}
    rows = run.sql(
        "SELECT rank, count(*) FILTER (WHERE kind = ?), count(*) FILTER (WHERE kind = ?), "
        "count(*) FILTER (WHERE kind = ?), count(*) FILTER (WHERE kind = ?), "
        "list(DISTINCT name) FILTER (WHERE kind = ?), list(DISTINCT name) FILTER (WHERE kind = ?) FROM spans GROUP BY rank",
        [schema.KIND_STEP, schema.KIND_PHASE, schema.KIND_COMM, schema.KIND_HOROVOD, schema.KIND_PHASE, schema.KIND_COMM])
    return {r: {"steps": s, "phases": p, "comm": c, "hvd": h, "phase_names": pn or [], "comm_names": cn or []}
            for r, s, p, c, h, pn, cn in rows}


def _names(counts: dict[int, dict], key: str, limit: int) -> str:
    order = {p: i for i, p in enumerate(schema.STANDARD_PHASES)}
    names = sorted({n for c in counts.values() for n in c.get(key, [])}, key=lambda n: (order.get(n, len(order)), n))
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


# The recorder's invariant for the phases it times itself: never overlapping, never outside their step.
CHECKED_PHASES = (schema.PHASE_DATA, schema.PHASE_FORWARD, schema.PHASE_BACKWARD, schema.PHASE_OPTIMIZER)


def phase_violations(run: Run) -> dict[int, dict]:
    """Per rank with a violation: ``{"overlapping", "outside", "first_step"}``: standard phases that begin
    before an earlier phase of their step ended, or lie outside their step. A phase may end after its step
    on a rank that used CUDA (device time, recorded with CUDA events, lags the host's step end)."""
    if not run.has(schema.SPANS):
        return {}
    cuda_ranks = [r for r, m in run.ranks.items() if (m.get("env") or {}).get("cuda_available")]
    rows = run.sql(
        "WITH p AS (SELECT rank, step, start_ns, end_ns, max(end_ns) OVER (PARTITION BY rank, step ORDER BY start_ns, end_ns "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before_end FROM spans "
        "WHERE kind = ? AND step >= 0 AND list_contains(?, name)), "
        "s AS (SELECT rank, step, start_ns AS s0, end_ns AS s1 FROM spans WHERE kind = ?) "
        "SELECT p.rank, count(*) FILTER (WHERE p.start_ns < p.before_end), "
        "count(*) FILTER (WHERE p.start_ns < s.s0 OR (p.end_ns > s.s1 AND NOT list_contains(?, p.rank))), "
        "min(p.step) FROM p JOIN s USING (rank, step) "
        "WHERE p.start_ns < p.before_end OR p.start_ns < s.s0 OR p.end_ns > s.s1 GROUP BY p.rank",
        [schema.KIND_PHASE, list(CHECKED_PHASES), schema.KIND_STEP, cuda_ranks or [-1]])
    return {r: {"overlapping": o, "outside": x, "first_step": f} for r, o, x, f in rows if o or x}


def _violation_text(v: dict) -> str:
    parts = [f"{v['overlapping']} overlap an earlier phase" if v["overlapping"] else "",
             f"{v['outside']} lie outside their step" if v["outside"] else ""]
    return (f"phase spans recorded, but {' and '.join(p for p in parts if p)} (first in step {v['first_step']}): "
            "the phase breakdown of those steps is not to be trusted")


def _memory_rows(run: Run) -> dict[int, int]:
    if not run.has(schema.MEMORY):
        return {}
    if run.memory_rollups:
        return dict(run.sql("SELECT rank, sum(count) FROM rollups WHERE kind = ? AND name = 'total' GROUP BY rank",
                            [schema.ROLLUP_MEMORY]))
    return dict(run.sql("SELECT rank, count(*) FROM memory GROUP BY rank"))


def nic_traffic(run: Run) -> dict | None:
    """Bytes the busiest host's interfaces carried during the steps (the steady window, else all steps).

    Per host and interface the larger of bytes sent and received between the
    first and the last reading inside the window (loopback carries each byte
    both ways), summed over the host's interfaces. Returns ``{"host",
    "bytes", "bytes_per_s", "window_s", "interfaces": {nic: bytes}}`` or
    None when no interface was sampled in the window.
    """
    if not run.has(schema.SAMPLES) or not run.has(schema.SPANS):
        return None
    w = run.steady_window
    if w is None:
        row = run.sql("SELECT min(start_ns), max(end_ns) FROM spans WHERE kind = ?", [schema.KIND_STEP])[0]
        w = None if row[0] is None else (row[0], row[1])
    if w is None or w[1] <= w[0]:
        return None
    rows = run.sql(
        "SELECT host, device, max(moved) FROM (SELECT host, rank, device, metric, "
        "greatest(0, arg_max(value, ts_ns) - arg_min(value, ts_ns)) AS moved FROM samples "
        "WHERE list_contains(?, metric) AND ts_ns BETWEEN ? AND ? GROUP BY ALL) GROUP BY host, device",
        [list(NET_METRICS), *w])
    if not rows:
        return None
    hosts: dict[str, dict[str, float]] = {}
    for host, nic, moved in rows:
        hosts.setdefault(host, {})[nic] = float(moved or 0)
    host = max(hosts, key=lambda h: sum(hosts[h].values()))
    total = sum(hosts[host].values())
    secs = (w[1] - w[0]) / 1e9
    return {"host": host, "bytes": total, "bytes_per_s": total / secs, "window_s": secs,
            "interfaces": {n: b for n, b in sorted(hosts[host].items(), key=lambda kv: -kv[1]) if b > 0}}


def _traffic_text(t: dict) -> str:
    nics = ", ".join(list(t["interfaces"])[:3])
    return (f"the NICs carried {fmt_bytes(t['bytes'])} during the steps ({fmt_rate(t['bytes_per_s'])}, host {t['host']}: "
            f"{nics}) but no collective was recorded")


def _per_rank(run: Run) -> tuple[dict[str, dict[int, dict]], dict | None]:
    """item -> rank -> {"state", "how"} after merging the declaration with the data; and the network
    traffic during the steps when it says the ranks communicated without a recorded collective."""
    decl = declared(run)
    counts = _span_counts(run)
    mem = _memory_rows(run)
    ranks = sorted(run.ranks)
    zero = {"steps": 0, "phases": 0, "comm": 0, "hvd": 0, "phase_names": [], "comm_names": []}
    c = {r: counts.get(r, zero) for r in ranks}
    any_steps = [r for r in ranks if c[r]["steps"]]
    any_comm = [r for r in ranks if c[r]["comm"]]
    horovod = any(c[r]["hvd"] for r in ranks)
    any_mem = [r for r in ranks if mem.get(r)]
    multi = run.world_size > 1
    traffic = None
    if multi and not any_comm and not horovod:
        t = nic_traffic(run)
        if t and t["bytes"] >= NIC_MIN_BYTES and t["bytes_per_s"] >= NIC_MIN_BYTES_PER_S:
            traffic = t
    phase_names = _names(counts, "phase_names", 8)
    comm_names = _names(counts, "comm_names", 4)
    out: dict[str, dict[int, dict]] = {item: {} for item in schema.COVERAGE_ITEMS}
    rec, miss, na = schema.COVERAGE_RECORDED, schema.COVERAGE_MISSING, schema.COVERAGE_NOT_APPLICABLE

    def merge(item: str, rank: int, present: bool, evidence_how: str, absent: tuple[str, str]) -> dict:
        """``absent``: (state, how) when the data holds nothing and the rank declared nothing."""
        d = decl[rank].get(item)
        if d and d["state"] == miss:
            return {"state": miss, "how": d["how"] or "the recorder could not record it"}
        if present:
            return {"state": rec, "how": (d["how"] if d and d["state"] == rec and d["how"] else evidence_how)}
        if d and d["state"] == na:
            return {"state": na, "how": d["how"] or "nothing to record"}
        if d and d["state"] == rec:
            return {"state": miss, "how": f"the recorder reported {d['how'] or 'it recorded'}, but the store holds none"}
        return {"state": absent[0], "how": absent[1]}

    violations = phase_violations(run)
    for r in ranks:
        n = c[r]
        out[schema.COVERAGE_STEPS][r] = merge(
            schema.COVERAGE_STEPS, r, bool(n["steps"]), "step spans",
            (miss, f"no step recorded while {ranks_text(any_steps)} recorded steps") if any_steps
            else (miss, "no training step recorded on any rank"))
        out[schema.COVERAGE_PHASES][r] = merge(
            schema.COVERAGE_PHASES, r, bool(n["phases"]), f"phase spans ({phase_names})",
            (miss, "steps recorded but no phase inside them (data wait, forward, backward, optimizer unknown)")
            if n["steps"] else (UNKNOWN, "no phase span (and no step) recorded"))
        if r in violations and out[schema.COVERAGE_PHASES][r]["state"] == rec:
            out[schema.COVERAGE_PHASES][r] = {"state": miss, "how": _violation_text(violations[r])}
        d_comm = decl[r].get(schema.COVERAGE_COMM) or {}
        if not multi and d_comm.get("state") != miss:
            out[schema.COVERAGE_COMM][r] = (
                {"state": rec, "how": f"collective spans ({comm_names})"} if n["comm"] else
                {"state": na, "how": (d_comm["how"] if d_comm.get("state") == na and d_comm["how"] else "one rank: no collectives")})
        else:
            present = bool(n["comm"]) or horovod
            if any_comm:
                absent = (miss, f"no collective recorded while {ranks_text(any_comm)} recorded some")
            elif traffic:
                absent = (miss, _traffic_text(traffic))
            else:
                absent = (UNKNOWN, "no collective recorded, and no network traffic during the steps to tell whether "
                                   "the ranks communicated (NCCL over NVLink/shared memory does not show on a NIC)")
            how = f"collective spans ({comm_names})" if n["comm"] else "Horovod's timeline"
            e = merge(schema.COVERAGE_COMM, r, present, how, absent)
            if e["state"] == na and traffic:  # the recorder saw nothing to record, the network says otherwise
                e = {"state": miss, "how": f"the recorder reported {e['how']}"}
            out[schema.COVERAGE_COMM][r] = e
        out[schema.COVERAGE_MEMORY][r] = merge(
            schema.COVERAGE_MEMORY, r, bool(mem.get(r)), "memory breakdown of the sampled steps",
            (miss, f"no memory breakdown while {ranks_text(any_mem)} recorded one") if any_mem
            else (UNKNOWN, "no memory breakdown recorded (Profiler.watch not called, or no sampled step reached)"))
    return out, traffic


def _combine(per_rank: dict[int, dict]) -> dict:
    """One item over all ranks: missing on any rank -> missing (naming ranks and reasons), then unknown,
    then recorded; not applicable only when it is on every rank."""
    if not per_rank:
        return {"state": UNKNOWN, "how": "no rank recorded anything", "ranks": []}
    for state in (schema.COVERAGE_MISSING, UNKNOWN, schema.COVERAGE_RECORDED, schema.COVERAGE_NOT_APPLICABLE):
        hit = {r: e["how"] for r, e in per_rank.items() if e["state"] == state}
        if hit:
            break
    by_how: dict[str, list[int]] = {}
    for r, how in sorted(hit.items()):
        by_how.setdefault(how, []).append(r)
    if state == schema.COVERAGE_MISSING or len(by_how) > 1 or set(hit) != set(per_rank):
        how = "; ".join(f"{ranks_text(rs)}: {h}" for h, rs in by_how.items())
    else:
        how = next(iter(by_how))
    return {"state": state, "how": how, "ranks": sorted(hit) if state in GAPS else []}


def run_coverage(run: Run) -> dict[str, dict]:
    """item -> ``{"state", "how", "ranks"}`` for every item of :data:`tbdprof.schema.COVERAGE_ITEMS` (cached per run)."""
    def compute() -> dict[str, dict]:
        per, traffic = _per_rank(run)
        out = {item: _combine(per[item]) for item in schema.COVERAGE_ITEMS}
        comm = out[schema.COVERAGE_COMM]
        if traffic and comm["state"] == schema.COVERAGE_MISSING and _traffic_text(traffic) not in comm["how"]:
            comm["how"] += "; " + _traffic_text(traffic)  # the run-level evidence, once
        return out

    return run.cached("run_coverage", compute)


def summary_coverage(cov: dict[str, dict]) -> dict[str, dict]:
    """The summary.json form: ``{item: {"state", "how"}}``."""
    return {item: {"state": e["state"], "how": e["how"]} for item, e in cov.items()}


def coverage_lines(cov: dict[str, dict]) -> list[tuple[str, str, str]]:
    """(symbol, item, text) per item, for the terminal and the HTML report."""
    out = []
    for item, e in cov.items():
        state = e["state"]
        text = e["how"] if state == schema.COVERAGE_RECORDED else f"{STATE_TEXT[state]}: {e['how']}"
        out.append((SYMBOL.get(state, "?"), item, text))
    return out


def gaps(cov: dict[str, dict]) -> dict[str, dict]:
    """The items missing or unknown."""
    return {item: e for item, e in cov.items() if e["state"] in GAPS}

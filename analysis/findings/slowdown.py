"""Slowdown: the step time rose mid-run and stayed up (a layer slowing from some step, a node degrading).

The other rules judge the steady state as a whole, by medians, so a slow part
shorter than about half the run moves none of them. This rule looks for the
change itself, in the recorded step times (so it works with the recorder's
anomaly watch off): the per-step maximum over ranks, bucketed by step in one
query on the diagnosis' per-step table, then the split of the buckets that
maximises the median after over the median before, both sides long enough.
It names the ranks whose own time (outside the phases that wait for the
others) rose most, the part of the step that rose, the deep windows that lie
in the slow part, what the anomaly watch saw, and the operator-level
difference in those windows (:func:`.sync.operator_level`).
"""

from __future__ import annotations

from statistics import median, quantiles

from tbdprof import schema

from .. import windows
from .base import Finding, graded, ranks_text
from .context import BLOCKING, Context
from .hang import _clock as clock_text
from .sync import operator_level, operator_text

BUCKETS = 150  # the step times are judged in at most this many buckets of consecutive steps
MIN_SHARE = 0.10  # each side of the change holds at least this share of the steady steps
MIN_STEPS = 10  # and at least this many
RATIO_WARNING = 1.3  # median step after / before
RATIO_CRITICAL = 2.0
SUSTAINED = 1.15  # three quarters of the slow part's buckets are at least this much slower than before
MIN_RISE_S = 0.002  # and the rise is at least this, whatever the step time
STANDOUT = 0.25  # a rank's own time rose this share of the step's rise more than the others' (median)
SAMPLED_STEPS = 2000  # at most this many steady steps (evenly spaced) enter the per-rank comparison
STEP, OWN, OUTSIDE = "(step)", "(own)", "outside_phases"
OPERATOR_PHASES = (schema.PHASE_FORWARD, schema.PHASE_BACKWARD, schema.PHASE_OPTIMIZER)


def slowdown(ctx: Context) -> list[Finding]:
    """A sustained rise of the step time from some step on, with who and where it rose."""
    change = _change_point(_buckets(ctx))
    if change is None:
        return []
    at, before, after, slow_steps, steps, bucket_steps = change
    rise = after - before
    run = ctx.run
    start_ns = run.sql("SELECT min(start_ns) FROM rollups WHERE kind = ? AND first_step >= ?", [schema.KIND_STEP, at]
                       )[0][0] if run.zoom else run.sql("SELECT min(start_ns) FROM steady_steps WHERE step >= ?", [at])[0][0]
    parts = _parts(ctx, at)
    late, part, part_rise = _who(parts, rise)
    ranks = sorted(late) if late else sorted(parts) or sorted(run.ranks)
    alike = not late and len(parts) > 1
    caught = _windows_in(run, at - bucket_steps)
    ratio = after / before
    evidence = {
        "change_step": at, "change_at_s": (start_ns - run.t0_ns) / 1e9, "change_clock": clock_text(start_ns),
        "before_step_s": before, "after_step_s": after, "ratio": ratio, "slow_steps": slow_steps, "steps": steps,
        "own_rise_s": {r: v[OWN] for r, v in sorted(_rises(parts).items())},
        "ranks_alike": alike, "slow_part": part, "slow_part_rise_s": part_rise,
        "windows": caught, "watch": _watch(run, caught),
    }
    who = "all ranks alike" if alike else ranks_text(ranks)
    where = f", in {part.replace('_', ' ')} (+{part_rise * 1e3:.1f} ms)" if part else ""
    title = (f"step time rose {ratio:.1f}x from step {at:,} ({evidence['change_clock']}): {after * 1e3:.1f} ms against "
             f"{before * 1e3:.1f} ms before; {who}{where}")
    advice = (f"Find what changed on {'every rank' if alike else who} at step {at:,} ({evidence['change_clock']}): the "
              "script's own schedule (sequence length, an evaluation or checkpoint pass), the data, other processes "
              "on the host, clocks and thermal throttling, the network or file system.")
    rank = max(late, key=late.get) if late else None
    ops = operator_level(ctx, rank, part if part in OPERATOR_PHASES else None) if rank in caught else None
    if ops:
        evidence["operator_level"] = ops
        title += operator_text(ops)
        advice += f" Operator by operator: tbdprof ops {run.path} --rank {rank}."
    elif not caught:
        advice += (" No deep window lies in the slow part: keep the anomaly watch on (the default) or run "
                   f"tbdprof trace {run.path} while it is slow, to see its operators.")
    return [Finding(
        kind="slowdown", severity=graded(ratio, RATIO_WARNING, RATIO_CRITICAL), ranks=ranks,
        hosts=sorted({run.ranks[r].get("host") for r in ranks if r in run.ranks}), title=title, evidence=evidence,
        recommendation=advice, time_range_s=((start_ns - run.t0_ns) / 1e9, ctx.window_s[1]),
        score=(1 - before / after) * slow_steps / steps)]


def _buckets(ctx: Context) -> list[tuple[int, int, float]]:
    """(first step, steps, median step time in s) of each bucket of consecutive steady steps, in step order;
    a step's time is the longest over the ranks that recorded it. In scale mode a bucket is a rollup interval,
    its time the highest mean step of any rank in it."""
    if ctx.run.zoom:
        return ctx.run.sql(
            "SELECT min(first_step), max(count), max(sum_ns / count) / 1e9 FROM (SELECT rank, interval_ns, min(first_step) AS "
            "first_step, sum(count) AS count, sum(sum_ns) AS sum_ns FROM rollups WHERE kind = $step AND last_step >= $warm "
            "GROUP BY ALL) GROUP BY interval_ns ORDER BY 1", {"step": schema.KIND_STEP, "warm": ctx.run.warmup_steps})
    return ctx.run.sql(
        f"WITH s AS (SELECT step, max(step_ns) AS d FROM {ctx._step_table} GROUP BY step), "
        "r AS (SELECT min(step) AS a, max(step) - min(step) + 1 AS span, count(*) AS n FROM s) "
        "SELECT min(step), count(*), median(d) / 1e9 FROM s, r GROUP BY (s.step - r.a) * least($b, r.n) // r.span "
        "ORDER BY 1", {"b": BUCKETS})


def _change_point(buckets: list[tuple[int, int, float]]):
    """(first slow step, median before, median after, slow steps, steps, steps of the bucket before the change)
    at the split that maximises after / before, or None when no split passes the thresholds."""
    steps = sum(n for _, n, _ in buckets)
    need = max(MIN_STEPS, MIN_SHARE * steps)

    def sides(k):
        return [m for _, _, m in buckets[:k]], [m for _, _, m in buckets[k:]]

    counts = [0]
    for _, n, _ in buckets:
        counts.append(counts[-1] + n)
    ok = [k for k in range(1, len(buckets)) if counts[k] >= need and steps - counts[k] >= need]
    if not ok:
        return None
    ratios = {k: median(sides(k)[1]) / median(sides(k)[0]) for k in ok if median(sides(k)[0]) > 0}
    if not ratios:
        return None
    k = max(ratios, key=ratios.get)
    # The change is where the buckets cross the geometric middle of the two medians: move the split there
    # (noise can make a split a few buckets off the change score as high).
    mid = (median(sides(k)[0]) * median(sides(k)[1])) ** 0.5
    while k - 1 in ratios and buckets[k - 1][2] > mid:
        k -= 1
    while k + 1 in ratios and buckets[k][2] <= mid:
        k += 1
    before, after = (median(s) for s in sides(k))
    slow = sides(k)[1]
    low = quantiles(slow, n=4)[0] if len(slow) > 1 else slow[0]
    if after < RATIO_WARNING * before or low < SUSTAINED * before or after - before < MIN_RISE_S:
        return None
    return buckets[k][0], before, after, steps - counts[k], steps, buckets[k][0] - buckets[k - 1][0]


def _parts(ctx: Context, at: int) -> dict[int, dict[str, tuple[float, float]]]:
    """Per rank and part of the step (each phase, ``outside_phases``, the step, its *own* time: the step
    outside the blocking phases where a rank waits for the others), (median before, median after) in s, over
    at most :data:`SAMPLED_STEPS` evenly spaced steady steps."""
    run = ctx.run
    if run.zoom:
        return _parts_from_rollups(run, at)
    warm = run.warmup_steps
    last = run.sql(f"SELECT max(step) FROM {ctx._step_table}")[0][0]
    every = max(1, -(-(last - warm + 1) // SAMPLED_STEPS))
    rows = run.sql(
        "WITH c AS (SELECT rank, step, CASE WHEN kind = $step THEN $total ELSE name END AS part, "
        "sum(end_ns - start_ns) AS ns FROM steady_spans "
        "WHERE (kind = $step OR kind = $phase) AND (step - $warm) % $every = 0 GROUP BY ALL), "
        "o AS (SELECT rank, step, sum(ns) FILTER (WHERE part = $total) AS total, "
        "coalesce(sum(ns) FILTER (WHERE list_contains($blocking, part)), 0) AS waits, "
        "coalesce(sum(ns) FILTER (WHERE part != $total), 0) AS phases FROM c GROUP BY ALL HAVING total IS NOT NULL), "
        "x AS (SELECT * FROM c UNION ALL SELECT rank, step, $own, total - waits FROM o "
        "UNION ALL SELECT rank, step, $outside, greatest(0, total - phases) FROM o) "
        "SELECT rank, part, median(ns) FILTER (WHERE step < $at) / 1e9, median(ns) FILTER (WHERE step >= $at) / 1e9 "
        "FROM x GROUP BY ALL",
        {"step": schema.KIND_STEP, "phase": schema.KIND_PHASE, "total": STEP, "own": OWN, "outside": OUTSIDE,
         "blocking": list(BLOCKING), "warm": warm, "every": every, "at": at})
    out: dict[int, dict] = {}
    for rank, part, before, after in rows:
        if before is not None and after is not None:
            out.setdefault(rank, {})[part] = (before, after)
    return {r: p for r, p in sorted(out.items()) if OWN in p}


def _parts_from_rollups(run, at: int) -> dict[int, dict[str, tuple[float, float]]]:
    """:func:`_parts` in scale mode: per rank and part, the mean seconds per step of the rollup intervals before
    and from the one holding step ``at``."""
    rows = run.sql(
        "SELECT rank, CASE WHEN kind = $step THEN $total ELSE name END, first_step >= $at AS after, sum(sum_ns), "
        "sum(count) FILTER (WHERE kind = $step) FROM rollups WHERE kind = $step OR kind = $phase GROUP BY ALL",
        {"step": schema.KIND_STEP, "phase": schema.KIND_PHASE, "total": STEP, "at": at})
    steps = {(r, after): n for r, part, after, _, n in rows if part == STEP}
    ns = {}
    for rank, part, after, total, _ in rows:
        if steps.get((rank, after)):
            ns.setdefault(rank, {}).setdefault(part, [None, None])[int(after)] = total / steps[(rank, after)] / 1e9
    out: dict[int, dict] = {}
    for rank, parts in ns.items():
        if STEP not in parts or None in parts[STEP]:
            continue
        step = parts[STEP]
        waits = [sum(parts.get(p, [0.0, 0.0])[i] or 0.0 for p in BLOCKING) for i in (0, 1)]
        phased = [sum(v[i] or 0.0 for p, v in parts.items() if p != STEP) for i in (0, 1)]
        parts[OWN] = [step[i] - waits[i] for i in (0, 1)]
        parts[OUTSIDE] = [max(0.0, step[i] - phased[i]) for i in (0, 1)]
        out[rank] = {p: tuple(v) for p, v in parts.items() if None not in v}
    return dict(sorted(out.items()))


def _rises(parts: dict) -> dict[int, dict[str, float]]:
    return {r: {p: a - b for p, (b, a) in v.items()} for r, v in parts.items()}


def _who(parts: dict, rise: float) -> tuple[dict[int, float], str | None, float]:
    """The ranks whose own time rose at least :data:`STANDOUT` of the step's rise more than the others' (at
    most half the ranks; {} when none stands out), and the part of the step that rose most: on those ranks,
    outside the blocking phases; else on the median rank, anywhere."""
    rises = _rises(parts)
    if not rises:
        return {}, None, 0.0
    own = {r: v[OWN] for r, v in rises.items()}
    late = {r: own[r] for r in own if len(own) > 1
            and own[r] - median(v for q, v in own.items() if q != r) >= STANDOUT * rise}
    if len(late) > len(own) / 2:
        late = {}
    names = {p for v in rises.values() for p in v} - {STEP, OWN}
    if late:
        names -= set(BLOCKING)
    by = {p: median(rises[r].get(p, 0.0) for r in (late or rises)) for p in names}
    part = max(by, key=by.get, default=None)
    return (late, part, by[part]) if part and by[part] > 0 else (late, None, 0.0)


def _windows_in(run, first: int) -> dict[int, list[dict]]:
    """Per rank, its deep windows in the slow part: starting at or after ``first``, or opened by the anomaly
    watch on a step there (the change is known to a bucket: ``first`` is one bucket before it)."""
    out = {}
    for r, meta in sorted(run.ranks.items()):
        ws = [{"steps": [w["first"], w["last"]], "trigger": w.get("trigger"),
               **({"anomaly": w["anomaly"]} if isinstance(w.get("anomaly"), dict) else {})}
              for w in windows.windows(meta)
              if (w.get("anomaly") or {}).get("at_step", -1) >= first or w["first"] >= first]
        if ws:
            out[r] = ws
    return out


def _watch(run, caught: dict[int, list[dict]]) -> str:
    """What the recorder's anomaly watch did: off, or on and whether it opened a window in the slow part."""
    configs = [(m.get("deep") or {}).get("anomaly") for m in run.ranks.values()]
    on = [c for c in configs if isinstance(c, dict)]
    if not on:
        return "off (or not recorded)"
    c = on[0]
    opened = sorted(r for r, ws in caught.items() if any(w["trigger"] == schema.DEEP_TRIGGER_ANOMALY for w in ws))
    return (f"on ({c.get('factor')}x the running median for {c.get('steps')} steps): "
            + (f"opened a window in the slow part on {ranks_text(opened)}" if opened
               else "opened no window in the slow part"))

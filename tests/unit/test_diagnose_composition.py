"""Stragglers without comm spans: the per-rank phase composition of synchronous steps.

Each store is what synchronous data-parallel training records when one rank
loses time somewhere: every rank's step takes as long, and the others spend
that time waiting in the phase that blocks for the collective (backward with
DDP, the optimizer with Horovod)."""

import numpy as np
import pytest
from storebuilder import MS, gauge, write_rank, write_run

from tbdprof.analysis.diagnose import diagnose
from tbdprof.analysis.findings.context import _median_of_others

T0 = 10**18
ENV = {"torch_threads": 1, "cpu_logical": 8, "mem_total_bytes": 64 * 2**30, "env": {"OMP_NUM_THREADS": "1"}}
BASE = {"data_wait": 2, "forward": 20, "backward": 30, "optimizer": 3, "outside": 2}  # ms


def step_rows(parts_per_step):
    """Steps made of consecutive phases (``outside``: time in the step no phase covers)."""
    rows, t = [], T0
    for i, parts in enumerate(parts_per_step):
        start, at = t, t
        for name, ms in parts.items():
            end = at + int(ms * MS)
            if name != "outside":
                rows.append((i, name, "phase", at, end, None, None))
            at = end
        rows.append((i, "step", "step", start, at, None, 8))
        t = at
    return rows


def synchronous(ranks, n=30, slow=None, extra_ms=0.0, in_part="outside", wait_in="backward", jitter_ms=0.0, seed=0):
    """Per rank, ``n`` steps of BASE; rank ``slow`` spends ``extra_ms`` more in ``in_part`` (a callable of the step
    gives a different slow rank per step) and every other rank as much more in ``wait_in``. ``jitter_ms``: noise."""
    rng = np.random.default_rng(seed)
    out = {r: [] for r in range(ranks)}
    for i in range(n):
        who = slow(i) if callable(slow) else slow
        noise = {r: {p: abs(rng.normal(0, jitter_ms)) for p in BASE} for r in range(ranks)}
        longest = max(sum(BASE[p] + noise[r][p] for p in BASE) for r in range(ranks))
        for r in range(ranks):
            parts = {p: BASE[p] + noise[r][p] for p in BASE}
            if r == who:
                parts[in_part] += extra_ms
            else:
                parts[wait_in] += extra_ms * (who is not None)
            parts[wait_in] += longest - sum(BASE[p] + noise[r][p] for p in BASE)  # synchronous: all steps as long
            out[r].append(parts)
    return out


def make(path, per_rank, samples=None):
    ranks = len(per_rank)
    write_run(path, ranks)
    for r, parts in per_rank.items():
        write_rank(path, r, spans=step_rows(parts), world_size=ranks, warmup_steps=2, env=ENV,
                   metadata={"num_workers": 2}, samples=(samples or {}).get(r, ()))
    return path


def found(path):
    return {f.kind: f for f in diagnose(path)}


def loopback():
    return [row for m in ("net.bytes_sent", "net.bytes_recv") for row in gauge(m, [i * 2**21 for i in range(40)], device="lo")]


def test_sleep_between_steps_on_rank_1(tmp_path):
    """Rank 1 sleeps 120 ms after its optimizer step; rank 0 waits for it in backward, most of its step."""
    per = synchronous(2, slow=1, extra_ms=120)
    f = found(make(tmp_path, per, samples={0: loopback()}))
    s = f.pop("straggler")
    assert s.ranks == [1] and s.severity == "critical"
    ev = s.evidence
    assert ev["evidence_used"] == ["per-rank phase composition"]
    assert ev["late_by_s"][1] == pytest.approx(0.120, rel=0.05) and ev["last_share"][1] == 1.0
    assert (ev["slow_part"], ev["slow_phase"], ev["cause"], ev["others_wait_phase"]) == (
        "outside_phases", None, "outside the recorded phases", "backward")
    assert ev["others_share"]["backward"] > 0.8 and ev["straggler_share"]["outside_phases"] > 0.6
    assert "outside the recorded phases" in s.title and "per-rank phase composition" in s.title
    assert "prof.phase" in s.recommendation
    assert list(f) == ["coverage"] and "comm" in f["coverage"].evidence["missing"]  # the NICs moved, no collective


def test_extra_matrix_products_in_forward(tmp_path):
    f = found(make(tmp_path, synchronous(4, slow=1, extra_ms=40, in_part="forward", jitter_ms=1)))
    s = f.pop("straggler")
    assert not f
    assert (s.ranks, s.evidence["slow_phase"], s.evidence["cause"]) == ([1], "forward", "compute")
    assert s.evidence["late_by_s"][1] == pytest.approx(0.040, rel=0.1)


def test_slow_loader_on_one_rank(tmp_path):
    f = found(make(tmp_path, synchronous(3, slow=1, extra_ms=60, in_part="data_wait")))
    s, slow_loader = f.pop("straggler"), f.pop("input_bound")
    assert not f
    assert (s.ranks, s.evidence["slow_phase"], s.evidence["cause"]) == ([1], "data_wait", "data loading")
    assert slow_loader.ranks == [1]


def test_horovod_waits_in_the_optimizer(tmp_path):
    """With Horovod, backward enqueues the allreduces and optimizer.step() waits for them."""
    s = found(make(tmp_path, synchronous(2, slow=0, extra_ms=50, in_part="backward", wait_in="optimizer")))["straggler"]
    assert (s.ranks, s.evidence["slow_phase"], s.evidence["others_wait_phase"]) == ([0], "backward", "optimizer")


@pytest.mark.parametrize("extra_ms, severity", [(10, None), (20, "warning"), (70, "critical")])
def test_thresholds(tmp_path, extra_ms, severity):
    """Steps of 57 ms + the extra: late by >= 25% of the step warns, >= 50% is critical."""
    f = found(make(tmp_path, synchronous(2, slow=1, extra_ms=extra_ms, in_part="forward")))
    assert (f["straggler"].severity if "straggler" in f else None) == severity


@pytest.mark.parametrize("ranks", [2, 4])
def test_healthy_balanced_run(tmp_path, ranks):
    assert found(make(tmp_path, synchronous(ranks, jitter_ms=4))) == {}


def test_a_different_slow_rank_every_step_is_no_straggler(tmp_path):
    per = synchronous(2, slow=lambda i: i % 2, extra_ms=40, in_part="forward", jitter_ms=1)
    assert "straggler" not in found(make(tmp_path, per))


def test_a_rank_without_phases_is_not_compared(tmp_path):
    """A rank whose phases were not recorded would look like it spends its whole step outside phases."""
    per = synchronous(2)
    path = make(tmp_path, per)
    write_rank(path, 1, spans=[row for row in step_rows(per[1]) if row[2] == "step"], world_size=2, warmup_steps=2, env=ENV)
    f = found(path)
    assert "straggler" not in f and f["coverage"].evidence["missing"]["phases"].startswith("rank 1:")


def test_median_of_others_matches_brute_force():
    rng = np.random.default_rng(1)
    for n in (2, 3, 4, 5, 8):
        x = rng.integers(0, 5, size=(7, n, 3)).astype(float)  # ties included
        want = np.stack([np.median(np.delete(x, r, axis=1), axis=1) for r in range(n)], axis=1)
        assert np.allclose(_median_of_others(x), want)

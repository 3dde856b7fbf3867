"""The slowdown finding on hand-made synchronous runs: a rank slowing in forward from 70 % of the run (the
others wait for it in backward) is found at the right step, with the right ratio and rank, and the deep window
the watch opened there; the same run without the slowdown, noisy, gives nothing."""

import numpy as np
import pytest
from storebuilder import MS, write_rank, write_run

from tbdprof import schema, store
from tbdprof.analysis.diagnose import diagnose

T0 = 10**18
N = 600  # steps: buckets of 4 steps (at most 150 buckets)
SLOW_FROM = 420  # 70 % of the run
PARTS = {"data_wait": 2, "forward": 20, "backward": 30, "optimizer": 3}  # ms; then 2 ms outside the phases
ENV = {"torch_threads": 1, "cpu_logical": 8, "mem_total_bytes": 64 * 2**30, "env": {"OMP_NUM_THREADS": "1"}}


def make(path, ranks=4, slow=(), watch=True, extra_ms=30.0, jitter_ms=3.0, seed=0):
    """Synchronous steps: from SLOW_FROM, the ranks in ``slow`` spend ``extra_ms`` more in forward and the others
    wait as much longer in backward; each step's phases are jittered (the longest rank's step sets everyone's).
    ``watch``: with slow ranks, each rank's deep.json holds the window the recorder's anomaly watch opened."""
    rng = np.random.default_rng(seed)
    write_run(path, ranks)
    rows, t = {r: [] for r in range(ranks)}, T0
    for i in range(N):
        ms = {r: {p: v + abs(rng.normal(0, jitter_ms)) for p, v in PARTS.items()} for r in range(ranks)}
        for r in slow if i >= SLOW_FROM else ():
            ms[r]["forward"] += extra_ms
        step_ms = max(sum(m.values()) for m in ms.values()) + 2
        for r in range(ranks):
            ms[r]["backward"] += step_ms - 2 - sum(ms[r].values())
            at = t
            for name, d in ms[r].items():
                rows[r].append((i, name, schema.KIND_PHASE, at, at + int(d * MS), None, None))
                at += int(d * MS)
            rows[r].append((i, "step", schema.KIND_STEP, t, t + int(step_ms * MS), None, 8))
        t += int(step_ms * MS)
    for r in range(ranks):
        d = write_rank(path, r, spans=rows[r], world_size=ranks, warmup_steps=2, env=ENV, metadata={"num_workers": 2})
        if slow and watch:  # what the recorder's watch writes: the window it opened after 5 slow steps
            win = {"first": SLOW_FROM + 5, "last": SLOW_FROM + 9, "trigger": schema.DEEP_TRIGGER_ANOMALY,
                   "anomaly": {"factor": 1.5, "median_ms": 57.0, "slow_ms": [90.0] * 5, "at_step": SLOW_FROM + 4}}
            store.write_json_atomic(d / schema.DEEP_FILE, {"every": 0, "steps": 5, "windows": [win],
                                                           "anomaly": {"factor": 1.5, "steps": 5}})
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return {f.kind: f for f in diagnose(make(tmp_path_factory.mktemp("slow"), slow={2}))}


def test_a_slowdown_from_70_percent_of_the_run_is_found_at_its_step(planted):
    f = planted["slowdown"]
    ev = f.evidence
    assert SLOW_FROM - 4 <= ev["change_step"] <= SLOW_FROM + 4, ev  # within a bucket
    before, after = ev["before_step_s"], ev["after_step_s"]
    assert (sum(PARTS.values()) + 2) / 1e3 < before < 0.080, ev  # the steps plus the slowest rank's jitter
    assert after - before == pytest.approx(0.030, rel=0.15) and ev["ratio"] == pytest.approx(after / before), ev
    # the window's 5 steps are left out, as from every always-on figure
    assert ev["slow_steps"] == N - ev["change_step"] - 5 and ev["steps"] == N - 2 - 5
    assert f.severity == "warning" and f"from step {ev['change_step']:,}" in f.title


def test_it_names_the_slow_rank_its_phase_and_the_watch_s_window(planted):
    f = planted["slowdown"]
    ev = f.evidence
    assert f.ranks == [2] and not ev["ranks_alike"] and ev["slow_part"] == "forward", ev
    assert ev["slow_part_rise_s"] == pytest.approx(0.030, rel=0.15) and "rank 2, in forward" in f.title
    assert ev["own_rise_s"][2] == pytest.approx(0.030, rel=0.15) and abs(ev["own_rise_s"][0]) < 0.005
    assert sorted(ev["windows"]) == [0, 1, 2, 3] and ev["windows"][2][0]["anomaly"]["at_step"] == SLOW_FROM + 4
    assert ev["watch"].startswith("on (1.5x") and "opened a window in the slow part on ranks 0-3" in ev["watch"]
    assert "operator_level" not in ev  # the windows recorded no ops here
    # the straggler finding's medians do not move: under a third of the run is slow
    assert "straggler" not in planted


def test_a_flat_noisy_run_gives_nothing(tmp_path):
    assert [f.kind for f in diagnose(make(tmp_path, jitter_ms=6.0, seed=1))] == []


def test_all_ranks_alike_without_a_window(tmp_path):
    """Every rank slows alike in forward (a shared cause): none stands out; the part is still named, and with no
    window in the slow part the advice says how to get one."""
    (f,) = [f for f in diagnose(make(tmp_path, slow={0, 1, 2, 3}, watch=False)) if f.kind == "slowdown"]
    assert f.evidence["ranks_alike"] and f.ranks == [0, 1, 2, 3] and "all ranks alike, in forward" in f.title
    assert f.evidence["windows"] == {} and f.evidence["watch"].startswith("off") and "tbdprof trace" in f.recommendation

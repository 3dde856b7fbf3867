"""Each diagnosis rule on hand-made stores with known answers: fires above its threshold, stays quiet below,
names the right ranks; a healthy run gives no finding, a short one a ``too_short`` notice."""

import json

import pytest
from storebuilder import MS, gauge, write_rank, write_run

from tbdprof import schema
from tbdprof.analysis.diagnose import diagnose

T0 = 10**18
ENV = {"torch_threads": 1, "cpu_logical": 8, "mem_total_bytes": 64 * 2**30, "env": {"OMP_NUM_THREADS": "1"}}


def spans(n, step_ms=100, data_ms=5, late_ms=0.0, tail_ms=8, items=None, comm=True, units=None):
    """``n`` steps: data wait, h2d, forward, backward (its last ``tail_ms`` waiting for the allreduce),
    optimizer; the rank's forward takes ``late_ms`` longer, so its last bucket comes that much later."""
    rows = []
    for i in range(n):
        s = T0 + int(i * step_ms * MS)
        at = lambda ms: s + int(ms * MS)  # noqa: E731
        opt = at(step_ms - 6)
        fwd_end = min(at(data_ms + 1 + 0.35 * (step_ms - data_ms)) + int(late_ms * MS), opt - MS)  # phases never overlap
        rows += [(i, "step", "step", s, at(step_ms), None, items(i) if items else 8, units(i) if units else None),
                 (i, "data_wait", "phase", s, at(data_ms), None, None),
                 (i, "h2d", "phase", at(data_ms), at(data_ms + 1), None, None),
                 (i, "forward", "phase", at(data_ms + 1), fwd_end, None, None),
                 (i, "backward", "phase", fwd_end, opt, None, None),
                 (i, "optimizer", "phase", opt, at(step_ms - 1), None, None)]
        if comm:
            arrive = opt - int(tail_ms * MS)
            rows += [(i, "allreduce", "comm", arrive - 20 * MS, arrive - 10 * MS, 1 << 20, None),
                     (i, "allreduce", "comm", arrive + int(late_ms * MS), opt + int(late_ms * MS), 1 << 20, None)]
    return rows


def make_run(path, ranks=2, n=20, env=None, metadata=None, samples=None, **per_rank):
    """A run of ``ranks`` ranks on one host; ``per_rank`` maps spans() keywords to {rank: value}."""
    write_run(path, ranks)
    for r in range(ranks):
        kw = {k: v[r] for k, v in per_rank.items() if r in v}
        write_rank(path, r, spans=spans(n, **kw), world_size=ranks, warmup_steps=2, env=ENV | (env or {}),
                   metadata={"num_workers": 2} | (metadata or {}), samples=(samples or {}).get(r, ()))
    return path


def kinds(path, **kw):
    return [(f.kind, f.severity, f.ranks) for f in diagnose(path, **kw)]


def test_healthy_run_has_no_finding(tmp_path):
    assert kinds(make_run(tmp_path, ranks=4)) == []


def test_too_short_says_so_instead_of_guessing(tmp_path):
    found = diagnose(make_run(tmp_path, n=6, data_ms={0: 60, 1: 60}))  # 4 steady steps, and input-bound
    assert [f.kind for f in found] == ["too_short"]
    assert found[0].evidence["needed"] == 5


@pytest.mark.parametrize("data_ms, severity", [(20, None), (30, "warning"), (55, "critical")])
def test_input_bound_thresholds(tmp_path, data_ms, severity):
    found = kinds(make_run(tmp_path, data_ms={0: data_ms, 1: data_ms}))
    assert found == ([("input_bound", severity, [0, 1])] if severity else [])


def test_input_bound_without_workers_says_so(tmp_path):
    (f,) = diagnose(make_run(tmp_path, ranks=1, data_ms={0: 40}, metadata={"num_workers": 0}))
    assert f.kind == "input_bound" and "workers" in f.recommendation and f.evidence["per_rank"][0]["loader_workers"] == 0


@pytest.mark.parametrize("late_ms, severity", [(15, None), (30, "warning"), (60, "critical")])
def test_straggler_named_with_its_phase(tmp_path, late_ms, severity):
    found = diagnose(make_run(tmp_path, ranks=4, late_ms={2: late_ms}))
    assert [(f.kind, f.severity, f.ranks) for f in found] == ([("straggler", severity, [2])] if severity else [])
    if severity:
        assert found[0].evidence["cause"] == "compute"
        assert found[0].evidence["late_by_s"][2] == pytest.approx(late_ms / 1e3, rel=0.05)


def test_straggler_in_data_loading(tmp_path):
    found = {f.kind: f for f in diagnose(make_run(tmp_path, ranks=3, data_ms={0: 0, 1: 40, 2: 0}))}
    straggler, slow_loader = found.pop("straggler"), found.pop("input_bound")
    assert not found
    assert (straggler.kind, straggler.ranks, straggler.evidence["slow_phase"], straggler.evidence["cause"]) == (
        "straggler", [1], "data_wait", "data loading")
    assert (slow_loader.kind, slow_loader.ranks) == ("input_bound", [1])


def test_imbalance_from_uneven_batches_without_a_straggler(tmp_path):
    work = {r: (lambda i, r=r: 8 + 24 * ((i + r) % 3 == 0)) for r in range(3)}  # a different rank gets 32 each step
    late = {r: 0 for r in range(3)}
    run = make_run(tmp_path, ranks=3, items=work, late_ms=late)
    assert kinds(run) == []  # uneven items, but nobody waits: not a problem
    for r in range(3):  # now the rank with the big batch arrives 40 ms late
        d = tmp_path / f"host=h0/rank={r}"
        for f in d.glob("spans-*.parquet"):
            f.unlink()
        from storebuilder import write_segment
        rows = [row for i in range(20) for row in spans(i + 1, late_ms=40 * ((i + r) % 3 == 0), items=work[r])[-8:]]
        write_segment(tmp_path, schema.SPANS, rows, rank=r)
    assert kinds(run) == [("imbalance", "critical", [0, 1, 2])]


def test_imbalance_in_tokens_with_equal_batches(tmp_path):
    """A language model's ranks draw equal batches (items) of unequal lengths (units: tokens): the rank with
    the long sequences arrives late, a different one each step. Judged in tokens, not samples."""
    from storebuilder import write_segment

    tokens = {r: (lambda i, r=r: 512 + 1536 * ((i + r) % 3 == 0)) for r in range(3)}
    run = make_run(tmp_path, ranks=3, late_ms={r: 0 for r in range(3)})
    for r in range(3):
        for f in (tmp_path / f"host=h0/rank={r}").glob("spans-*.parquet"):
            f.unlink()
        rows = [row for i in range(20) for row in spans(i + 1, late_ms=40 * ((i + r) % 3 == 0), units=tokens[r])[-8:]]
        write_segment(tmp_path, schema.SPANS, rows, rank=r)
    (f,) = diagnose(run)
    assert (f.kind, f.severity, f.ranks) == ("imbalance", "critical", [0, 1, 2])
    assert f.evidence["work_cv_across_ranks"] > 0.5  # items alone are equal: the spread is in the tokens


@pytest.mark.parametrize("tail_ms, severity", [(15, None), (30, "warning"), (60, "critical")])
def test_communication_bound_thresholds(tmp_path, tail_ms, severity):
    found = diagnose(make_run(tmp_path, tail_ms={0: tail_ms, 1: tail_ms}), link_bytes_per_s=1e6)
    assert [(f.kind, f.severity) for f in found] == ([("communication_bound", severity)] if severity else [])
    if severity:
        ev = found[0].evidence
        assert ev["comm_tail_fraction"] == pytest.approx(tail_ms / 100, rel=0.05)
        assert ev["link_fraction"] > 0.7 and "saturated" in found[0].recommendation


@pytest.mark.parametrize("threads, severity", [(8, None), (12, "warning"), (16, "critical")])
def test_cpu_oversubscription_from_thread_settings(tmp_path, threads, severity):
    found = kinds(make_run(tmp_path, env={"torch_threads": threads // 2}))  # 2 ranks on 8 logical cpus
    assert found == ([("cpu_contention", severity, [0, 1])] if severity else [])


def test_cpu_contention_from_other_processes(tmp_path):
    host = gauge("cpu.runnable", [20] * 30) + gauge("cpu.system_pct", [100] * 30)
    proc = gauge("cpu.process_pct", [100] * 30)
    (f,) = diagnose(make_run(tmp_path, samples={0: host + proc, 1: proc}))
    assert (f.kind, f.evidence["source"], f.evidence["other_processes_cores"]) == ("cpu_contention", "other processes", 6.0)


@pytest.mark.parametrize("mib_per_tick, noise, leak", [(0, 50, False), (8, 0, True), (0.05, 1, False)])
def test_memory_leak_needs_a_clear_trend(tmp_path, mib_per_tick, noise, leak):
    import numpy as np

    rng = np.random.default_rng(0)
    rss = [(1 << 30) + i * mib_per_tick * 2**20 + rng.normal(0, noise * 2**20) for i in range(30)]
    found = kinds(make_run(tmp_path, samples={0: gauge("mem.rss_bytes", rss), 1: gauge("mem.rss_bytes", [1 << 30] * 30)}))
    assert found == ([("memory_leak", "warning", [0])] if leak else [])


def test_host_memory_pressure(tmp_path):
    used = gauge("mem.used_bytes", [0.95 * 64 * 2**30] * 30)
    assert kinds(make_run(tmp_path, samples={0: used})) == [("memory_pressure", "warning", [0, 1])]


@pytest.mark.parametrize("util, severity", [(80, None), (40, "warning"), (10, "critical")])
def test_low_device_utilization(tmp_path, util, severity):
    gpu = gauge("gpu.util_pct", [util] * 30, device="gpu0")
    assert kinds(make_run(tmp_path, samples={1: gpu})) == ([("low_device_utilization", severity, [1])] if severity else [])


@pytest.mark.parametrize("fp32, tensor, severity", [(60, 0.5, "critical"), (30, 1, "warning"), (30, 40, None),
                                                   (10, 0, None), (60, None, None)])
def test_fp32_math_with_idle_tensor_cores(tmp_path, fp32, tensor, severity):
    gpm = gauge("gpu.util_pct", [95] * 30, device="gpu0") + gauge("gpu.fp32_util_pct", [fp32] * 30, device="gpu0")
    if tensor is not None:  # no GPM tensor reading (an older GPU): no finding, never guessed
        gpm += gauge("gpu.tensor_util_pct", [tensor] * 30, device="gpu0")
    found = kinds(make_run(tmp_path, samples={0: gpm}))
    assert found == ([("fp32_math", severity, [0])] if severity else [])


def test_cli_json_and_unreadable_run(tmp_path):
    from clirun import run_cli

    make_run(tmp_path / "r", data_ms={0: 55, 1: 55})
    out = json.loads(run_cli("diagnose", tmp_path / "r", "--json").stdout)
    assert [f["kind"] for f in out] == ["input_bound"]
    assert set(out[0]) >= {"kind", "severity", "ranks", "evidence", "recommendation", "time_range_s"}
    text = run_cli("diagnose", tmp_path / "r").stdout
    assert "CRITICAL" in text and "input_bound" in text
    bad = run_cli("diagnose", tmp_path / "nothing", check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_median_of_the_other_ranks_is_the_median_without_each_one():
    import random
    from statistics import median

    from tbdprof.analysis.findings.sync import _medians_of_the_others

    rng = random.Random(1)
    for n in (2, 3, 4, 7, 10, 33):
        values = {r: rng.choice([rng.random(), 0.5]) for r in range(n)}  # ties too
        got = _medians_of_the_others(values)
        assert got == {r: pytest.approx(median(v for q, v in values.items() if q != r)) for r in values}

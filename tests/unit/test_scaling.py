"""Scaling report on synthetic stores with known answers: the step split and sync wait, the
attribution arithmetic, strong/weak detection, repeats and noise, the projection, bad input."""

from __future__ import annotations

import json
import re

import pytest

from tbdprof import cli, schema, store
from tbdprof.analysis import network
from tbdprof.analysis.load import open_run
from tbdprof.analysis.scaling import ScalingError, detect_scaling, overlaps, scaling, scaling_command, spread, step_split

from storebuilder import MS, steps, write_rank, write_run

T0 = 10**18
GRAD = 1_000_000
# 1 rank: 50 ms steps, compute 45 ms, data wait 5 ms
SOLO = {"data_wait": (0, 5), "forward": (5, 20), "backward": (20, 45), "optimizer": (45, 50)}
# 2 ranks, 100 ms steps; rank 0 hands its last bucket over at 60 ms, rank 1 (the slowest) at 80 ms,
# both collectives end at 90 ms; optimizer to 95, 5 ms of step outside every phase
PAIR = [
    ({"data_wait": (0, 10), "forward": (10, 40), "backward": (40, 90), "optimizer": (90, 95)}, (60, 90)),
    ({"data_wait": (0, 10), "forward": (10, 50), "backward": (50, 90), "optimizer": (90, 95)}, (80, 90)),
]
# per step, mean of the two ranks: rank 0 waits 30 ms (20 of them for rank 1), rank 1 waits 10 ms
PAIR_SPLIT = {"compute": 65, "comm_exposed": 10, "data_wait": 10, "sync_wait": 10, "other": 5}


def _rank_spans(phases, comm, step_ms, n_steps, t0=T0):
    rows = steps(n_steps, step_ms, items=4, t0=t0, phases=phases)
    if comm:
        rows += [(i, schema.COMM_ALLREDUCE, schema.KIND_COMM, t0 + int((i * step_ms + comm[0]) * MS),
                  t0 + int((i * step_ms + comm[1]) * MS), GRAD, None) for i in range(n_steps)]
    return rows


def make_run(path, layout, step_ms, batch=4, global_batch=None, workload="resnet50", hosts=None, n_steps=6):
    """A run with one rank per entry of ``layout`` ((phases, comm window in ms) each)."""
    n = len(layout)
    write_run(path, n, workload=workload, preset="tiny")
    for r, (phases, comm) in enumerate(layout):
        write_rank(path, r, (hosts or ["h0"] * n)[r], spans=_rank_spans(phases, comm, step_ms, n_steps), world_size=n,
                   metadata={"batch_size": batch, "global_batch_size": global_batch or batch * n, "workload": workload})
    return path


def solo(path, step_ms=50, **kw):
    phases = {k: (a * step_ms / 50, b * step_ms / 50) for k, (a, b) in SOLO.items()}
    return make_run(path, [(phases, None)], step_ms, **kw)


def pair(path, stretch=1.0, **kw):
    layout = [({k: (a * stretch, b * stretch) for k, (a, b) in p.items()}, (c[0] * stretch, c[1] * stretch)) for p, c in PAIR]
    return make_run(path, layout, 100 * stretch, **kw)


def test_step_split_and_sync_wait(tmp_path):
    split = step_split(open_run(pair(tmp_path / "p")))
    assert split["rank_steps"] == 12
    assert split["step_s"] == pytest.approx(0.1)
    for cause, ms in PAIR_SPLIT.items():
        assert split[cause] * 1e3 == pytest.approx(ms, abs=1e-6), cause
    solo_split = step_split(open_run(solo(tmp_path / "s")))
    assert {k: round(v * 1e3, 6) for k, v in solo_split.items() if k not in ("rank_steps", "step_s")} == \
        {"compute": 45, "comm_exposed": 0, "data_wait": 5, "sync_wait": 0, "other": 0}


def test_attribution_adds_up_to_the_gap(tmp_path):
    solo(tmp_path / "n1")
    pair(tmp_path / "n2")
    res = scaling([tmp_path / "n1", tmp_path / "n2"])
    assert res["scaling"] == "weak"
    base, two = res["series"][0]["configs"]
    assert base["throughput"]["median"] == pytest.approx(80)  # 4 samples / 50 ms
    a = two["attribution"]
    assert two["throughput"]["median"] == pytest.approx(80)  # 2 x 4 samples / 100 ms
    assert a["efficiency"]["median"] == pytest.approx(0.5)
    assert a["gap"] == pytest.approx(0.5)
    # per sample and worker: 25 ms at n=2 vs 12.5 ms; each cause's gain over 25 ms
    expected = {"compute": (16.25 - 11.25) / 25, "comm_exposed": 2.5 / 25, "data_wait": (2.5 - 1.25) / 25,
                "sync_wait": 2.5 / 25, "other": 1.25 / 25}
    assert a["causes"] == pytest.approx(expected)
    assert a["sum"] == pytest.approx(a["gap"]) and a["residual"] == pytest.approx(0, abs=1e-12)
    assert not any(a["noise"].values())  # single runs: no spread, nothing is noise


def test_strong_and_weak_detection():
    runs = lambda pairs: [{"batch_size": b, "global_batch_size": g} for b, g in pairs]  # noqa: E731
    assert detect_scaling(runs([(4, 4), (4, 8), (4, 16)])) == "weak"
    assert detect_scaling(runs([(16, 16), (8, 16), (4, 16)])) == "strong"
    assert detect_scaling(runs([(16, 16), (4, 8)])) == "mixed"


def test_strong_scaling_from_metadata(tmp_path):
    solo(tmp_path / "n1", batch=8, global_batch=8)
    pair(tmp_path / "n2", batch=4, global_batch=8)
    res = scaling([tmp_path / "n1", tmp_path / "n2"])
    assert res["scaling"] == "strong"
    assert res["series"][0]["key"] == {"global_batch_size": 8}


def test_repeats_median_min_max_and_noise(tmp_path):
    solo(tmp_path / "n1")
    for i, stretch in enumerate((1.0, 1.04, 0.96)):
        pair(tmp_path / f"n2-r{i}", stretch=stretch)
    res = scaling([tmp_path / p for p in ("n1", "n2-r0", "n2-r1", "n2-r2")])
    two = res["series"][0]["configs"][1]
    assert two["repeats"] == 3
    tp = two["throughput"]
    assert (tp["min"], tp["median"], tp["max"]) == pytest.approx((80 / 1.04, 80, 80 / 0.96))
    eff = two["attribution"]["efficiency"]
    assert (eff["min"], eff["median"], eff["max"]) == pytest.approx((0.5 / 1.04, 0.5, 0.5 / 0.96))
    noise = two["attribution"]["noise"]
    assert not noise["gap"]  # 50 points below ideal: far outside the spread
    assert not noise["compute"]  # 16.25 ms/sample vs 11.25 at n=1
    # the spread of the repeats is +-4%: a 1-rank baseline whose per-sample other time lies in that band
    assert overlaps(spread([1.0, 1.04, 0.96]), spread([1.03])) and not overlaps(spread([1.0, 1.04]), spread([1.05]))


def test_noise_against_previous_size(tmp_path):
    solo(tmp_path / "n1")
    pair(tmp_path / "n2-a", stretch=0.5)  # 160/s: linear
    pair(tmp_path / "n2-b", stretch=0.55)
    make_run(tmp_path / "n4", [PAIR[0], PAIR[1], PAIR[0], PAIR[1]], 100 * 0.53 * 2)  # 4 ranks, ~151/s
    res = scaling([tmp_path / p for p in ("n1", "n2-a", "n2-b", "n4")])
    _, two, four = res["series"][0]["configs"]
    assert four["throughput"]["median"] == pytest.approx(16 / 0.106)
    assert four["noise_vs_previous"]  # 151/s lies inside the 2-rank runs' 145-160/s
    assert two["attribution"]["noise"]["gap"]  # ideal 160/s is one of the 2-rank repeats


def test_comm_model_and_projection(tmp_path):
    solo(tmp_path / "n1")
    pair(tmp_path / "n2", hosts=["h0", "h1"])
    link = 1e8  # bytes/s
    res = scaling([tmp_path / "n1", tmp_path / "n2"], link_bytes_per_s=link, fit=[1, 2], sizes=[4])
    s = res["series"][0]
    model = s["configs"][1]["comm_model"]
    bound2 = network.link_seconds(GRAD, link * 8)
    assert model["fabric"] == "network" and model["bound_s"] == pytest.approx(bound2)
    assert model["busy_s"] == pytest.approx(0.020) and model["transfer_s"] == pytest.approx(0.010)  # busy less sync wait
    assert model["ratio"] == pytest.approx(0.010 / bound2)
    (p4,) = s["projection"]["sizes"]
    # ring bytes grow 2(n-1)/n: 1.5 x at n=4; nothing hidden at n=2, so 15 ms exposed; the rest as at n=2
    assert p4["split_s_per_step"]["comm_exposed"] == pytest.approx(0.015)
    assert p4["step_s"] == pytest.approx(0.105)
    assert p4["throughput"] == pytest.approx(16 / 0.105)
    assert p4["efficiency"] == pytest.approx(16 / 0.105 / 320)
    assert any("1 rank(s) per host" in a for a in s["projection"]["assumptions"])


def _clock_sync(run_dir, rank: int, half_rtt_ns: int) -> None:
    """Give ``rank`` a start-of-run clock estimate with this uncertainty (half its best round trip to rank 0)."""
    (path,) = run_dir.glob(f"host=*/rank={rank}/{schema.RANK_FILE}")
    meta = json.loads(path.read_text())
    meta["clock"] = {"start": {"offset_ns": 0, "uncertainty_ns": half_rtt_ns, "at_ns": T0, "rounds": 16}}
    path.write_text(json.dumps(meta))


def test_hop_latency_is_measured_by_the_clock_alignment_unless_given(tmp_path):
    solo(tmp_path / "n1")
    _clock_sync(pair(tmp_path / "n2", hosts=["h0", "h1"]), 1, 200_000)
    link = 1e8
    bound2 = network.link_seconds(GRAD, link * 8)
    measured = scaling([tmp_path / "n1", tmp_path / "n2"], link_bytes_per_s=link)["series"][0]
    assert measured["link"]["network"]["latency_s"] == pytest.approx(200e-6)
    assert measured["link"]["network"]["latency_source"].startswith("measured")
    assert measured["configs"][1]["comm_model"]["bound_s"] == pytest.approx(bound2 + 2 * 200e-6)  # 2(n-1) hops
    assert any("200 us per hop (measured" in a for a in measured["projection"]["assumptions"])
    given = scaling([tmp_path / "n1", tmp_path / "n2"], link_bytes_per_s=link, latency_s=0.0)["series"][0]
    assert given["link"]["network"]["latency_source"] == "given"
    assert given["configs"][1]["comm_model"]["bound_s"] == pytest.approx(bound2)


def test_projection_held_out_size_is_compared(tmp_path):
    solo(tmp_path / "n1")
    pair(tmp_path / "n2", hosts=["h0", "h1"])
    make_run(tmp_path / "n4", [PAIR[0], PAIR[1], PAIR[0], PAIR[1]], 105, hosts=["h0", "h1", "h2", "h3"])
    res = scaling([tmp_path / p for p in ("n1", "n2", "n4")], link_bytes_per_s=1e8, fit=[1, 2])
    rows = {p["nproc"]: p for p in res["series"][0]["projection"]["sizes"]}
    assert set(rows) == {4, 8, 16}  # the held-out size, and 2x and 4x the largest
    assert rows[4]["measured"]["median"] == pytest.approx(16 / 0.105)
    assert rows[4]["error"] == pytest.approx(0, abs=1e-9)


def _sweep(folder, rows, scaling_mode="weak"):
    folder.mkdir(parents=True, exist_ok=True)
    store.write_json_atomic(folder / "sweep.json", {"workload": "resnet50", "scaling": scaling_mode, "runs": [
        {"nproc": n, "batch_size": 4, "global_batch_size": 4 * n, "repeat": 0, "path": p, "status": st} for n, p, st in rows]})
    return folder


def test_sweep_with_a_failed_run(tmp_path, capsys):
    sw = _sweep(tmp_path / "sw", [(1, "n1", "complete"), (2, "n2", "complete"), (4, "n4", "failed")])
    solo(sw / "n1")
    pair(sw / "n2")
    assert scaling_command([str(sw)], plots="svg") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tbdprof scaling: sw/n4: run failed, left out"]
    data = json.loads((sw / "scaling.json").read_text())
    assert [c["nproc"] for c in data["series"][0]["configs"]] == [1, 2]
    assert {p.name for p in sw.glob("scaling-*.svg")} == {f"scaling-{n}.svg" for n in ("throughput", "efficiency", "split", "attribution")}


def test_one_size_is_exit_2(tmp_path, capsys):
    sw = _sweep(tmp_path / "sw", [(2, "a", "complete"), (2, "b", "complete")])
    pair(sw / "a")
    pair(sw / "b")
    assert cli.main(["scaling", str(sw)]) == 2  # a ScalingError is bad input: one line, exit code 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only one size (n=2)" in err[0]
    assert not (sw / "scaling.json").exists()


def test_nothing_readable_is_exit_2(tmp_path, capsys):
    assert cli.main(["scaling", str(tmp_path / "nope"), str(tmp_path / "gone")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no readable runs" in err[0]


def test_other_workloads_left_out_unless_forced(tmp_path):
    solo(tmp_path / "n1")
    pair(tmp_path / "n2")
    solo(tmp_path / "x1", workload="bert")
    paths = [tmp_path / p for p in ("n1", "n2", "x1")]
    res = scaling(paths)
    assert [c["nproc"] for c in res["series"][0]["configs"]] == [1, 2]
    assert any("different workloads" in p and "--force" in p for p in res["problems"])
    forced = scaling(paths, force=True)
    assert forced["series"][0]["configs"][0]["repeats"] == 2


def test_mixed_batch_settings(tmp_path):
    solo(tmp_path / "n1", batch=4, global_batch=4)
    pair(tmp_path / "n2", batch=8, global_batch=16)
    with pytest.raises(ScalingError, match="only one size"):
        scaling([tmp_path / "n1", tmp_path / "n2"])
    res = scaling([tmp_path / "n1", tmp_path / "n2"], force=True)
    assert res["scaling"] == "mixed" and len(res["series"][0]["configs"]) == 2


def test_html_is_escaped_and_self_contained(tmp_path):
    solo(tmp_path / "n1", workload="<script>alert(1)</script>")
    pair(tmp_path / "n2", workload="<script>alert(1)</script>")
    out = tmp_path / "out"
    assert scaling_command([str(tmp_path / "n1"), str(tmp_path / "n2")], out=str(out), plots="none") == 0
    page = (out / "scaling.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count("<svg") == 4 and "src=" not in page
    assert all(link.startswith("#") for link in re.findall(r'href="([^"]*)"', page))  # only the SVGs' own markers

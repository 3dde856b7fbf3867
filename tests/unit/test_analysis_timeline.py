"""Timelines are downsampled in SQL: bounded points per series, means and rates preserved."""

import pytest
from storebuilder import steps, write_rank, write_run

from tbdprof import schema
from tbdprof.analysis.load import open_run
from tbdprof.analysis.timeline import MAX_POINTS, counter_rates, metric_series, span_series

T0 = 10**18


def test_gauge_downsampled_to_bounded_points(tmp_path):
    write_run(tmp_path, 1)
    values = [i % 10 for i in range(20_000)]  # mean 4.5 in every bucket of 10 readings
    samples = [(T0 + i * 10**6, "cpu.process_pct", "", float(v)) for i, v in enumerate(values)]
    write_rank(tmp_path, samples=samples)
    run = open_run(tmp_path)
    s = metric_series(run, "cpu.process_pct")["rank 0"]
    assert len(s) <= MAX_POINTS
    assert all(v == pytest.approx(4.5) for _, v in s)
    xs = [x for x, _ in s]
    assert xs == sorted(xs) and 0 <= xs[0] and xs[-1] <= 20.0
    assert len(metric_series(run, "cpu.process_pct", max_points=50)["rank 0"]) <= 50
    assert metric_series(run, "gpu.util_pct") == {}


def test_counter_becomes_rate_per_device_and_host(tmp_path):
    write_run(tmp_path, 1)
    samples = [(T0 + i * 10**8, "net.bytes_sent", nic, float(i * k)) for i in range(5000) for nic, k in (("eth0", 100), ("lo", 7))]
    samples.append((T0 + 2500 * 10**8 + 1, "net.bytes_sent", "eth0", 0.0))  # a counter reset is not a negative rate
    write_rank(tmp_path, samples=samples, host="node-a")
    series = metric_series(open_run(tmp_path), "net.bytes_sent", max_points=100)
    assert set(series) == {"node-a eth0", "node-a lo"}
    assert len(series["node-a lo"]) <= 100
    assert all(v == pytest.approx(70.0) for _, v in series["node-a lo"])
    assert all(v >= 0 for _, v in series["node-a eth0"])


def test_counter_rates_use_steady_window(tmp_path):
    write_run(tmp_path, 1)
    # 1 MB/s during warm-up (first second), 2 MB/s afterwards
    vals = [i * 10**5 for i in range(11)] + [10**6 + i * 2 * 10**5 for i in range(1, 11)]
    samples = [(T0 + i * 10**8, "io.read_chars", "", float(v)) for i, v in enumerate(vals)]
    write_rank(tmp_path, spans=steps(20, 100), samples=samples, warmup_steps=10)
    v = counter_rates(open_run(tmp_path), ("io.read_chars",))[("h0", 0, "io.read_chars", "")]
    assert v["total"] == pytest.approx(3 * 10**6)
    assert v["per_s"] == pytest.approx(2 * 10**6)


def test_span_series_of_a_kind_or_one_name(tmp_path):
    write_run(tmp_path, 1)
    write_rank(tmp_path, spans=steps(4, 100, phases={schema.PHASE_DATA: (0, 10), schema.PHASE_FORWARD: (10, 60)}))
    run = open_run(tmp_path)
    data = span_series(run, schema.KIND_PHASE, schema.PHASE_DATA, max_points=4)["rank 0"]
    assert [round(v, 6) for _, v in data] == [0.01] * 4
    phases = span_series(run, schema.KIND_PHASE, max_points=4)["rank 0"]
    assert [round(v, 6) for _, v in phases] == [0.03] * 4  # the mean of 10 ms and 50 ms
    assert [round(v, 6) for _, v in span_series(run, schema.KIND_STEP, max_points=4)["rank 0"]] == [0.1] * 4

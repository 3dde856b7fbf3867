"""Bus bandwidth (nccl-tests definitions), link capacity parsing, interface bytes per step."""


import pytest
from storebuilder import MS, steps, write_rank, write_run

from tbdprof import schema
from tbdprof.analysis.bandwidth import collective_bandwidth, network_usage, parse_bandwidth
from tbdprof.analysis.breakdown import coverage_ns
from tbdprof.errors import UserError
from tbdprof.analysis.load import open_run

T0 = 10**18


def test_algbw_busbw_and_link_fraction(tmp_path):
    n = 4
    write_run(tmp_path, n)
    for r in range(n):
        # two 1 MB allreduces of 1 ms each per rank, plus a concurrent 0.5 ms one of 1 MB inside the first
        spans = steps(1, 100) + [
            (0, "allreduce", schema.KIND_COMM, T0 + 10 * MS, T0 + 11 * MS, 10**6, None),
            (0, "allreduce", schema.KIND_COMM, T0 + 10 * MS, T0 + 10 * MS + MS // 2, 10**6, None),
            (0, "allreduce", schema.KIND_COMM, T0 + 20 * MS, T0 + 21 * MS, 10**6, None),
        ]
        write_rank(tmp_path, r, spans=spans, world_size=n)
    bw = collective_bandwidth(open_run(tmp_path), link_bytes_per_s=2e9)
    ar = bw["collectives"]["allreduce"]
    # 3 MB over a 2 ms union of busy time per rank
    assert ar["algbw_bytes_per_s"] == pytest.approx(1.5e9)
    assert ar["bus_factor"] == pytest.approx(2 * (n - 1) / n)
    assert ar["busbw_bytes_per_s"] == pytest.approx(1.5e9 * 1.5)
    assert ar["link_fraction"] == pytest.approx(1.5e9 * 1.5 / 2e9)
    assert ar["per_rank"]["3"]["calls"] == 3
    assert collective_bandwidth(open_run(tmp_path))["collectives"]["allreduce"]["link_fraction"] is None


def test_each_collective_has_its_own_busy_time(tmp_path):
    n = 2
    write_run(tmp_path, n)
    for r in range(n):
        # an allreduce 10-12 ms and an allgather 11-13 ms: each busy 2 ms, 3 ms together
        spans = steps(1, 100) + [
            (0, schema.COMM_ALLREDUCE, schema.KIND_COMM, T0 + 10 * MS, T0 + 12 * MS, 10**6, None),
            (0, schema.COMM_ALLGATHER, schema.KIND_COMM, T0 + 11 * MS, T0 + 13 * MS, 4 * 10**6, None),
        ]
        write_rank(tmp_path, r, spans=spans, world_size=n)
    run = open_run(tmp_path)
    bw = collective_bandwidth(run)["collectives"]
    assert bw[schema.COMM_ALLREDUCE]["per_rank"]["1"]["busy_s"] == pytest.approx(0.002)
    assert bw[schema.COMM_ALLGATHER]["per_rank"]["1"]["busy_s"] == pytest.approx(0.002)
    assert bw[schema.COMM_ALLGATHER]["busbw_bytes_per_s"] == pytest.approx(2e9 * (n - 1) / n)
    assert coverage_ns(run)[1]["total"] == 3 * MS
    assert coverage_ns(run, schema.COMM_ALLGATHER)[1]["total"] == 2 * MS


@pytest.mark.parametrize("text, expected", [
    ("10Gbit", 1.25e9), ("25Gbps", 3.125e9), ("1.25GB/s", 1.25e9), ("400MiB/s", 400 * 2**20),
    ("100 Mbit/s", 12.5e6), ("12.5e9", 12.5e9), ("10Gb", 1.25e9),
])
def test_parse_bandwidth(text, expected):
    assert parse_bandwidth(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "fast", "1.2.3Gbit", "10 furlongs"])
def test_parse_bandwidth_rejects(text):
    with pytest.raises(UserError, match="cannot read"):
        parse_bandwidth(text)


def test_bytes_per_step_from_interface_counters(tmp_path):
    write_run(tmp_path, 1)
    # 10 steps of 100 ms; eth0 sends 1 MB every 100 ms
    samples = [(T0 + i * 100 * MS, "net.bytes_sent", "eth0", float(i * 10**6)) for i in range(11)]
    write_rank(tmp_path, spans=steps(10, 100), samples=samples)
    nic = network_usage(open_run(tmp_path))["h0"]["eth0"]
    assert nic["bytes_sent"] == pytest.approx(10**7)
    assert nic["sent_bytes_per_s"] == pytest.approx(10**7)
    assert nic["sent_bytes_per_step"] == pytest.approx(10**6)

"""Chrome trace export on a synthetic store: lanes for overlapping spans, filters, gzip."""

import gzip
import json

from storebuilder import MS, gauge, steps, write_rank, write_run

from tbdprof import schema
from tbdprof.analysis.export import TID_LANES, export

T0 = 10**18


def _comm(a, b):
    return (0, "allreduce", schema.KIND_COMM, T0 + a * MS, T0 + b * MS, 64, None)


def test_overlapping_comm_spans_get_lanes(tmp_path):
    write_run(tmp_path, 2)
    for r in (0, 1):
        write_rank(tmp_path, r, spans=steps(2, phases={"backward": (40, 80)}) + [_comm(50, 70), _comm(60, 90), _comm(75, 95)],
                   samples=gauge("cpu.process_pct", [1, 2, 3]) + [(T0 + i * 10**8, "net.bytes_sent", "eth0", i * 1e3) for i in range(3)],
                   world_size=2)
    out = export(tmp_path, output=tmp_path / "t.json.gz")
    events = json.load(gzip.open(out, "rt"))["traceEvents"]
    comm = [e for e in events if e["ph"] == "X" and e["cat"] == "comm" and e["pid"] == 0]
    assert [e["tid"] for e in sorted(comm, key=lambda e: e["ts"])] == [TID_LANES, TID_LANES + 1, TID_LANES]
    for tid in {e["tid"] for e in comm}:  # no partial overlap on one thread
        lane = sorted((e["ts"], e["ts"] + e["dur"]) for e in comm if e["tid"] == tid)
        assert all(a[1] <= b[0] for a, b in zip(lane, lane[1:]))
    rates = [e for e in events if e["ph"] == "C" and e["name"] == "net.bytes_sent/s"]
    assert rates and all(e["args"]["h0 eth0"] == 1e4 for e in rates)

    only = export(tmp_path, output=tmp_path / "r1.json", ranks=[1], start_s=0.15, end_s=0.2)
    events = json.loads(only.read_text())["traceEvents"]
    assert {e["pid"] for e in events} == {1}
    assert {e["args"]["step"] for e in events if e["ph"] == "X"} == {1}

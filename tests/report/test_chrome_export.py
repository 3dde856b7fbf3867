"""The Chrome Trace Event export of a real 2-rank run: format rules, and a round trip against the spans table."""

from __future__ import annotations

import gzip
import json
import numbers

import pytest

from tbdprof import cli
from tbdprof.analysis.load import open_run

REQUIRED = {"X": {"name", "ph", "ts", "dur", "pid", "tid"}, "C": {"name", "ph", "ts", "pid", "args"},
            "M": {"name", "ph", "pid", "args"}, "i": {"name", "ph", "ts", "pid", "tid", "s"}}


def _validate(doc: dict) -> list[dict]:
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    assert doc.get("displayTimeUnit") in (None, "ms", "ns")
    events = doc["traceEvents"]
    named_pids = {e["pid"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    named_tids = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    for e in events:
        assert e["ph"] in REQUIRED, e
        assert REQUIRED[e["ph"]] <= set(e), e
        assert isinstance(e["pid"], int) and isinstance(e.get("tid", 0), int)
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "process_sort_index", "thread_name")
            continue
        assert isinstance(e["ts"], numbers.Real) and e["ts"] >= 0
        assert e["pid"] in named_pids
        if e["ph"] in ("X", "i"):
            assert (e["pid"], e["tid"]) in named_tids
        if e["ph"] == "X":
            assert isinstance(e["dur"], numbers.Real) and e["dur"] >= 0
        elif e["ph"] == "i":
            assert e["s"] in ("t", "p", "g")
        else:
            assert e["args"] and all(isinstance(v, numbers.Real) for v in e["args"].values())
    return events


def test_export_round_trips_the_spans(real_run, tmp_path, capsys):
    out = tmp_path / "trace.json.gz"
    assert cli.main(["export", str(real_run), "--format", "chrome", "-o", str(out)]) == 0
    with gzip.open(out, "rt", encoding="utf-8") as f:
        events = _validate(json.load(f))
    run = open_run(real_run)
    t0 = run.t0_ns
    expected = {(r, k, n): (c, d) for r, k, n, c, d in run.sql(
        "SELECT rank, kind, name, count(*), sum(end_ns - start_ns) FROM spans GROUP BY ALL")}
    got: dict[tuple, list] = {}
    for e in events:
        if e["ph"] == "X":
            g = got.setdefault((e["pid"], e["cat"], e["name"]), [0, 0.0])
            g[0] += 1
            g[1] += e["dur"]
    assert set(got) == set(expected)
    for key, (count, dur_ns) in expected.items():
        assert got[key][0] == count, key
        assert got[key][1] == pytest.approx(dur_ns / 1e3, rel=1e-9, abs=1e-3), key
    first = min(e["ts"] for e in events if e["ph"] == "X")
    assert first >= 0 and run.sql("SELECT min(start_ns) FROM spans")[0][0] - t0 == pytest.approx(first * 1e3, abs=1)
    assert {e["pid"] for e in events if e["ph"] == "X"} == {0, 1}
    assert any(e["ph"] == "C" and e["name"] == "cpu.process_pct" for e in events)
    # phases and comm are on separate threads
    tids = {e["cat"]: e["tid"] for e in events if e["ph"] == "X"}
    assert len({tids["step"], tids["phase"], tids["comm"]}) == 3


def test_export_filters_and_plain_json(real_run, tmp_path):
    out = tmp_path / "rank1.json"
    assert cli.main(["export", str(real_run), "-o", str(out), "--ranks", "1", "--start", "0", "--end", "1e6"]) == 0
    events = _validate(json.loads(out.read_text(encoding="utf-8")))
    assert {e["pid"] for e in events} == {1}
    assert cli.main(["export", str(real_run), "-o", str(tmp_path / "none.json"), "--start", "1e6"]) == 0
    assert not [e for e in json.loads((tmp_path / "none.json").read_text())["traceEvents"] if e["ph"] != "M"]

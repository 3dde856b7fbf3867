"""Bad input: the report says what is missing and reports the rest; only an unreadable run is an error."""

import json

import pytest
from storebuilder import gauge, steps, write_rank, write_run, write_segment

from tbdprof import cli, schema
from tbdprof.analysis.html_report import render_html
from tbdprof.analysis.load import RunError, open_run
from tbdprof.analysis.report import summarize


def _run(path, world=2, ranks=(0, 1)):
    write_run(path, world, workload="w")
    for r in ranks:
        write_rank(path, r, spans=steps(5, phases={"forward": (0, 50), "backward": (50, 90)}),
                   samples=gauge("cpu.process_pct", [50] * 5), world_size=world)
    return path


def _report(path):
    run = open_run(path)
    summary = summarize(run)
    assert "<html" in render_html(run, summary)
    json.dumps(summary)
    return summary


def test_missing_rank(tmp_path):
    s = _report(_run(tmp_path / "r", ranks=(0,)))
    assert s["missing_ranks"] == [1] and not s["complete"]
    assert s["steps"] == 5 and s["throughput_samples_per_s"] > 0


def test_rank_with_no_steps(tmp_path):
    path = _run(tmp_path / "r", ranks=(0,))
    write_rank(path, 1, samples=gauge("cpu.process_pct", [10] * 3), world_size=2)
    s = _report(path)
    assert s["ranks_without_steps"] == [1]
    assert "1" not in s["breakdown"] and s["utilization"]["per_rank"]["1"]


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "future"])
def test_damaged_segment_is_listed_and_skipped(tmp_path, damage):
    path = _run(tmp_path / "r")
    seg = write_segment(path, schema.SPANS, steps(3), rank=1, seq=2, version=99 if damage == "future" else None)
    if damage == "empty":
        seg.write_bytes(b"")
    elif damage == "truncated":
        seg.write_bytes(seg.read_bytes()[: seg.stat().st_size // 2])
    elif damage == "garbage":
        seg.write_bytes(b"\x00not parquet at all" * 10)
    s = _report(path)
    assert any(seg.name in p and "rank 1" in p for p in s["problems"])
    if damage == "future":
        assert any("schema version 99" in p for p in s["problems"])
    assert s["per_rank_steps"]["1"]["steps"] == 5


def test_run_json_not_json_and_unicode_path(tmp_path):
    path = _run(tmp_path / "runs with spaces ü" / "r ☃")
    (path / schema.RUN_FILE).write_text("{not json", encoding="utf-8")
    s = _report(path)
    assert any(schema.RUN_FILE in p for p in s["problems"])
    assert s["world_size"] == 2 and s["steps"] == 5


def test_unreadable_run_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(RunError):
        open_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "nope", tmp_path / "empty"):
        for argv in (["report", str(target)], ["export", str(target)], ["compare", str(target), str(target)]):
            assert cli.main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith("tbdprof: error:") and "\n" not in err and "Traceback" not in err


def test_cli_report_on_damaged_run_exits_0(tmp_path, capsys):
    path = _run(tmp_path / "r")
    write_segment(path, schema.SPANS, steps(3), rank=0, seq=2).write_bytes(b"junk")
    assert cli.main(["report", str(path), "--link-bandwidth", "10Gbit"]) == 0
    out = capsys.readouterr().out
    assert "note: rank 0: spans-000002.parquet: unreadable" in out
    assert (path / "summary.json").is_file() and (path / "report.html").is_file()


def test_segment_damaged_past_its_footer(tmp_path, capsys):
    path = _run(tmp_path / "r")
    seg = write_segment(path, schema.SAMPLES, gauge("cpu.process_pct", range(2000)), rank=1, seq=2)
    data = bytearray(seg.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    data[4 : len(data) - footer] = b"\xff" * (len(data) - footer - 4)  # pages garbage, footer intact
    seg.write_bytes(bytes(data))
    assert cli.main(["report", str(path)]) == 0
    s = json.loads((path / "summary.json").read_text())
    assert any(seg.name in p and "data unreadable" in p for p in s["problems"])
    assert s["utilization"]["per_rank"]["1"]["cpu.process_pct"]["avg"] == 50
    assert cli.main(["export", str(path), "-o", str(tmp_path / "t.json")]) == 0
    assert "data unreadable" in capsys.readouterr().err
    assert cli.main(["export", str(path), "-o", str(tmp_path / "no such dir" / "t.json")]) == 2


def test_status_bad_input_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    for target in (tmp_path / "nope", tmp_path):
        proc = subprocess.run([sys.executable, "-m", "tbdprof", "status", str(target)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stdout == "", proc
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tbdprof: error:"), proc.stderr

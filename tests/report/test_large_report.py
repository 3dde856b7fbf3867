"""The large-job report: a 128-rank synthetic run (tests/perf/synth.py) with one slow rank (forward) and one
slow host (data wait) planted, read raw and in scale mode (from its rollups). The terminal stays within one
screen and names both as outliers with their cause; report.html shows the rank x time heatmaps, rendered in
Chromium, with both marked."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
from pathlib import Path

import pytest
from browser import inspect

from tbdprof import cli

RANKS, SLOW_RANK, SLOW_HOST = 128, 37, "node011"  # node011: ranks 88-95 at 8 ranks per host
SCREEN_LINES = 50

_spec = importlib.util.spec_from_file_location("synth", Path(__file__).parents[1] / "perf" / "synth.py")
synth = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synth)


# raw: about 100 steps per rank, every span read; rollups: six minutes read in scale mode (docs/report.md), one
# heatmap column per rank and minute
SOURCES = {"raw": 0.003, "rollups": 0.1}


@pytest.fixture(scope="module", params=sorted(SOURCES))
def large_run(request, tmp_path_factory) -> tuple[Path, str]:
    """The planted run and the terminal output of `tbdprof report --source SOURCE` on it."""
    run = synth.generate(tmp_path_factory.mktemp("large") / "r128", ranks=RANKS, hours=SOURCES[request.param],
                         slow_ranks=[SLOW_RANK], slow_hosts=[SLOW_HOST])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["report", str(run), "--source", request.param]) == 0
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["source"]["mode"] == request.param
    return run, out.getvalue()


def test_terminal_fits_one_screen_and_names_the_outliers(large_run):
    run, text = large_run
    lines = text.splitlines()
    assert len(lines) <= SCREEN_LINES, text
    ranks = lines[lines.index(next(x for x in lines if x.startswith("slowest ranks"))) + 3:]
    assert ranks[0].split()[:2] == [str(SLOW_RANK), "node004"] and "compute (forward" in ranks[0]
    assert {int(x.split()[0]) for x in ranks[1:9]} == set(range(88, 96))  # the slow host's ranks next
    hosts = lines[lines.index(next(x for x in lines if x.startswith("slowest hosts"))) + 3]
    assert hosts.split()[0] == SLOW_HOST and "data loading (data wait" in hosts
    assert "step breakdown" not in text  # no table of one row per rank
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert len(summary["breakdown"]) == RANKS and len(summary["per_rank_steps"]) == RANKS  # summary.json keeps every rank
    large = summary["rank_outliers"]
    assert large["slowest_ranks"][0]["rank"] == SLOW_RANK and large["slowest_ranks"][0]["late_by_s"] > 0.02
    assert large["slowest_hosts"][0]["host"] == SLOW_HOST and large["slowest_hosts"][0]["slow_part"] == "data_wait"
    assert large["distribution"]["step time (median)"]["max"] > 1.25 * large["distribution"]["step time (median)"]["p50"]


HEATMAPS = """[...document.querySelectorAll('figure.heatmap')].map(f => {
  const img = f.querySelector('svg image'); const r = img ? img.getBoundingClientRect() : {width: 0, height: 0};
  return {metric: f.dataset.metric, ranks: f.dataset.hotRanks, hosts: f.dataset.hotHosts, w: r.width, h: r.height,
          host_label: !!f.querySelector('[id^="heatmap-' + f.dataset.metric + '-host-"]')};
})"""


def test_html_heatmap_shows_the_slow_rank_and_host(chromium, large_run):
    run, _ = large_run
    found = inspect(chromium, run / "report.html", extra=HEATMAPS)
    assert found["errors"] == [] and found["empty_svgs"] == 0
    assert all(u.startswith(("file:", "data:")) for u in found["requests"])
    maps = {m["metric"]: m for m in found["extra"]}
    assert set(maps) == {"step", "data_wait", "comm"}
    assert all(m["w"] > 300 and m["h"] > 150 for m in maps.values()), maps
    step = maps["step"]
    assert step["ranks"].split(",")[0] == str(SLOW_RANK) and step["hosts"] == SLOW_HOST and step["host_label"]
    assert maps["data_wait"]["hosts"] == SLOW_HOST
    text = found["text"]
    assert f"Slowest ranks (of {RANKS})" in text and "compute (forward" in text
    # the per-rank tables show the outliers, not 128 rows
    assert text.count("\nrank 5\t") == 0 and f"rank {SLOW_RANK}" in text


def test_html_tables_show_the_outliers_and_their_hosts_only(large_run):
    """Past 16 ranks no table of the page has a row per rank or per host: the header counts the hosts, and the
    host, GPU and network tables keep the slowest hosts and the hosts of the slowest ranks."""
    run, _ = large_run
    html = (run / "report.html").read_text(encoding="utf-8")
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    hosts = summary["hosts"]
    assert f"{RANKS} ranks on {len(hosts)} hosts ({hosts[0]} to {hosts[-1]});" in html
    tables = re.findall(r"<table>.*?</table>", html, re.S)
    rows = [len(re.findall(r"<tr>", t)) - 1 for t in tables]
    assert max(rows) <= 2 * 12, rows  # a network row per host and interface, two interfaces
    large = summary["rank_outliers"]
    shown = {h["host"] for h in large["slowest_hosts"]} | {r["host"] for r in large["slowest_ranks"]}
    host_table = next(t for t in tables if "<th>system CPU avg</th>" in t)
    assert set(re.findall(r"<tr><td>(node\d+)</td>", host_table)) == shown and SLOW_HOST in shown
    gpu_table = next(t for t in tables if "<th>GPU util</th>" in t)
    assert {int(r) for r in re.findall(r"<tr><td>(\d+)</td>", gpu_table)} == {r["rank"] for r in large["slowest_ranks"]}

"""Coverage on hand-made stores: what rank.json declares, combined across ranks and checked against the data;
the report and diagnose open with it, and a run with a gap is never called plainly healthy."""

import json

import pytest
from storebuilder import MS, gauge, steps, write_rank, write_run

from tbdprof import schema, store
from tbdprof.analysis.coverage import run_coverage
from tbdprof.analysis.diagnose import diagnose, diagnose_command
from tbdprof.analysis.html_report import render_html
from tbdprof.analysis.load import open_run
from tbdprof.analysis.report import summarize

T0 = 10**18
PHASES = {"data_wait": (0, 5), "forward": (5, 40), "backward": (40, 90), "optimizer": (90, 98)}
ENV = {"torch_threads": 1, "cpu_logical": 8, "mem_total_bytes": 64 * 2**30, "env": {"OMP_NUM_THREADS": "1"}}
RECORDED = {"state": "recorded", "how": "optimizer steps of DistributedDataParallel(Net) by SGD"}


def comm_spans(n, step_ms=100):
    return [(i, "allreduce", schema.KIND_COMM, T0 + int((i * step_ms + 70) * MS), T0 + int((i * step_ms + 80) * MS), 1 << 20, None)
            for i in range(n)]


def nic(mib_per_tick, ticks=30, device="lo"):
    """A loopback counter moving ``mib_per_tick`` MiB every 100 ms, both ways."""
    return [row for metric in ("net.bytes_sent", "net.bytes_recv")
            for row in gauge(metric, [i * mib_per_tick * 2**20 for i in range(ticks)], device=device)]


def declare(path, rank, **items):
    """Write ``items`` ({item: {"state", "how"}}) into the rank's rank.json ``coverage``."""
    f = next(path.glob(f"host=*/rank={rank}")) / schema.RANK_FILE
    meta = store.read_json(f)
    meta[schema.COVERAGE_FILE_KEY] = meta.get(schema.COVERAGE_FILE_KEY, {}) | items
    store.write_json_atomic(f, meta)


def make(path, ranks=2, n=20, comm=True, samples=None, memory=False, run_fields=None, phases=PHASES, with_steps=None):
    write_run(path, ranks, **(run_fields or {}))
    for r in range(ranks):
        spans = steps(n, phases=phases) if (with_steps is None or r in with_steps) else []
        spans += comm_spans(n) if comm and spans else []
        mem = [(i, T0 + i * 100 * MS, "cpu", 10, 10, 10, 10, 10, 50, 60) for i in range(n)] if memory else []
        write_rank(path, r, spans=spans, samples=(samples or {}).get(r, ()), memory=mem, world_size=ranks, warmup_steps=2,
                   env=ENV, metadata={"num_workers": 2})
    return path


def states(path):
    return {item: e["state"] for item, e in run_coverage(open_run(path)).items()}


def test_old_store_is_judged_from_its_data(tmp_path):
    cov = run_coverage(open_run(make(tmp_path)))
    assert {i: e["state"] for i, e in cov.items()} == {"steps": "recorded", "phases": "recorded", "comm": "recorded",
                                                      "memory": "unknown"}
    assert "backward" in cov["phases"]["how"] and "allreduce" in cov["comm"]["how"]


def test_declared_coverage_is_combined_across_ranks(tmp_path):
    path = make(tmp_path, memory=True)
    for r in (0, 1):
        declare(path, r, steps=RECORDED, phases={"state": "recorded", "how": "module hooks"},
                comm={"state": "recorded", "how": "DDP comm hook"}, memory={"state": "recorded", "how": "watch()"})
    declare(path, 1, comm={"state": "missing", "how": "DDP model seen, the script registered its own comm hook"})
    cov = run_coverage(open_run(path))
    assert cov["steps"] == {"state": "recorded", "how": RECORDED["how"], "ranks": []}
    assert cov["comm"]["state"] == "missing" and cov["comm"]["ranks"] == [1]
    assert cov["comm"]["how"] == "rank 1: DDP model seen, the script registered its own comm hook"


def test_declared_recorded_but_nothing_in_the_store_is_missing(tmp_path):
    path = make(tmp_path, comm=False)
    for r in (0, 1):
        declare(path, r, comm={"state": "recorded", "how": "DDP comm hook"})
    cov = run_coverage(open_run(path))["comm"]
    assert cov["state"] == "missing" and "DDP comm hook" in cov["how"] and "store holds none" in cov["how"]


def test_network_traffic_without_collectives_is_missing_comm(tmp_path):
    path = make(tmp_path, comm=False, samples={0: nic(2)})
    cov = run_coverage(open_run(path))["comm"]
    assert cov["state"] == "missing" and cov["ranks"] == [0, 1]
    assert "the NICs carried" in cov["how"] and "but no collective was recorded" in cov["how"] and "host h0: lo)" in cov["how"]


@pytest.mark.parametrize("mib_per_tick, state", [(0, "unknown"), (0.01, "unknown"), (2, "missing")])
def test_background_traffic_is_not_evidence(tmp_path, mib_per_tick, state):
    assert states(make(tmp_path, comm=False, samples={0: nic(mib_per_tick)}))["comm"] == state


def test_one_rank_has_no_collectives_to_record(tmp_path):
    assert states(make(tmp_path, ranks=1, comm=False))["comm"] == "not_applicable"


def test_gaps_on_some_ranks_name_them(tmp_path):
    path = make(tmp_path, ranks=3, with_steps={0, 2}, memory=True)
    cov = run_coverage(open_run(path))
    assert cov["steps"]["state"] == "missing" and cov["steps"]["ranks"] == [1]
    assert cov["steps"]["how"].startswith("rank 1: no step recorded while ranks 0, 2")
    assert cov["phases"]["state"] == "unknown" and cov["comm"]["ranks"] == [1]


def test_steps_without_phases_is_missing_phases(tmp_path):
    cov = run_coverage(open_run(make(tmp_path, phases={})))["phases"]
    assert cov["state"] == "missing" and "no phase inside them" in cov["how"]


def test_summary_and_report_open_with_coverage(tmp_path, capsys):
    from tbdprof.analysis.report import report

    path = make(tmp_path / "r", comm=False, samples={0: nic(2)})
    declare(path, 1, comm={"state": "missing", "how": "the script registered its own comm hook"})
    report(path)
    out = capsys.readouterr().out
    summary = json.loads((path / "summary.json").read_text())
    assert set(summary["coverage"]) == set(schema.COVERAGE_ITEMS)
    assert all(set(e) == {"state", "how"} for e in summary["coverage"].values())
    assert summary["coverage"]["comm"]["state"] == "missing"
    assert "rank 1: the script registered its own comm hook" in summary["coverage"]["comm"]["how"]
    lines = out.splitlines()
    assert lines[1].startswith("coverage") and lines[2].lstrip().startswith("✓ steps")
    assert any(line.lstrip().startswith("✗ comm") and "missing:" in line for line in lines[2:6])
    page = (path / "report.html").read_text(encoding="utf-8")
    assert page.index('id="coverage"') < page.index('id="overview"') and "✗" in page


def test_diagnose_says_what_it_could_not_check(tmp_path, capsys):
    path = make(tmp_path / "r", comm=False, samples={0: nic(2)})
    found = diagnose(path)
    assert [(f.kind, f.severity) for f in found] == [("coverage", "warning")]
    ev = found[0].evidence
    assert list(ev["missing"]) == ["comm"] and "communication" in ev["could_not_check"]
    assert ev["coverage"] == {"steps": "recorded", "phases": "recorded", "comm": "missing", "memory": "unknown"}
    assert "prof.watch" in found[0].recommendation
    diagnose_command(path)
    out = capsys.readouterr().out
    text = " ".join(out.split())  # rich wraps long lines
    assert "healthy:" not in text
    assert "no bottleneck found in what was recorded; could not check: communication, imbalance (comm missing: ranks 0, 1: the NICs carried" in text
    assert out.splitlines()[1].startswith("coverage") and "✗ comm" in text
    diagnose_command(path, json_out=True)
    assert [f["kind"] for f in json.loads(capsys.readouterr().out)] == ["coverage"]


def test_fully_covered_run_is_healthy(tmp_path, capsys):
    path = make(tmp_path / "r", memory=True)
    assert diagnose(path) == []
    diagnose_command(path)
    text = capsys.readouterr().out
    assert "healthy: no bottleneck found" in text and "✗" not in text and text.count("✓") == 4


def test_memory_alone_missing_is_only_a_notice(tmp_path):
    path = make(tmp_path, memory=True)
    declare(path, 0, memory={"state": "missing", "how": "no optimizer seen"})
    (f,) = diagnose(path)
    assert (f.kind, f.severity, f.ranks, f.evidence["could_not_check"]) == ("coverage", "info", [0], [])


def test_profile_run_header_shows_the_command_and_no_steps_says_so(tmp_path, capsys):
    from tbdprof.analysis.terminal import print_summary

    path = make(tmp_path, with_steps=set(), samples={0: gauge("cpu.process_pct", [10] * 5)},
                run_fields={"launcher": "profile", "command_line": "python train.py --lr 0.1"})
    run = open_run(path)
    summary = summarize(run)
    page = render_html(run, summary)
    assert "command <code>python train.py --lr 0.1</code>" in page and "workload None" not in page
    assert "no steps recorded" in page
    print_summary(summary, path)
    out = capsys.readouterr().out
    assert "command=python train.py --lr 0.1" in out and "no steps recorded" in out and "┏" not in out.split("utilization")[0]
    assert summary["coverage"]["steps"] == {"state": "missing", "how": "ranks 0, 1: no training step recorded on any rank"}


def test_too_short_profile_run_advises_more_steps_not_the_option(tmp_path):
    found = {f.kind: f for f in diagnose(make(tmp_path / "p", n=5, run_fields={"launcher": "profile"}))}
    assert "--steps" not in found["too_short"].recommendation and "Run the script for more steps" in found["too_short"].recommendation
    found = {f.kind: f for f in diagnose(make(tmp_path / "w", n=5, run_fields={"launcher": "local"}))}
    assert "--steps" in found["too_short"].recommendation


@pytest.mark.parametrize("phases, what", [
    ({**PHASES, "backward": (30, 90)}, "overlap an earlier phase"),  # backward begins before forward ends
    ({**PHASES, "optimizer": (90, 120)}, "lie outside their step"),  # past the 100 ms step
])
def test_phases_breaking_the_recorders_invariant_are_a_gap(tmp_path, phases, what):
    cov = run_coverage(open_run(make(tmp_path, phases=phases)))
    assert cov["phases"]["state"] == "missing", cov["phases"]
    assert f"20 {what}" in cov["phases"]["how"] and "first in step 0" in cov["phases"]["how"], cov["phases"]


def test_well_formed_phases_pass_the_invariant(tmp_path):
    assert states(make(tmp_path))["phases"] == "recorded"

"""tbdprof diagnose on REAL runs with planted bottlenecks: it names the problem, the right rank, and nothing else.

Bottlenecks are planted through the runner's fault-injection options
(--data-delay-ms, --slow-rank/--slow-ms/--slow-mode), the environment
(OMP_NUM_THREADS) or a small script on the public API (scripts_diagnose/plant.py),
never through the diagnosis. This machine is shared: when other processes
load it, diagnose truthfully reports CPU contention or host memory pressure
with source "other processes"; such findings are about the machine, not the
run, and are set aside here.
"""

import json
import sys
from pathlib import Path

import pytest

from clirun import run_cli
from tbdprof.launch.execute import run_here
from tbdprof.launch.local import new_run_dir

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).parent / "scripts_diagnose" / "plant.py"


def findings(run_dir) -> dict:
    """The run's findings by kind, without contention from processes outside the run."""
    out = json.loads(run_cli("diagnose", run_dir, "--json").stdout)
    return {f["kind"]: f for f in out if f["evidence"].get("source") != "other processes"}


def train(tmp_path, run_id, *opts, workload="resnet50", nproc=2, steps=30, env=None):
    run_cli("run", workload, "--nproc", nproc, "--steps", steps, "--out", tmp_path, "--run-id", run_id, "--no-report",
            *opts, env=env)
    return tmp_path / run_id


def plant(tmp_path, run_id, *opts, nproc=2):
    run_dir = new_run_dir(tmp_path, run_id, "plant")
    assert run_here([sys.executable, str(SCRIPT), *opts], nproc, run_dir, {}) == 0
    return run_dir


@pytest.mark.parametrize("workload, nproc", [("resnet50", 1), ("resnet50", 2), ("transformer", 2), ("seq2seq", 2)])
def test_healthy_runs_have_no_finding(tmp_path, data_cache, workload, nproc):
    # One intra-op thread per rank, so the loader's worker has a core of its own. One rank alone gets both
    # cores by default, and its worker then competes with them: one clean-clone CI run waited for data 25.6 %
    # of the step (3.4 ms of 12.5, every step) with the host 98 % busy, a true input_bound at its threshold.
    run = train(tmp_path, "ok", workload=workload, nproc=nproc, env={"OMP_NUM_THREADS": "1"})
    assert findings(run) == {}


def test_slow_data_loader_is_input_bound(tmp_path, data_cache):
    found = findings(train(tmp_path, "slowdata", "--data-delay-ms", "4", "--num-workers", "1"))
    assert list(found) == ["input_bound"]
    f = found["input_bound"]
    assert f["ranks"] == [0, 1] and f["severity"] == "critical"
    assert f["evidence"]["per_rank"]["1"]["loader_workers"] == 1
    assert "latency-bound" in f["recommendation"]  # sleeping workers use no CPU


@pytest.mark.parametrize("mode", ["sleep", "burn"])
def test_slow_rank_is_a_straggler_in_compute(tmp_path, data_cache, mode):
    found = findings(train(tmp_path, mode, "--slow-rank", "1", "--slow-ms", "60", "--slow-mode", mode))
    assert list(found) == ["straggler"]
    f = found["straggler"]
    assert f["ranks"] == [1] and f["evidence"]["cause"] == "compute" and f["evidence"]["slow_phase"] == "forward"


def test_oversubscribed_threads_are_cpu_contention(tmp_path, data_cache):
    found = findings(train(tmp_path, "omp", env={"OMP_NUM_THREADS": "4"}))
    f = found.pop("cpu_contention")
    assert f["severity"] == "critical" and f["ranks"] == [0, 1] and f["evidence"]["threads_per_core"] >= 2
    # Oversubscribed ranks slow down erratically: a clean-clone CI run saw the step time rise 2.1x from step 20
    # on both ranks alike, a true slowdown. It may be reported; nothing else.
    found.pop("slowdown", None)
    assert not found


def test_leaking_loop_is_a_memory_leak(tmp_path):
    found = findings(plant(tmp_path, "leak", "--steps", "60", "--leak-mb", "4"))
    leak = found.pop("memory_leak")
    assert leak["ranks"] == [0, 1]
    # Fresh memory costs page faults: on this machine the leak's own 4 MiB a step took the median step from
    # about 22 to 45 ms in some runs (plant.py with and without --leak-mb, 3 runs each), a true slowdown, which
    # may be reported (of both ranks, or of the one whose faults cost more: a CI run named rank 0). Nothing else.
    found.pop("slowdown", None)
    assert not found
    per_step = leak["evidence"]["per_rank"]["1"]["bytes_per_step"]
    assert 3 * 2**20 < per_step < 8 * 2**20  # 4 MiB of tensors per step, plus allocator overhead


def test_uneven_batches_are_imbalance(tmp_path):
    found = findings(plant(tmp_path, "uneven", "--uneven"))
    assert list(found) == ["imbalance"] and found["imbalance"]["ranks"] == [0, 1]


@pytest.mark.parametrize("case, opts, slow_phase, others", [
    ("sleep", ["--sleep-ms", "120"], None, set()),  # between steps, outside any phase
    ("matmuls", ["--extra-matmuls", "8"], "forward", set()),
    ("loader", ["--loader-ms", "100"], "data_wait", {"input_bound"}),
])
def test_straggler_without_comm_spans(tmp_path, case, opts, slow_phase, others):
    """No prof.watch: no comm spans. The straggler is found from the per-rank phase composition, and the
    coverage finding says communication was not recorded (issue 17)."""
    found = findings(plant(tmp_path, case, "--no-watch", "--steps", "30", "--slow-rank", "1", *opts))
    s, gap = found.pop("straggler"), found.pop("coverage")
    assert set(found) == others
    assert s["ranks"] == [1] and s["evidence"]["evidence_used"] == ["per-rank phase composition"]
    assert s["evidence"]["slow_phase"] == slow_phase and s["evidence"]["others_wait_phase"] == "backward"
    if case == "sleep":
        assert s["evidence"]["slow_part"] == "outside_phases" and s["evidence"]["others_share"]["backward"] > 0.7
    assert "comm" in gap["evidence"]["missing"] and "communication" in gap["evidence"]["could_not_check"]


def test_balanced_run_without_comm_spans_has_no_straggler(tmp_path):
    run_dir = plant(tmp_path, "balanced", "--no-watch", "--steps", "30")
    assert set(findings(run_dir)) == {"coverage"}
    text = run_cli("diagnose", run_dir).stdout
    assert "healthy:" not in text and "could not check: communication" in " ".join(text.split())

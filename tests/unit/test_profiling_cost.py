"""Every recording keeps an account of what it cost (rank.json ``profiling_cost``); report shows it in one line
and diagnose warns when the profiler is a visible share of the step. The planted costly setting: the memory
breakdown on every step of a tiny step."""

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import tbdprof  # noqa: E402
from phased_loop import train_phased  # noqa: E402
from tbdprof.analysis import diagnose, report  # noqa: E402

STEPS = 30


def _model():
    torch.manual_seed(0)  # deep and tiny: many saved tensors per forward, little compute
    layers = [m for _ in range(12) for m in (torch.nn.Linear(8, 8), torch.nn.Tanh())]
    return torch.nn.Sequential(*layers, torch.nn.Linear(8, 2))


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a busy machine, OpenMP workers waiting for a core make a tiny step's time noise."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _saved_per_forward(model, x, y) -> int:
    n = [0]

    def pack(t):
        n[0] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.nn.functional.cross_entropy(model(x), y)  # the loss is outside the model's forward: not counted
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        n[0] = 0
        model(x)
    return n[0]


def _record(out: Path, memory_every: int) -> Path:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(STEPS)]
    train_phased(tbdprof.Profiler(out=out, run_id="cost", memory_every=memory_every, sample_hz=10, clock_sync=False),
                 model, opt, data)
    return out / "cost"


def test_a_costly_setting_is_accounted_reported_and_diagnosed(tmp_path):
    run = _record(tmp_path, memory_every=1)
    meta = json.loads(next(run.glob("host=*/rank=*/rank.json")).read_text())
    cost = meta["profiling_cost"]
    train = cost["training_thread"]
    # counted, not timed: every step measured, every saved tensor of the model's forward counted
    per_forward = _saved_per_forward(_model(), torch.randn(4, 8), torch.randint(0, 2, (4,)))
    assert per_forward > 0
    assert train["memory_breakdown"]["measured_steps"] == STEPS
    assert train["memory_breakdown"]["events"] == STEPS * per_forward
    assert train["steps"]["events"] == STEPS
    assert train["spans"]["events"] == STEPS * 5  # step, data_wait, forward, backward, optimizer
    assert cost["rows_written"] == sum(meta["rows_written"].values()) and cost["rows_dropped"] == 0
    assert cost["bytes_written"] > 0 and cost["threads_cpu_s"] >= 0 and cost["method"]
    assert cost["training_thread_s"] == pytest.approx(sum(e.get("s", 0) for e in train.values()))

    buf = io.StringIO()
    with redirect_stdout(buf):
        summary = report.report(run, html_report=False)
    pc = summary["profiling_cost"]
    assert set(pc) >= {"training_thread_fraction", "threads_core_fraction", "bytes_per_rank_hour", "bytes_written",
                       "rows_dropped", "largest_component", "method", "per_rank"}
    assert pc["largest_component"] == "memory_breakdown"
    assert "profiling cost: " in buf.getvalue() and "of step time on the training thread" in buf.getvalue()
    assert "of one core in its threads" in buf.getvalue() and "per hour" in buf.getvalue()
    assert json.loads((run / "summary.json").read_text())["profiling_cost"]["per_rank"]["0"]["memory_measured_steps"] == STEPS

    findings = [f for f in diagnose.diagnose(run) if f.kind == "profiler_overhead"]
    assert findings, "a memory breakdown on every step of a tiny step must be diagnosed"
    f = findings[0]
    assert f.severity in ("warning", "critical") and f.evidence["largest_component"] == "memory_breakdown"
    assert "memory_every" in f.recommendation


def test_an_unprofiled_run_reports_no_cost(tmp_path):
    with tbdprof.Profiler(out=tmp_path, run_id="off", enabled=False) as prof:
        for _ in prof.loader(range(3)):
            pass
    assert not (tmp_path / "off").exists()  # nothing recorded, nothing to account


def test_the_cost_line_reads_like_the_issue():
    from tbdprof.analysis.cost import cost_line

    line = cost_line({"training_thread_fraction": 0.003, "threads_core_fraction": 0.005,
                      "bytes_per_rank_hour": 3.4 * 2**20, "rows_dropped": 0, "per_rank": {"0": {}}})
    assert line == ("profiling cost: 0.30% of step time on the training thread, 0.50% of one core in its threads, "
                    "3.4 MiB per hour")


@pytest.fixture(scope="module")
def zero_code(tmp_path_factory):
    """A zero-code recording in this process (the hooks `tbdprof profile` installs), STEPS steps of the tiny model
    through a DataLoader; the model deep-copied and pickled once in the middle, as EMA and checkpoint code do."""
    import atexit
    import copy
    import os
    import pickle
    import sys

    from tbdprof import autoprofile

    out = tmp_path_factory.mktemp("zero-code")
    env = pytest.MonkeyPatch()
    env.setenv(autoprofile.ENV_AUTO, "1")
    env.setenv("TBDPROF_RUN_DIR", str(out))
    env.delenv(autoprofile.ENV_RANK_PID, raising=False)
    env.setattr(sys, "excepthook", sys.excepthook)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    autoprofile.TRAINED.add(opt)
    data = torch.utils.data.TensorDataset(torch.randn(4 * STEPS, 8), torch.randint(0, 2, (4 * STEPS,)))
    rec = autoprofile.AutoRecorder()
    rec.install()
    try:
        for i, (x, y) in enumerate(torch.utils.data.DataLoader(data, batch_size=4)):
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            if i == STEPS // 2:
                copied = copy.deepcopy(model)
                copied(x)  # not trained: one global-hook call, nothing recorded
                pickle.loads(pickle.dumps(model))(x)
        tracker = rec.prof._trackers[0]
        rec.close()
    finally:
        rec.remove()
        atexit.unregister(rec.close)
        os.environ.pop(autoprofile.ENV_RANK_PID, None)  # set by the recorder as it started: not this test's to keep
        env.undo()
    meta = json.loads(next(out.glob("host=*/rank=*/rank.json")).read_text())
    return meta, tracker


def test_zero_code_hooks_count_each_part_once(zero_code):
    meta, tracker = zero_code
    cost = meta["profiling_cost"]
    train = cost["training_thread"]
    hooks = train["zero_code_hooks"]
    # the model's submodules run without the global hook: one call a step, the model's own; the copies are not
    # trained, so each of their modules is a call
    copies = 2 * len(list(_model().modules()))
    assert hooks["events"] == STEPS + copies and hooks["timed_s"] > 0 and hooks["per_event_us"] >= 0
    # the hooks end the steps: the steps, their spans and the memory rows are in the hooks' time, not counted again
    assert meta["rows_written"]["spans"] == STEPS * 5  # step, data_wait, forward, backward, optimizer
    assert train["steps"]["events"] == 0 and train["spans"]["events"] == 0
    mem = train["memory_breakdown"]
    assert tracker.row_ns > 0 and mem["rows_s"] == pytest.approx(tracker.row_ns / 1e9)
    assert mem["timed_s"] == pytest.approx((tracker.timed_ns - tracker.row_ns) / 1e9)
    assert cost["training_thread_s"] == pytest.approx(sum(e.get("s", 0) for e in train.values()))

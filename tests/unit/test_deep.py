"""Deep windows (tbdprof/deep.py): the schedule, the ops table against torch.profiler's own totals, the views."""

import gzip
import json

import pytest
import torch

import tbdprof
from phased_loop import train_phased
from tbdprof import deep, schema
from tbdprof.analysis import load
from tbdprof.analysis.ops import OpsError, ops_summary


def test_schedule_depends_on_the_step_alone():
    starts = [s for s in range(40) if deep.scheduled_start(s, 10, 2)]
    assert starts == [10, 20, 30]
    assert not deep.scheduled_start(2, 2, 2)  # never inside the warm-up
    assert [s for s in range(40) if deep.scheduled_start(s, 0, 2)] == []


def test_config_checks_and_reads_the_environment(monkeypatch):
    monkeypatch.setenv(deep.ENV_DEEP_EVERY, "50")
    monkeypatch.delenv(deep.ENV_DEEP_STEPS, raising=False)
    assert deep.config(None, None) == (50, deep.DEFAULT_STEPS)
    assert deep.config(20, 3) == (20, 3)
    for bad in ((5, 5), (-1, 3), (10, 0)):
        with pytest.raises(ValueError):
            deep.config(*bad)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 10))

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


def _train(tmp_path, steps=16, **kw):
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))) for _ in range(steps)]
    prof = tbdprof.Profiler(out=tmp_path, run_id="r", flush_s=1, clock_sync=False, **kw)
    train_phased(prof, model, opt, data)
    return tmp_path / "r", prof


def test_window_ops_agree_with_key_averages(tmp_path, monkeypatch):
    seen = []
    process = deep.DeepWindows._process

    def capture(self, w):
        out = process(self, w)  # events are parsed by now: key_averages reads the same profile
        seen.append({k.key: k.self_cpu_time_total * 1e3 for k in w.prof.key_averages()})
        return out

    monkeypatch.setattr(deep.DeepWindows, "_process", capture)
    run_dir, prof = _train(tmp_path, deep_every=6, deep_steps=3)
    info = json.loads(next(run_dir.glob("host=*/rank=0/deep.json")).read_text())
    assert [(w["first"], w["last"], w["excluded"]) for w in info["windows"]] == [(6, 8, [6, 9]), (12, 14, [12, 15])]
    run = load.open_run(run_dir)
    per_name = {}
    for step, name, ns in run.sql("SELECT step, name, sum(self_ns) FROM ops GROUP BY 1, 2"):
        assert 6 <= step <= 8 or 12 <= step <= 14
        per_name[name] = per_name.get(name, 0) + ns
    torch_totals = {}
    for window in seen:
        for k, v in window.items():
            torch_totals[k] = torch_totals.get(k, 0) + v
    ours, theirs = sum(per_name.values()), sum(torch_totals.values())
    assert abs(ours - theirs) <= 0.03 * theirs
    for name in ("aten::convolution_backward", "aten::mm", "aten::addmm"):
        assert per_name[name] == pytest.approx(torch_totals[name], rel=0.03)
    # layers: forward and backward both attributed
    layers = {m for (m,) in run.sql("SELECT DISTINCT module FROM ops WHERE name = 'aten::convolution_backward'")}
    assert layers == {"conv"}
    assert {m for (m,) in run.sql("SELECT DISTINCT module FROM ops WHERE name = 'aten::addmm'")} == {"head.1"}
    # always-on views leave window steps out; the marks stay; spans_all has everything
    assert run.sql("SELECT count(*) FROM spans WHERE kind = 'step'")[0][0] == 16 - 8
    assert run.sql("SELECT count(*) FROM spans_all WHERE kind = 'step'")[0][0] == 16
    assert run.sql(f"SELECT step FROM spans WHERE name = '{schema.MARK_DEEP_WINDOW}' ORDER BY 1") == [(6,), (12,)]
    # the raw Kineto trace, with the rank in its distributed info
    trace = json.loads(gzip.open(run_dir / next(run_dir.glob("host=*")).name / "rank=0" / info["windows"][0]["trace"]).read())
    assert trace["distributedInfo"]["rank"] == 0 and trace["distributedInfo"]["world_size"] == 1
    assert any(e.get("name") == "module: conv" for e in trace["traceEvents"])
    s = ops_summary(run)
    assert s["per_rank"][0]["window_steps"] == 6
    assert s["per_rank"][0]["layers"][0]["module"] in ("conv", "head.1")


def test_no_windows_no_ops_and_one_line_error(tmp_path):
    run_dir, _ = _train(tmp_path, steps=6)
    run = load.open_run(run_dir)
    assert not run.has(schema.OPS) and run.sql("SELECT count(*) FROM ops")[0][0] == 0
    assert run.sql("SELECT count(*) FROM spans_all")[0][0] == run.sql("SELECT count(*) FROM spans")[0][0]
    with pytest.raises(OpsError, match="no deep window"):
        ops_summary(run)


# --- on demand (`tbdprof trace`): the rank side, without torch.profiler -------------------------


class _FakeProf:
    def __init__(self, run_dir):
        self.run_dir, self.rank_dir = run_dir, run_dir
        self.step_index, self.warmup_steps, self.last_step_end_ns = -1, 2, 0


def _recorder(tmp_path, every=0, steps=3):
    d = deep.DeepWindows(_FakeProf(tmp_path), None, every, steps)
    opened = []

    def start(w):
        opened.append((w.first, w.last, w.trigger, w.request.id if w.request else None))
        d.window = w

    d._start = start
    d._stop = lambda: setattr(d, "window", None)
    return d, opened


def _ask(tmp_path, d, rid, first, steps=2):
    from tbdprof import store

    store.write_json_atomic(tmp_path / schema.DEEP_REQUEST_FILE, {"id": rid, "first": first, "steps": steps})
    d.poll_request()


def test_request_opens_at_its_step_and_is_read_once(tmp_path):
    d, opened = _recorder(tmp_path)
    for s in range(5):
        d.step_ended(s)
    _ask(tmp_path, d, "a", 9)
    d.poll_request()  # the same file again: nothing new
    for s in range(5, 14):
        d.step_ended(s)
    assert opened == [(9, 10, "on_demand", "a")]
    d.poll_request()
    states = json.loads((tmp_path / schema.DEEP_FILE).read_text())["requests"]
    assert [(r["id"], r["first"], r["state"]) for r in states] == [("a", 9, "started")]


def test_request_seen_too_late_is_missed_and_one_inside_a_window_is_deferred(tmp_path):
    d, opened = _recorder(tmp_path, every=10, steps=3)
    _ask(tmp_path, d, "late", 4)
    for s in range(4, 9):  # the first step end it sees is step 4's: step 4, the request's first, has begun
        d.step_ended(s)
    d.poll_request()  # the training thread's change reaches deep.json from the watch thread
    assert json.loads((tmp_path / schema.DEEP_FILE).read_text())["requests"][0]["state"] == "missed"
    _ask(tmp_path, d, "inside", 11)  # the scheduled window holds 10-12: on-demand starts after the step carrying its stop
    for s in range(9, 20):
        d.step_ended(s)
    assert opened == [(10, 12, "schedule", None), (14, 15, "on_demand", "inside"), (20, 22, "schedule", None)]


def test_bad_requests_are_ignored():
    assert deep.parse_request({"id": "x", "first": 5, "steps": 3}) == ("x", 5, 3)
    for bad in ({}, {"id": "", "first": 5, "steps": 3}, {"id": "x", "first": True, "steps": 3},
                {"id": "x", "first": 5, "steps": 0}, {"id": "x", "first": 5, "steps": 10**6}, [1]):
        assert deep.parse_request(bad) is None


def test_trace_chooses_one_step_ahead_of_the_most_advanced_rank():
    from tbdprof.analysis.trace import MIN_MARGIN, choose_first

    now = 10**18
    st = [{"steps_done": 100, "step_s": 0.1, "status_every_s": 0.5, "updated_ns": now - 10**9},  # 1 s old: ~110 now
          {"steps_done": 104, "step_s": 0.1, "status_every_s": 0.5, "updated_ns": now}]
    first, margin = choose_first(st, now)
    assert margin == 20 and first == 110 + 20  # (2 x 0.5 s + 1 s) / 0.1 s per step
    assert choose_first(st, now, scale=2.0)[1] == 40
    slow = [{"steps_done": 3, "step_s": 30.0, "status_every_s": 2.0, "updated_ns": now}]
    assert choose_first(slow, now) == (3 + MIN_MARGIN, MIN_MARGIN)


def test_anomaly_watch_is_on_by_default_needs_consecutive_slow_steps_and_keeps_a_budget(monkeypatch):
    monkeypatch.delenv(deep.ENV_DEEP_ANOMALY, raising=False)
    assert deep.anomaly_config("", "") == (1.5, 5, deep.DEFAULT_ANOMALY_PER_HOUR) == deep.anomaly_setting(None)
    assert deep.anomaly_config("off", "") is None and deep.anomaly_setting(False) is None
    assert deep.anomaly_config("1.5x3", "") == (1.5, 3, deep.DEFAULT_ANOMALY_PER_HOUR) == deep.anomaly_setting("1.5x3")
    for bad in (("1.0x3", ""), ("2x0", ""), ("fast", ""), ("1.5x3", "0")):
        with pytest.raises(ValueError):
            deep.anomaly_config(*bad)
    monkeypatch.setenv(deep.ENV_DEEP_ANOMALY, "off")
    assert deep.anomaly_setting(None) is None and deep.anomaly_setting("2x4")[:2] == (2.0, 4)
    monkeypatch.setenv(deep.ENV_DEEP_ANOMALY, "fast")  # a bad environment: no watch, the training goes on
    assert deep.anomaly_setting(None) is None
    with pytest.raises(ValueError):
        tbdprof.Profiler(deep_anomaly="fast")  # a bad argument is the script's own error
    an = deep._Anomaly(1.5, 3, 2)
    t, fired = 0, []

    def steps(durations_ms, start):
        nonlocal t
        for i, d in enumerate(durations_ms):
            t += int(d * 1e6)
            if an.step(start + i, t, 2):
                fired.append(start + i)

    steps([10] * 30, 0)
    steps([20, 20, 10, 20, 20, 10], 30)  # two slow, one normal, two slow: never three in a row
    assert fired == []
    steps([20] * 10, 36)  # a slowdown: fires once (at its third step), not again while it lasts
    assert fired == [38]
    steps([10] * 5 + [20] * 3 + [10] * 5 + [20] * 3, 46)  # two more episodes; the budget (2 an hour) takes one
    assert fired == [38, 53] and an.over_budget == 1
    lasting = deep._Anomaly(1.5, 3, 10)  # a slowdown that lasts, with dips: one window, and it becomes the baseline
    an, fired = lasting, []
    steps([10] * 30, 200)
    steps(([20] * 9 + [10]) * 10, 230)
    assert fired == [232] and an.median_ns == 20e6, (fired, an.median_ns)
    steps([10] * 40 + [40] * 3, 330)  # back to normal long enough to re-arm (and re-baseline): a new episode fires
    assert fired == [232, 372], fired
    bytes_spent = deep._Anomaly(1.5, 3, 10)  # windows left, bytes spent: none either
    bytes_spent.wrote(deep.ANOMALY_BYTES_PER_HOUR)
    an, fired = bytes_spent, []
    steps([10] * 30 + [20] * 3, 100)
    assert fired == [] and an.over_budget == 1


def test_kernel_kinds_and_copy_bytes_from_kinetos_formats(tmp_path):
    # the GPU path itself runs in tests/gpu/test_gpu_kernels.py; here, what it reads from Kineto's records
    assert deep._kernel_kind("kernel", "ampere_sgemm_128x64_nn") == "kernel"
    assert deep._kernel_kind("gpu_memcpy", "Memcpy HtoD (Pageable -> Device)") == "memcpy"
    assert deep._kernel_kind("gpu_memset", "Memset (Device)") == "memset"
    assert deep._kernel_kind("gpu_user_annotation", "module: layer1") is None
    meta = '\n      "device": 0, "context": 1,\n      "stream": 7, "correlation": 42,\n      "bytes": 65536, "memory bandwidth (GB/s)": 3.2'
    assert deep._meta_bytes(meta) == 65536 and deep._meta_bytes("") is None
    trace = tmp_path / "t.pt.trace.json.gz"
    with gzip.open(trace, "wt") as f:
        json.dump({"traceEvents": [{"cat": "gpu_memcpy", "args": {"correlation": 42, "bytes": 512}},
                                   {"cat": "kernel", "args": {"correlation": 43}}]}, f)
    assert deep._trace_bytes(trace) == {42: 512} and deep._trace_bytes(tmp_path / "none.gz") == {}

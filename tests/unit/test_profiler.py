"""The Profiler on one process: spans, steps, loader, memory breakdown, hooks, run folders."""

import json
import time

import duckdb
import pytest
import torch
from torch import nn

import tbdprof
from phased_loop import train_phased
from tbdprof import schema


def _read(run_dir, table):
    return duckdb.sql(f"SELECT * FROM read_parquet('{run_dir}/**/{table}-*.parquet', hive_partitioning=true)")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def _batches(n=6, bs=32):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(bs, 64, generator=g), torch.randint(0, 10, (bs,), generator=g)) for _ in range(n)]


@pytest.fixture
def no_launcher(monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "TBDPROF_RUN_DIR", "TBDPROF_RUN_ID", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(v, raising=False)


def test_loader_phases_and_steps(tmp_path, no_launcher):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    prof = tbdprof.Profiler(out=tmp_path, run_id="r", flush_s=0.2, sample_hz=50)
    train_phased(prof, model, opt, _batches())
    spans = _read(tmp_path / "r", "spans")
    counts = dict(duckdb.sql("SELECT name, count(*) FROM spans GROUP BY name").fetchall())
    assert counts == {"step": 6, "data_wait": 6, "forward": 6, "backward": 6, "optimizer": 6}
    # phases nest inside their step; steps are ordered and do not overlap
    bad = duckdb.sql("""SELECT count(*) FROM spans p JOIN spans s ON p.step = s.step AND s.kind = 'step'
                        WHERE p.kind = 'phase' AND (p.start_ns < s.start_ns OR p.end_ns > s.end_ns)""").fetchall()[0][0]
    assert bad == 0
    items = duckdb.sql("SELECT list(items ORDER BY step) FROM spans WHERE kind = 'step'").fetchall()[0][0]
    assert items == [32] * 6
    meta = json.loads(next((tmp_path / "r").glob("host=*/rank=0/rank.json")).read_text())
    assert meta["status"] == "complete" and meta["steps"] == 6 and meta["rows_dropped"] == 0
    assert meta["world_size"] == 1 and meta["clock"]["start"]["offset_ns"] == 0
    del spans


def test_memory_breakdown_counts_weights_grads_state_and_activations(tmp_path, no_launcher):
    model = _model()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    prof = tbdprof.Profiler(out=tmp_path, run_id="m", flush_s=5)
    train_phased(prof, model, opt, _batches(n=3))
    rows = _read(tmp_path / "m", "memory").fetchall()
    cols = schema.TABLES[schema.MEMORY].names
    last = dict(zip(cols, rows[-1]))
    assert last["weights"] == n_params * 4
    assert last["gradients"] == n_params * 4  # measured as the optimizer starts, before zero_grad
    assert last["optimizer_state"] == n_params * 4  # one momentum buffer per parameter
    # saved for backward: the input (32x64) and the ReLU output (32x128), float32;
    # the weights addmm saves are parameters and not counted again.
    assert last["activations"] == (32 * 64 + 32 * 128) * 4
    assert last["total"] >= last["weights"] and last["peak"] >= last["total"]
    assert last["device"] == "cpu"


@pytest.mark.parametrize("driver", ["loader", "instrument"])
def test_memory_hooks_are_in_only_for_the_measured_steps(tmp_path, no_launcher, driver):
    """Between measured steps the model and its optimizer run without the breakdown's hooks, as unprofiled;
    the measured steps still get whole rows, with prof.loader and with instrument() (whose steps end inside
    the optimizer's own post-hooks, where PyTorch forbids changing them)."""
    model = _model()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    prof = tbdprof.Profiler(out=tmp_path, run_id=driver, flush_s=5, warmup_steps=0, memory_every=3)
    hooks = []
    with prof:
        if driver == "instrument":
            tbdprof.instrument(prof, model, opt)
        else:
            prof.watch(model, opt)
        base = (1, 1) if driver == "instrument" else (0, 0)  # instrument()'s own forward and step pre-hooks
        batches = _batches(n=8)
        for x, y in prof.loader(batches) if driver == "loader" else batches:
            hooks.append((len(model._forward_pre_hooks) - base[0], len(opt._optimizer_step_pre_hooks) - base[1]))
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    measured = [0, 1, 3, 6]  # up to one past warm-up, then every 3rd
    pattern = [int(s in measured) for s in range(8)]
    assert [h[0] for h in hooks] == pattern  # in for the forward of a measured step, out for the others
    if driver == "loader":  # the optimizer's are set as the step begins: with instrument(), inside its forward
        assert [h[1] for h in hooks] == pattern
    rows = [dict(zip(schema.TABLES[schema.MEMORY].names, r)) for r in _read(tmp_path / driver, "memory").fetchall()]
    assert [r["step"] for r in rows] == measured
    assert all(r["gradients"] == n_params * 4 and r["activations"] == (32 * 64 + 32 * 128) * 4 for r in rows)
    assert all(r["optimizer_state"] == n_params * 4 for r in rows)


def test_adam_state_is_two_moments_plus_step_counters(tmp_path, no_launcher):
    model = _model()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters())
    prof = tbdprof.Profiler(out=tmp_path, run_id="a", flush_s=5)
    train_phased(prof, model, opt, _batches(n=2))
    state = _read(tmp_path / "a", "memory").fetchall()[-1][schema.TABLES[schema.MEMORY].names.index("optimizer_state")]
    n_tensors = len(list(model.parameters()))
    assert state == 2 * n_params * 4 + n_tensors * 4


def test_instrument_records_phases_without_phase_blocks(tmp_path, no_launcher):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prof = tbdprof.Profiler(out=tmp_path, run_id="i", flush_s=5)
    with prof:
        tbdprof.instrument(prof, model, opt)
        for x, y in _batches(n=4):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
    rows = _read(tmp_path / "i", "spans")
    counts = dict(duckdb.sql("SELECT name, count(*) FROM rows GROUP BY name").fetchall())
    assert counts == {"step": 4, "forward": 4, "backward": 4, "optimizer": 4}
    items = duckdb.sql("SELECT list(DISTINCT items) FROM rows WHERE kind = 'step'").fetchall()[0][0]
    assert items == [32]
    order = duckdb.sql("SELECT list(name ORDER BY start_ns) FROM rows WHERE step = 1 AND kind = 'phase'").fetchall()[0][0]
    assert order == ["forward", "backward", "optimizer"]


def test_backward_passes_are_seen_while_instrumented_and_only_then(tmp_path, no_launcher):
    """Every backward pass after the model's training forward is a backward phase (a retained graph's second
    pass too, torch.autograd.grad's as well); a pass on another thread is not this thread's; removing the
    instrumentation gives torch.autograd's functions back."""
    import threading

    original = (torch.autograd.backward, torch.autograd.grad)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prof = tbdprof.Profiler(out=tmp_path, run_id="b", flush_s=5)
    with prof:
        ins = tbdprof.instrument(prof, model, opt)
        for x, y in _batches(n=2):
            loss = nn.functional.cross_entropy(model(x), y)
            other = threading.Thread(target=lambda: (torch.ones(2, requires_grad=True) * 2).sum().backward())
            other.start()
            other.join()
            loss.backward(retain_graph=True)
            torch.autograd.grad(loss, list(model.parameters())[-1])
            opt.step()
            opt.zero_grad()
        ins.remove()
    assert (torch.autograd.backward, torch.autograd.grad) == original
    rows = _read(tmp_path / "b", "spans")
    order = duckdb.sql("SELECT list(name ORDER BY start_ns) FROM rows WHERE step = 1 AND kind = 'phase'").fetchall()[0][0]
    assert order == ["forward", "backward", "backward", "optimizer"]
    assert _phases_inside_steps(rows) == []


def _phases_inside_steps(rows) -> list:
    """Phases that overlap another phase or leave their step (none, in a correct recording)."""
    return duckdb.sql(
        "WITH p AS (SELECT * FROM rows WHERE kind = 'phase'), s AS (SELECT * FROM rows WHERE kind = 'step') "
        "SELECT p.step, p.name FROM p JOIN s USING (step) WHERE p.start_ns < s.start_ns OR p.end_ns > s.end_ns "
        "UNION ALL SELECT a.step, a.name FROM p a JOIN p b ON a.step = b.step AND a.start_ns < b.start_ns "
        "AND a.end_ns > b.start_ns").fetchall()


def test_instrument_closure_accumulation_and_eval(tmp_path, no_launcher):
    """LBFGS-style closures (forward and backward inside optimizer.step), two micro-batches per step,
    a loss module, and an evaluation forward under no_grad: phases in order, never overlapping."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    prof = tbdprof.Profiler(out=tmp_path, run_id="c", flush_s=5)
    batches = _batches(n=6)
    with prof:
        tbdprof.instrument(prof, model, opt)
        for i in range(3):
            def closure():
                opt.zero_grad()
                for x, y in batches[2 * i:2 * i + 2]:
                    criterion(model(x), y).backward()
            opt.step(closure)
            with torch.no_grad():
                model(batches[0][0])  # evaluation: no phase
    rows = _read(tmp_path / "c", "spans")
    order = duckdb.sql("SELECT list(name ORDER BY start_ns) FROM rows WHERE step = 1 AND kind = 'phase'").fetchall()[0][0]
    assert order == ["forward", "backward", "forward", "backward", "optimizer"]
    assert duckdb.sql("SELECT count(*) FROM rows WHERE kind = 'step'").fetchall()[0][0] == 3
    assert _phases_inside_steps(rows) == []


def test_half_set_launcher_environment_is_completed_by_the_process_group(tmp_path, no_launcher, monkeypatch):
    """Lightning's own ddp launcher sets WORLD_SIZE without RANK: not an error once a process group says who we are."""
    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "1")
    prof = tbdprof.Profiler(out=tmp_path, run_id="pg")
    with pytest.raises(tbdprof.ranks.LaunchEnvError, match="WORLD_SIZE is set but RANK is not"):
        prof.start()  # no process group: the half-set environment is an error
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with tbdprof.Profiler(out=tmp_path, run_id="pg2") as prof:
            pass
        meta = json.loads(next((tmp_path / "pg2").glob("host=*/rank=0/rank.json")).read_text())
        assert (meta["launcher"], meta["world_size"]) == ("torch.distributed", 1)  # not "none": mp.spawn with one rank
    finally:
        dist.destroy_process_group()


def test_instrument_stays_callable(tmp_path, no_launcher):
    """Importing the hooks' module must not replace the package's ``instrument`` function with it."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prof = tbdprof.Profiler(out=tmp_path, run_id="again", enabled=False)
    first = tbdprof.instrument(prof, model, opt)
    first.remove()
    assert callable(tbdprof.instrument)
    tbdprof.instrument(prof, model, opt).remove()


def test_explicit_steps_and_user_phases(tmp_path, no_launcher):
    prof = tbdprof.Profiler(out=tmp_path, run_id="s", flush_s=5, sample_hz=20)
    with prof:
        for _ in range(3):
            with prof.step(items=8):
                with prof.phase("my_phase"):
                    time.sleep(0.01)
    rows = duckdb.sql(f"SELECT step, name, kind, (end_ns - start_ns) / 1e6 AS ms FROM read_parquet('{tmp_path}/s/**/spans-*.parquet')").fetchall()
    mine = [r for r in rows if r[1] == "my_phase"]
    assert [r[0] for r in mine] == [0, 1, 2]
    assert all(r[3] >= 9 for r in mine)


def test_comm_spans_from_the_script_carry_their_bytes(tmp_path, no_launcher):
    prof = tbdprof.Profiler(out=tmp_path, run_id="c", flush_s=5, sample_hz=20)
    with prof:
        for _ in range(2):
            with prof.step():
                with prof.comm(nbytes=4096):
                    time.sleep(0.01)
                with prof.comm("broadcast"):
                    pass
    rows = duckdb.sql(f"SELECT step, name, kind, bytes, end_ns - start_ns FROM read_parquet('{tmp_path}/c/**/spans-*.parquet') "
                      "WHERE kind = 'comm' ORDER BY step, name").fetchall()
    assert [r[:4] for r in rows] == [(s, n, "comm", b) for s in (0, 1) for n, b in (("allreduce", 4096), ("broadcast", None))]
    assert all(r[4] >= 9_000_000 for r in rows if r[1] == "allreduce")


def test_disabled_profiler_records_nothing(tmp_path, no_launcher):
    prof = tbdprof.Profiler(out=tmp_path, run_id="off", enabled=False)
    model = _model()
    train_phased(prof, model, torch.optim.SGD(model.parameters(), lr=0.1), _batches(n=2))
    assert not (tmp_path / "off").exists()
    assert prof.step_index == -1


def test_same_rank_twice_in_one_run_is_refused(tmp_path, no_launcher):
    with tbdprof.Profiler(out=tmp_path, run_id="dup", sample_hz=5):
        pass
    with pytest.raises(tbdprof.RunDirError, match="already holds"):
        tbdprof.Profiler(out=tmp_path, run_id="dup").start()


def test_run_dir_from_launcher_environment(tmp_path, no_launcher, monkeypatch):
    monkeypatch.setenv("TBDPROF_RUN_DIR", str(tmp_path / "shared"))
    with tbdprof.Profiler(out=tmp_path / "ignored", sample_hz=5) as prof:
        pass
    assert prof.run_dir == tmp_path / "shared"
    assert list((tmp_path / "shared").glob("host=*/rank=0/rank.json"))
    assert json.loads((tmp_path / "shared" / "run.json").read_text())["world_size"] == 1


def test_failure_inside_the_block_marks_the_rank_failed_and_keeps_data(tmp_path, no_launcher):
    prof = tbdprof.Profiler(out=tmp_path, run_id="f", sample_hz=5)
    with pytest.raises(RuntimeError):
        with prof:
            with prof.step(items=1):
                pass
            raise RuntimeError("training crashed")
    meta = json.loads(next((tmp_path / "f").glob("host=*/rank=0/rank.json")).read_text())
    assert meta["status"] == "failed"
    assert _read(tmp_path / "f", "spans").fetchall()

"""FSDP2 (``fully_shard``) communication spans (tbdprof/fsdp.py) on gloo ranks.

scripts/fsdp_comm.py trains a small MLP (per-layer and root ``fully_shard``)
with and without :class:`tbdprof.fsdp.FsdpComm` on 2 ranks (plain FSDP, and a
2x1 mesh: HSDP that only replicates) and on 4 ranks (HSDP, 2 replicas of 2
shards), recording the c10d calls FSDP makes as ground truth. Checked here:
one span per collective, each containing its call, with the bytes of the
documented convention; all-gathers in forward and backward of every step and
reduce-scatters (and HSDP all-reduces) in backward, adding up to the unsharded
model's parameter and gradient bytes; losses bit-identical with and without
the spans; ``resolve(force=True)`` puts FSDP's own objects back; an error in
the recording is logged once and training goes on.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tbdprof import schema

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "scripts" / "fsdp_comm.py"
STEPS = 3
ASYNC_STEP = 1000  # scripts/fsdp_comm.py records its explicit unshard(async_op=True) under this step
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
AG, RS, AR = schema.COMM_ALLGATHER, schema.COMM_REDUCE_SCATTER, schema.COMM_ALLREDUCE


def _run(out: Path, nprocs: int, meshes: str) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--nprocs", str(nprocs), "--steps", str(STEPS), "--meshes", meshes]
    proc = subprocess.run(cmd, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nprocs)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("fsdp2"), 2, "1d,2x1")


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("hsdp4"), 4, "2x2")


def _check_spans(r: dict, shards: int, hsdp: bool) -> None:
    """One rank's spans of run B, against the ground truth and the model's sizes."""
    sizes, spans, truth = r["sizes"], r["spans"], r["truth"]
    params, grads, root = sizes["params"], sizes["grads"], sizes[""]
    for step, name, kind, start, end, nbytes, items, units in spans:
        assert kind == schema.KIND_COMM and items is None and units is None and nbytes > 0
        assert 0 < start <= end, (name, start, end)
        assert name in (AG, RS, AR)

    # every collective FSDP called is one span that contains the call, with its bytes
    assert len(spans) == len(truth), (len(spans), len(truth))
    for (step, name, _k, start, end, nbytes, _i, _u), (t_name, t_start, t_end, t_bytes) in zip(
            sorted(spans, key=lambda s: s[3]), sorted(truth, key=lambda t: t[1])):
        assert (name, nbytes) == (t_name, t_bytes)
        assert start <= t_start and t_end <= end, (name, start, t_start, t_end, end)

    training = [s for s in spans if s[0] != ASYNC_STEP]
    # host-timed collectives of one thread: in the sink in the order they started, none overlapping
    assert training == sorted(training, key=lambda s: s[3])
    for prev, nxt in zip(training, training[1:]):
        assert nxt[3] >= prev[4], (prev, nxt)

    for step in range(STEPS):
        win = r["windows"][str(step)]
        (f0, f1), (b0, b1) = win["forward"], win["backward"]
        mine = [s for s in training if s[0] == step]
        assert all(f0 <= s[3] and s[4] <= b1 for s in mine), f"step {step}: a span outside the step"
        fwd = [s for s in mine if s[4] <= f1]
        bwd = [s for s in mine if s[3] >= b0]
        assert len(fwd) + len(bwd) == len(mine), f"step {step}: a span across forward and backward"
        by = {(phase, name): [s[5] for s in ss if s[1] == name] for phase, ss in (("f", fwd), ("b", bwd)) for name in (AG, RS, AR)}
        if shards > 1:
            # forward gathers every group (root first), backward all but the root, which FSDP keeps unsharded
            assert by["f", AG] == [root, sizes["l1"], sizes["l2"]], by
            assert sum(by["f", AG]) == params
            assert sorted(by["b", AG]) == sorted([sizes["l1"], sizes["l2"]]) and sum(by["b", AG]) == params - root
            assert len(by["b", RS]) == 3 and sum(by["b", RS]) == grads, by
        else:  # one shard: FSDP skips gathers and reduce-scatters
            assert not by["f", AG] and not by["b", AG] and not by["b", RS], by
        assert not by["f", RS] and not by["f", AR], "no reduction in forward"
        if hsdp:  # each group's reduce-scattered shard, all-reduced across the replicas
            assert len(by["b", AR]) == 3 and sum(by["b", AR]) == grads // shards, by
        else:
            assert not by["b", AR], by

    async_spans = [s for s in spans if s[0] == ASYNC_STEP]
    if shards > 1:
        assert [(s[1], s[5]) for s in async_spans] == [(AG, sizes["l1"])]
    else:
        assert async_spans == []


def _check_run(r: dict, hsdp: bool) -> None:
    """Everything but the spans' contents: the model seen, losses, removal, errors."""
    assert r["is_fsdp"] == [True, True, False, False]  # model, a sharded layer, a plain MLP, not a module
    assert r["groups"] == 3 and r["wrapped"] == [True] * 3
    assert r["hook_installed"] == [hsdp] * 3
    assert r["losses_b"] == r["losses_a"], "training changed under FsdpComm"
    assert r["still_wrapped"] and r["restored"], "resolve(force=True) did not give FSDP its own comm objects back"
    assert r["spans_after_remove"] == 0 and r["truth_after_remove"] > 0  # collectives went on, untimed
    assert r["warnings_b"] == []
    for key, boom in (("c", "step boom"), ("d", "sink boom")):
        assert r[f"losses_{key}"] == r["losses_a"][:STEPS]
        assert r[f"spans_{key}"] == 0
        assert len(r[f"warnings_{key}"]) == 1 and boom in r[f"warnings_{key}"][0], r[f"warnings_{key}"]


def test_fsdp_two_ranks_gathers_and_reduce_scatters(two_ranks):
    for r in two_ranks:
        _check_spans(r["1d"], shards=2, hsdp=False)


def test_fsdp_two_ranks_training_unchanged_removal_and_errors(two_ranks):
    for r in two_ranks:
        _check_run(r["1d"], hsdp=False)


def test_hsdp_replicate_only_allreduces(two_ranks):
    for r in two_ranks:
        _check_spans(r["2x1"], shards=1, hsdp=True)
        _check_run(r["2x1"], hsdp=True)


def test_hsdp_four_ranks_gathers_reduce_scatters_and_allreduces(four_ranks):
    for r in four_ranks:
        _check_spans(r["2x2"], shards=2, hsdp=True)
        _check_run(r["2x2"], hsdp=True)

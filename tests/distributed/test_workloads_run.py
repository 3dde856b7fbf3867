"""Every reference workload through `tbdprof run` on 1 and 2 ranks: phases recorded, data read from disk."""

import json
import re

import duckdb
import pytest

from clirun import run_cli
from tbdprof.workloads import registry

WORKLOADS = ["inception_v3", "seq2seq", "transformer", "faster_rcnn", "deepspeech2", "wgan", "a3c"]
FAST = ("--preset", "tiny", "--steps", 2, "--warmup", 0, "--flush-s", 1, "--sample-hz", 20, "--no-report")
# One thread per rank: on a shared 2-core machine spinning OpenMP threads make tiny steps seconds long.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def spans(run):
    return duckdb.sql(f"SELECT rank, name, kind FROM read_parquet('{run}/**/spans-*.parquet', hive_partitioning=true)").fetchall()


def read_chars_delta(run) -> float:
    """Bytes the ranks (with their loader workers) read during the run, summed over ranks."""
    rows = duckdb.sql(
        f"SELECT rank, max(value) - min(value) FROM read_parquet('{run}/**/samples-*.parquet', hive_partitioning=true) "
        "WHERE metric = 'io.read_chars' GROUP BY rank"
    ).fetchall()
    return sum(d for _, d in rows)


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_runs_profiled(name, nproc, tmp_path, data_cache):
    proc = run_cli("run", name, "--nproc", nproc, "--out", tmp_path, "--run-id", "r", *FAST, env=ONE_THREAD)
    run = tmp_path / "r"
    median = re.search(r"median ([0-9.]+) ms/step", proc.stderr)
    print(f"{name} x{nproc}: {median.group(1) if median else '?'} ms/step")
    rows = spans(run)
    assert {r for r, _, k in rows if k == "step"} == set(range(nproc))
    for rank in range(nproc):
        names = {n for r, n, _ in rows if r == rank}
        assert set(registry.get(name).phases) <= names, f"rank {rank} lacks {set(registry.get(name).phases) - names}"
        assert len({n for r, n, k in rows if r == rank and k == "step"}) == 1
    assert read_chars_delta(run) > 0
    # every step counts its samples, and its tokens or frames where that is the workload's unit
    steps = duckdb.sql(f"SELECT items, units FROM read_parquet('{run}/**/spans-*.parquet', hive_partitioning=true) "
                       "WHERE kind = 'step'").fetchall()
    assert len(steps) == 2 * nproc and all(items > 0 for items, _ in steps)
    if registry.get(name).unit != "samples":
        assert all(units and units > 0 for _, units in steps)


def test_a_data_set_in_the_wrong_format_is_one_line_exit_2(tmp_path, data_cache):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text(json.dumps({"format": "tbdprof-shards/1", "fields": {}, "samples": 0, "shard_size": 1}))
    proc = run_cli("run", "deepspeech2", "--data", tmp_path / "data", "--out", tmp_path, *FAST, check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "do not match" in errors[0]


def test_bad_batch_size_is_refused_before_launch(tmp_path):
    proc = run_cli("run", "wgan", "--batch-size", 12, "--out", tmp_path, *FAST, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["tbdprof: error: workload wgan: --batch-size 12 must be a multiple of n_critic = 5 (one real mini-batch per critic step)"]
    assert not any(tmp_path.iterdir())  # nothing launched


def _hogwild_rank(rank, store_path, out):
    import torch
    import torch.distributed as dist

    from tbdprof.workloads.a3c import ActorCritic, share_parameters

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    torch.manual_seed(rank)  # different weights, as if not yet broadcast
    net = ActorCritic(frames=1, size=20, hidden=8, actions=3)
    with torch.no_grad():
        next(net.parameters()).zero_()
    share_parameters(net)
    dist.barrier()
    if rank == 0:
        with torch.no_grad():
            net.value.bias.fill_(7.0)  # a Hogwild update by one actor-learner...
    dist.barrier()
    out[rank] = float(net.value.bias)  # ...is what every actor-learner on the host reads
    dist.destroy_process_group()


def test_a3c_actor_learners_on_a_host_share_one_model(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_hogwild_rank, args=(str(tmp_path / "store"), out), nprocs=2)
        assert dict(out) == {0: 7.0, 1: 7.0}

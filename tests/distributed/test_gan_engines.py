"""WGAN trains its two halves outside the engine's model wrapper: its gradients are
averaged through the engine (DDP's process group or Horovod) and recorded as
communication, and its second optimizer is in the memory breakdown. A3C, whose
Hogwild update has no allreduce, is refused under Horovod."""

import importlib.util

import duckdb
import pytest

from clirun import run_cli
from tbdprof.workloads import registry
from tbdprof.workloads.wgan import WGAN

STEPS = 3
ARGS = ("--preset", "tiny", "--steps", STEPS, "--warmup", 0, "--memory-every", 1, "--flush-s", 1, "--no-report")
ENGINES = ["ddp", pytest.param("horovod", marks=pytest.mark.skipif(
    importlib.util.find_spec("horovod") is None, reason="Horovod is not installed: run `make horovod`"))]


def _bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@pytest.mark.parametrize("engine", ENGINES)
def test_wgan_gradients_of_both_halves_are_averaged_and_recorded(engine, tmp_path, data_cache):
    run_cli("run", "wgan", "--engine", engine, "--nproc", 2, "--out", tmp_path, "--run-id", "g", *ARGS,
            env={"OMP_NUM_THREADS": "1"})
    gan = WGAN(**registry.get("wgan").presets["tiny"].model)
    critic, generator = _bytes(gan.critic), _bytes(gan.generator)
    spans = f"read_parquet('{tmp_path}/g/**/spans-*.parquet', hive_partitioning=true)"
    per_step = duckdb.sql(f"SELECT rank, step, sum(bytes) FROM {spans} WHERE kind = 'comm' GROUP BY ALL ORDER BY ALL").fetchall()
    # n_critic critic updates and one generator update per step, each averaged once
    assert per_step == [(r, s, gan.n_critic * critic + generator) for r in (0, 1) for s in range(STEPS)]
    memory = f"read_parquet('{tmp_path}/g/**/memory-*.parquet', hive_partitioning=true)"
    states = duckdb.sql(f"SELECT DISTINCT optimizer_state FROM {memory} WHERE step >= 1").fetchall()
    adam = 2 * (critic + generator)  # exp_avg and exp_avg_sq of both Adams
    assert states and all(adam <= s <= adam + 4096 for (s,) in states), (states, adam)


def test_a3c_under_horovod_is_one_line_exit_2(tmp_path):
    proc = run_cli("run", "a3c", "--engine", "horovod", "--nproc", 2, "--out", tmp_path, *ARGS, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "tbdprof: error: workload a3c runs with --engine ddp only: its actor-learners update weights shared in host "
        "memory, with no gradient allreduce; Horovod's DistributedOptimizer would make them synchronous"]
    assert not any(tmp_path.iterdir())

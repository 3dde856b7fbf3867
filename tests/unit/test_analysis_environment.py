"""The environment table: per-rank values, differences highlighted, rank identities not."""

from storebuilder import steps, write_rank, write_run

from tbdprof.analysis.environment import environment_table
from tbdprof.analysis.load import open_run


def test_differences_highlighted(tmp_path):
    write_run(tmp_path, 2)
    for r, omp in ((0, "1"), (1, "4")):
        write_rank(tmp_path, r, host=f"node{r}", spans=steps(2), world_size=2,
                   env={"torch": "2.13", "torch_threads": int(omp), "env": {"OMP_NUM_THREADS": omp, "RANK": str(r), "NCCL_DEBUG": "WARN"}})
    env = environment_table(open_run(tmp_path))
    rows = {row["key"]: row for row in env["rows"]}
    assert rows["OMP_NUM_THREADS"]["values"] == ["1", "4"]
    assert set(env["differences"]) == {"OMP_NUM_THREADS", "torch threads"}
    assert rows["RANK"]["values"] == ["0", "1"] and not rows["RANK"]["differs"]
    assert rows["host"]["values"] == ["node0", "node1"] and not rows["host"]["differs"]
    assert rows["NCCL_DEBUG"]["values"] == ["WARN", "WARN"]
    assert "cuda" not in rows  # nothing recorded: left out

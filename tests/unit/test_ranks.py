"""Rank and launcher detection from every launcher's environment."""

import pytest

from tbdprof.ranks import LAUNCHERS, LaunchEnvError, detect

CASES = [
    ("torchrun", {"TORCHELASTIC_RUN_ID": "j1", "RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, (3, 8, 1, 2)),
    ("horovod", {"HOROVOD_RANK": "2", "HOROVOD_SIZE": "4", "HOROVOD_LOCAL_RANK": "0", "HOROVOD_LOCAL_SIZE": "2"}, (2, 4, 0, 2)),
    ("openmpi", {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "6", "OMPI_COMM_WORLD_LOCAL_RANK": "2",
                 "OMPI_COMM_WORLD_LOCAL_SIZE": "3", "OMPI_MCA_ess_base_jobid": "77"}, (5, 6, 2, 3)),
    ("pmi", {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"}, (1, 2, 1, 2)),
    ("slurm", {"SLURM_JOB_ID": "99", "SLURM_PROCID": "7", "SLURM_NTASKS": "8", "SLURM_LOCALID": "3", "SLURM_NTASKS_PER_NODE": "4(x2)"}, (7, 8, 3, 4)),
    ("env", {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, (1, 2, 1, 2)),
]


@pytest.mark.parametrize("launcher,env,expected", CASES, ids=[c[0] for c in CASES])
def test_each_launcher(launcher, env, expected):
    info = detect(env)
    assert info.launcher == launcher
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == expected


def test_job_ids_are_recorded():
    assert detect(CASES[0][1]).job_id == "j1"
    assert detect(CASES[4][1]).job_id == "99"


def test_no_launcher_is_rank_zero_of_one():
    info = detect({})
    assert (info.rank, info.world_size, info.launcher) == (0, 1, "none")


def test_more_specific_launcher_wins():
    # horovodrun under mpirun: both sets present, Horovod's is the truth.
    env = {**CASES[2][1], "HOROVOD_RANK": "0", "HOROVOD_SIZE": "6"}
    assert detect(env).launcher == "horovod"
    # torchrun inside an srun allocation.
    env = {**CASES[4][1], **CASES[0][1]}
    assert detect(env).launcher == "torchrun"


def test_tbdprof_local_launcher_name():
    env = {"RANK": "0", "WORLD_SIZE": "2", "TBDPROF_LAUNCHER": "local"}
    assert detect(env).launcher == "local"


@pytest.mark.parametrize("env,needle", [
    ({"RANK": "1"}, "RANK is set but WORLD_SIZE is not"),
    ({"WORLD_SIZE": "4"}, "WORLD_SIZE is set but RANK is not"),
    ({"HOROVOD_RANK": "0"}, "HOROVOD_SIZE"),
    ({"SLURM_JOB_ID": "1", "SLURM_PROCID": "0"}, "SLURM_NTASKS"),
    ({"RANK": "4", "WORLD_SIZE": "4"}, "outside"),
    ({"RANK": "x", "WORLD_SIZE": "4"}, "not an integer"),
])
def test_inconsistent_environment_is_an_actionable_error(env, needle):
    with pytest.raises(LaunchEnvError, match=needle):
        detect(env)


def test_table_is_ordered_specific_first():
    names = [row.name for row in LAUNCHERS]
    assert names.index("horovod") < names.index("openmpi") < names.index("env")
    assert names.index("torchrun") < names.index("slurm")

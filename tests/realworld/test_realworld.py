"""Real users' training code under `tbdprof profile` (GitHub issue 17).

Each case runs one script of scripts/ (plain DDP, Hugging Face Trainer,
Accelerate, Lightning, Horovod, FSDP2, ...: written as their documentation
writes them, knowing nothing of tbdprof) through its real launcher, once, and
every check below compares what tbdprof recorded with the ground truth the
script printed (TBDCHECK lines). See realworld.py for the cases and checks.
"""

import pytest

import realworld as rw

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=rw.CASES, ids=[c.id for c in rw.CASES])
def run(request, tmp_path_factory):
    return rw.run_case(request.param, tmp_path_factory.mktemp(request.param.id))


def test_ranks(run):
    rw.check_ranks(run)


def test_steps(run):
    rw.check_steps(run)


def test_phases_do_not_overlap(run):
    rw.check_phases(run)


def test_comm_bytes_per_step(run):
    rw.check_comm(run)


def test_memory_weights(run):
    rw.check_memory(run)


def test_samples(run):
    rw.check_samples(run)


def test_coverage(run):
    rw.check_coverage(run)


def test_diagnosis(run):
    rw.check_diagnosis(run)

"""The multi-node testbed as a fixture: two emulated hosts, torn down whatever happens."""

from __future__ import annotations

import pytest

from tbdprof.launch import testbed

from .cluster import SKEW_NS


@pytest.fixture(scope="session")
def hosts2():
    why = testbed.unavailable()
    if why:
        pytest.skip(why)
    testbed.down()  # hosts a killed earlier session may have left
    with testbed.hosts(2, host_env={"node1": {"TBDPROF_TEST_CLOCK_SKEW_NS": str(SKEW_NS)}}) as tb:
        yield tb


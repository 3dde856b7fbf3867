"""The multi-node testbed as a fixture: two emulated hosts, torn down whatever happens."""

from __future__ import annotations

import os

import pytest

from tbdprof.launch import testbed

from .cluster import SKEW_NS


@pytest.fixture(scope="session")
def hosts2():
    why = testbed.unavailable()
    if why:
        pytest.skip(why)
    # TBDPROF_TESTBED_NAME lets two test sessions run side by side (each with its own testbed)
    name = os.environ.get("TBDPROF_TESTBED_NAME", testbed.DEFAULT_NAME)
    testbed.down(name=name)  # hosts a killed earlier session may have left
    with testbed.hosts(2, name=name, host_env={"node1": {"TBDPROF_TEST_CLOCK_SKEW_NS": str(SKEW_NS)}}) as tb:
        yield tb


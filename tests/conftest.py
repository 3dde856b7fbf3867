"""Session fixtures shared by every test folder (the CLI runner is in clirun.py)."""

import os

import pytest

# The terminal tables follow COLUMNS (analysis/terminal.py); tests read them at the default width.
os.environ.pop("COLUMNS", None)
# The default deep-window anomaly watch opens a window when steps slow down, which a loaded test machine does
# at random: tests of everything else must not depend on the load. tests/distributed/test_deep_triggers.py
# tests the watch with its defaults (it unsets this).
os.environ.setdefault("TBDPROF_DEEP_ANOMALY", "off")


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    """One generated-data cache for the whole session (TBDPROF_DATA)."""
    path = tmp_path_factory.mktemp("data")
    os.environ["TBDPROF_DATA"] = str(path)
    return path

"""Session fixtures shared by every test folder (the CLI runner is in clirun.py)."""

import os

import pytest

# The terminal tables follow COLUMNS (analysis/terminal.py); tests read them at the default width.
os.environ.pop("COLUMNS", None)


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    """One generated-data cache for the whole session (TBDPROF_DATA)."""
    path = tmp_path_factory.mktemp("data")
    os.environ["TBDPROF_DATA"] = str(path)
    return path

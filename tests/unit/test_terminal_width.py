"""Terminal tables (report, diagnose, compare, scaling) follow COLUMNS, else a fixed width off a terminal."""

import io

from tbdprof.analysis.terminal import console, table


def _widest(con) -> int:
    con.print(table("t", ["name", "value"], [["a" * 200, "1"]]))
    return max(len(line) for line in con.file.getvalue().splitlines())


def test_columns_sets_the_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "70")
    assert _widest(console(io.StringIO())) == 70


def test_off_a_terminal_the_width_is_fixed(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert _widest(console(io.StringIO())) == 120
    assert _widest(console(io.StringIO(), width=160)) == 160


def test_nonsense_columns_are_ignored(monkeypatch):
    for value in ("abc", "5", ""):
        monkeypatch.setenv("COLUMNS", value)
        assert console(io.StringIO()).width == 120

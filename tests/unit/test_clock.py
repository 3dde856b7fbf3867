"""Clock-offset arithmetic (the distributed estimate is tested in tests/distributed)."""

import pytest

from tbdprof.clock import best_of, offset_at


def test_best_of_uses_the_shortest_round_trip():
    # remote clock is 1000 ns ahead; the slow exchange is biased by queueing
    exchanges = [(0, 1500 + 900, 1000 + 2000), (10_000, 11_000 + 50, 10_100)]
    offset, unc = best_of(exchanges)
    assert unc == 50
    assert offset == 11_050 - 10_050


def test_best_of_symmetric_delay_recovers_exact_offset():
    skew = -3_000_000
    # local sends at t, arrives after d at remote (clock t + d - skew... remote = local - skew)
    exchanges = [(t, t + 200 - skew, t + 400) for t in (0, 5000, 9000)]
    assert best_of(exchanges) == (-skew, 200)


def test_best_of_needs_data():
    with pytest.raises(ValueError):
        best_of([])


def test_offset_is_linear_between_estimates():
    start = {"offset_ns": 1000, "at_ns": 0}
    end = {"offset_ns": 3000, "at_ns": 1000}
    assert offset_at(start, end, 500) == pytest.approx(2000)
    assert offset_at(start, end, 2000) == pytest.approx(5000)  # extrapolates the drift
    assert offset_at(start, None, 123) == 1000
    assert offset_at(None, end, 0) == 3000
    assert offset_at(None, None, 0) == 0

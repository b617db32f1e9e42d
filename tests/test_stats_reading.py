"""bnprivacy.stats and bnprivacy.reading: intervals and their readings."""

import math

from bnprivacy.reading import NO_INTERVAL, fmt_bounds, fmt_interval

# --- fmt_bounds (added for chapter 5, whose prose states the value and its bounds apart) ---------


def test_fmt_bounds_prints_the_bounds_alone():
    assert fmt_bounds(0.274, 0.618) == "[+0.274, +0.618]"
    assert fmt_bounds(-0.0049, 0.0049, digits=2, signed=False) == "[-0.00, 0.00]"
    assert fmt_bounds(0.021, 0.452, digits=1, scale=100, signed=False) == "[2.1, 45.2]"


def test_fmt_bounds_without_an_interval_says_so():
    assert fmt_bounds(float("nan"), 1.0) == NO_INTERVAL
    assert fmt_bounds(0.0, None) == NO_INTERVAL


def test_fmt_interval_is_the_value_then_fmt_bounds():
    assert fmt_interval(0.5, 0.25, 0.75, digits=2, signed=False) == "0.50 " + fmt_bounds(0.25, 0.75, digits=2,
                                                                                           signed=False)
    assert fmt_interval(0.5, math.nan, math.nan, digits=2) == "+0.50"

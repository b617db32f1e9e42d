"""Intervals and their readings: one implementation each (stats.py, reading.py)."""

import math

import pytest

from bnprivacy import reading, stats


def test_t_interval_matches_the_closed_form():
    # values 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653
    t = stats.t_interval([1.0, 2.0, 3.0])
    assert t["mean"] == 2.0 and t["hi"] - 2.0 == pytest.approx(4.302653 / math.sqrt(3), abs=1e-6)
    assert math.isnan(stats.t_interval([5.0])["lo"]) and stats.t_interval([]).get("n") == 0
    with pytest.raises(ValueError, match="level"):
        stats.t_interval([1, 2], level=1.5)


def test_bootstrap_ratio_of_constant_samples_is_exact():
    r = stats.bootstrap_mean_ratio([2.0, 2.0, 2.0], [1.0, 1.0], n_boot=50)
    assert r["ratio"] == r["lo"] == r["hi"] == 2.0
    with pytest.raises(ValueError, match="at least one value"):
        stats.bootstrap_mean_ratio([], [1.0])


@pytest.mark.parametrize("lo, hi, words", [(0.1, 0.2, "more"), (-0.2, -0.1, "less"),
                                           (-0.1, 0.1, "no clear difference"), (float("nan"), 1.0, "no interval")])
def test_judge_reads_an_interval(lo, hi, words):
    assert reading.judge(lo, hi, "more", "less") == words


def test_fmt_interval_and_sentence():
    assert reading.fmt_interval(0.4462, 0.2741, 0.6183) == "+0.446 [+0.274, +0.618]"
    assert reading.fmt_interval(0.05, 0.01, 0.09, scale=100, digits=1, unit=" points") == "+5.0 points [+1.0, +9.0]"
    assert reading.fmt_interval(0.5, float("nan"), float("nan"), signed=False) == "0.500"
    text = reading.sentence("At equal epochs", "BN − none", 0.3, 0.1, 0.5, "95% t over 3 seeds",
                            higher="BN higher", lower="BN lower")
    assert text.endswith("the interval excludes zero: **BN higher**.")
    assert reading.not_comparable("none did not fit") == "not comparable: none did not fit"

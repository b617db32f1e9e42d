"""bnprivacy.stats and bnprivacy.reading: intervals and their readings (one implementation each)."""

import math

import numpy as np
import pytest

from bnprivacy import reading, stats
from bnprivacy.reading import NO_INTERVAL, fmt_bounds, fmt_interval


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
                                           (-0.1, 0.1, "inconclusive"), (float("nan"), 1.0, "no interval")])
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


# --- tests of a difference: Holm, TOST, the four readings, and their null ------------------------

def test_holm_matches_its_closed_form_and_leaves_non_tests_out():
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005, float("nan")])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, made monotone: 0.02, 0.03, 0.06, 0.06
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[4])
    assert stats.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    assert np.isnan(stats.holm([float("nan")])).all()


def test_the_p_values_read_the_interval_they_come_from():
    from scipy import stats as scipy_stats

    differences = np.array([0.12, 0.05, 0.09, 0.02, 0.07])
    t = stats.t_interval(differences)
    se = stats.standard_error(t["lo"], t["hi"], 4)
    assert se == pytest.approx(differences.std(ddof=1) / np.sqrt(5))
    assert stats.difference_p(t["mean"], se, 4) == pytest.approx(scipy_stats.ttest_1samp(differences, 0).pvalue)
    # TOST: the larger of the two one-sided p-values against the margins
    lower = scipy_stats.ttest_1samp(differences, -0.1, alternative="greater").pvalue
    upper = scipy_stats.ttest_1samp(differences, 0.1, alternative="less").pvalue
    assert stats.equivalence_p(t["mean"], se, 4, 0.1) == pytest.approx(max(lower, upper))
    assert np.isnan(stats.difference_p(0.1, float("nan"), 4))


@pytest.mark.parametrize("diff, p, p_eq, words", [(0.2, 0.01, 0.9, "BN higher"), (-0.2, 0.01, 0.9, "BN lower"),
                                                  (0.001, 0.8, 0.01, "equivalent within ±0.05"),
                                                  (0.1, 0.2, 0.3, "inconclusive"),
                                                  (0.1, float("nan"), float("nan"), "inconclusive")])
def test_decide_gives_exactly_one_of_four_readings(diff, p, p_eq, words):
    assert reading.decide(diff, p, p_eq, 0.05) == words


@pytest.mark.parametrize("margin", [0, -1, float("nan"), float("inf"), "0.1", True])
def test_a_margin_that_is_not_a_positive_number_is_refused(margin):
    with pytest.raises(ValueError, match="finite number > 0"):
        stats.check_margin("margins['auc']", margin)


@pytest.mark.parametrize("seeds", [3, 5])
def test_on_a_null_the_readings_claim_a_difference_or_an_equivalence_at_their_level(seeds):
    """No signal (per-seed differences with mean 0): "BN higher/lower" in about 5% of rows, and
    with the true difference exactly at the margin, "equivalent" in at most 5%."""
    rng = np.random.default_rng(0)
    rows = 4000

    def readings(mean, margin):
        out = []
        for differences in rng.normal(mean, 1.0, (rows, seeds)):
            t = stats.t_interval(differences)
            se = stats.standard_error(t["lo"], t["hi"], seeds - 1)
            out.append(reading.decide(t["mean"], stats.difference_p(t["mean"], se, seeds - 1),
                                      stats.equivalence_p(t["mean"], se, seeds - 1, margin), margin))
        return np.array(out)

    null = readings(0.0, 0.5)
    false_difference = np.isin(null, ["BN higher", "BN lower"]).mean()
    assert 0.035 < false_difference < 0.065  # binomial sd at 4,000 rows is 0.0034
    at_margin = readings(0.5, 0.5)
    assert (at_margin == "equivalent within ±0.5").mean() < 0.065


def test_a_signed_number_keeps_three_digits_but_never_more_than_four_decimals():
    from bnprivacy.htmlcheck import number_problems

    assert [reading.fmt_signed(v) for v in (-0.2, 0.12, 4.987, -0.009375, 0.00001)] == [
        "-0.2", "+0.12", "+4.99", "-0.0094", "+0.0000"]
    # the HTML check would flag the three-digit form of the small one (the CIFAR-10-LT verdict page did)
    assert number_problems(f"{-0.009375:+.3g}") and not number_problems(reading.fmt_signed(-0.009375))

"""Headline comparisons: recorded by the chapters, read back by the verdict chapter."""

import math

import pytest

from bnprivacy import headlines


def test_paired_headline_is_the_seed_paired_t_interval():
    row = headlines.paired_headline("acc", "simulation", [0.9, 0.8, 0.7], [0.5, 0.6, 0.4], "BN better")
    assert row["batch"] == pytest.approx(0.8) and row["ref"] == pytest.approx(0.5)
    # differences 0.4, 0.2, 0.3: mean 0.3, sd 0.1, t(0.975, 2) = 4.3027
    assert row["diff"] == pytest.approx(0.3)
    assert row["lo"] == pytest.approx(0.3 - 4.302653 * 0.1 / math.sqrt(3), abs=1e-5)
    assert row["interval"] == "95% t-interval over 3 seeds"


def test_record_and_load_round_trip_in_chapter_order():
    rows = [headlines.headline_row("AUC", "simulation", 0.6, 0.5, 0.1, 0.05, 0.15, "bootstrap", "BN worse")]
    headlines.record("04_x", "smoke", rows, dataset="digits", arch="cnn")
    headlines.record("02_x", "smoke", [dict(rows[0], setting="matched fit")], dataset="digits", arch="cnn")
    table = headlines.load("smoke", ["02_x", "04_x"])
    assert list(table["chapter"]) == ["02_x", "04_x"]
    assert list(table["setting"]) == ["matched fit", "simulation"]
    assert table.loc[1, "diff"] == pytest.approx(0.1) and table.loc[1, "profile"] == "smoke"


def test_missing_chapters_are_named_with_the_command_that_makes_them():
    with pytest.raises(FileNotFoundError, match=r"chapters \['03_y'\].*make chapter CH=03_y PROFILE=quick"):
        headlines.load("quick", ["03_y"])


def test_bad_rows_are_refused():
    with pytest.raises(ValueError, match="setting 'same epochs'"):
        headlines.headline_row("AUC", "same epochs", 0.6, 0.5, 0.1, 0.0, 0.2, "x", "y")
    with pytest.raises(ValueError, match="one per seed"):
        headlines.paired_headline("acc", "simulation", [1, 2, 3], [1, 2], "y")
    with pytest.raises(ValueError, match="no headline rows"):
        headlines.record("01", "quick", [], dataset="d", arch="a")


@pytest.mark.parametrize("lo, hi, reading", [(0.1, 0.2, "BN higher"), (-0.2, -0.1, "BN lower"),
                                             (-0.1, 0.1, "no clear difference"),
                                             (float("nan"), float("nan"), "no interval")])
def test_judge_reads_the_interval(lo, hi, reading):
    assert headlines.judge(lo, hi) == reading

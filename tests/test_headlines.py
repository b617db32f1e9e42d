"""Headline comparisons: recorded by the chapters, read back by the verdict chapter."""

import math
import re

import pytest

from bnprivacy import headlines
from bnprivacy.reading import judge


def test_paired_headline_is_the_seed_paired_t_interval():
    row = headlines.paired_headline("acc", "simulation", [0.9, 0.8, 0.7], [0.5, 0.6, 0.4], "BN better", margin=0.05)
    assert row["batch"] == pytest.approx(0.8) and row["ref"] == pytest.approx(0.5)
    # differences 0.4, 0.2, 0.3: mean 0.3, sd 0.1, t(0.975, 2) = 4.3027
    assert row["diff"] == pytest.approx(0.3)
    assert row["lo"] == pytest.approx(0.3 - 4.302653 * 0.1 / math.sqrt(3), abs=1e-5)
    assert row["interval"] == "95% Student-t interval over 3 seeds (2 df)"
    # the tests read the same t distribution: p of "no difference" is the paired t-test's
    from scipy import stats
    assert row["p"] == pytest.approx(stats.ttest_1samp([0.4, 0.2, 0.3], 0).pvalue)


def test_record_and_load_round_trip_in_chapter_order():
    rows = [headlines.headline_row("AUC", "simulation", 0.6, 0.5, 0.1, 0.05, 0.15, "bootstrap", "BN worse",
                                   margin=0.01, df=math.inf)]
    headlines.record_rows("04_x", "smoke", rows, dataset="digits", arch="cnn")
    headlines.record_rows("02_x", "smoke", [dict(rows[0], setting="matched fit")], dataset="digits", arch="cnn")
    table = headlines.load("smoke", ["02_x", "04_x"])
    assert list(table["chapter"]) == ["02_x", "04_x"]
    assert list(table["setting"]) == ["matched fit", "simulation"]
    assert table.loc[1, "diff"] == pytest.approx(0.1) and table.loc[1, "profile"] == "smoke"
    # each file holds the reading adjusted across both chapters' rows (Holm over 2 tests)
    import json
    stored = json.loads((headlines.headline_folder("smoke") / "04_x.json").read_text())[0]
    assert stored["p_holm"] == pytest.approx(min(1.0, 2 * stored["p"])) and stored["reading"] == "BN higher"


def test_missing_chapters_are_named_with_the_command_that_makes_them():
    with pytest.raises(FileNotFoundError, match=r"chapters \['03_y'\].*make chapter CH=03_y PROFILE=quick"):
        headlines.load("quick", ["03_y"])


def test_bad_rows_are_refused():
    with pytest.raises(ValueError, match="setting 'same epochs'"):
        headlines.headline_row("AUC", "same epochs", 0.6, 0.5, 0.1, 0.0, 0.2, "x", "y", margin=0.01, df=2)
    with pytest.raises(ValueError, match="one per seed"):
        headlines.paired_headline("acc", "simulation", [1, 2, 3], [1, 2], "y", margin=0.01)
    with pytest.raises(ValueError, match="margin of 'AUC'=0 is not allowed"):
        headlines.headline_row("AUC", "simulation", 0.6, 0.5, 0.1, 0.0, 0.2, "x", "y", margin=0, df=2)
    with pytest.raises(ValueError, match="no headline rows"):
        headlines.record_rows("01", "quick", [], dataset="d", arch="a")


@pytest.mark.parametrize("lo, hi, reading", [(0.1, 0.2, "BN higher"), (-0.2, -0.1, "BN lower"),
                                             (-0.1, 0.1, "inconclusive"),
                                             (float("nan"), float("nan"), "no interval")])
def test_judge_reads_the_interval(lo, hi, reading):
    assert judge(lo, hi) == reading


def _row(diff, lo, hi, *, margin=0.05, df=4, comparable=True, resolution="", **extra):
    row = headlines.headline_row("m", "simulation", 0.5 + diff, 0.5, diff, lo, hi, "x", "y", margin=margin, df=df)
    return {**row, "comparable": comparable, "resolution": resolution, "chapter": "02_x", "reference": "none",
            **extra}


def test_adjust_gives_exactly_one_of_four_readings_with_holm_across_the_rows_that_are_evidence():
    import pandas as pd

    rows = pd.DataFrame([_row(0.3, 0.2, 0.4), _row(-0.3, -0.4, -0.2), _row(0.0, -0.01, 0.01),
                         _row(0.0, -0.5, 0.5), _row(0.3, 0.2, 0.4, comparable=False, reason="none did not fit"),
                         _row(0.3, 0.2, 0.4, resolution="not resolved: within the null spread")])
    rows["reason"] = rows["reason"].fillna("")
    table = headlines.adjust(rows)
    assert list(table.reading[:4]) == ["BN higher", "BN lower", "equivalent within ±0.05", "inconclusive"]
    assert table.reading[4] == "not comparable: none did not fit"
    assert table.reading[5].startswith("not resolved")
    # Holm over the 4 rows that are evidence only
    tested = table.p[:4].to_numpy()
    order = tested.argsort()
    assert table.p_holm[order[0]] == pytest.approx(min(1, 4 * tested[order[0]]))
    assert math.isnan(table.p_holm[4]) and math.isnan(table.p_holm[5])


def test_a_row_significant_alone_can_be_inconclusive_after_holm():
    import pandas as pd

    single = headlines.adjust(pd.DataFrame([_row(0.1, 0.001, 0.199)]))
    assert single.reading[0] == "BN higher"
    many = headlines.adjust(pd.DataFrame([_row(0.1, 0.001, 0.199)] * 5))
    assert set(many.reading) == {"inconclusive"}


@pytest.mark.parametrize("value", ["false", "true", None, 0, "yes"])
def test_only_a_real_true_is_comparable(value):
    import pandas as pd

    table = headlines.adjust(pd.DataFrame([_row(0.3, 0.2, 0.4, comparable=value, reason="")]))
    assert table.reading[0].startswith("not comparable")


def test_rows_recorded_before_margins_get_tests_from_their_interval_and_never_read_equivalent():
    old = {"chapter": "02_x", "measure": "m", "setting": "matched fit", "batch": 0.5, "ref": 0.5, "diff": 0.0,
           "lo": -0.001, "hi": 0.001, "interval": "95% t-interval over 3 seeds", "comparable": True, "reason": "",
           "epochs_bn": 10, "epochs_ref": 40}
    row = headlines.upgraded(dict(old))
    assert row["df"] == 2 and math.isnan(row["margin"]) and math.isnan(row["p_equivalence"])
    assert row["runs"] == "batch@10 vs none@40"
    import pandas as pd

    twice = headlines.merge_same_runs(pd.DataFrame([row, headlines.upgraded(dict(old, setting="matched accuracy"))]))
    assert list(twice.setting) == ["matched fit = matched accuracy"]
    assert headlines.adjust(twice).reading[0] == "inconclusive"
    assert headlines.from_previous_protocol(twice)


# Characters that make shown text read otherwise than what it holds: a bidi override, a C1
# control (CSI), zero-width space and joiner, a byte-order mark; and the C0 controls refused before.
HIDDEN = {"U+202E": "\u202e", "U+009B": "\u009b", "U+200B": "\u200b", "U+200D": "\u200d", "U+FEFF": "\ufeff",
          "U+000A": "\n", "U+007F": "\x7f"}


@pytest.mark.parametrize("code", HIDDEN)
def test_a_headline_row_with_a_control_or_invisible_character_is_refused_naming_it(code):
    row = _row(0.3, 0.2, 0.4, chapter="02_x", reason="", measure=f"canary{HIDDEN[code]} memorization")
    message = f"row 0 field 'measure' is not one line of visible text: character 6 is {code} "
    with pytest.raises(headlines.RowError, match=re.escape(message)):
        headlines.check_rows([row])


def test_visible_text_of_any_script_passes_the_text_check():
    for text in ("BN − reference", "Maß ≥ 0.5", "канарейки", "正規化", "a $\\foo{$ b"):
        headlines.check_text(text, "x")

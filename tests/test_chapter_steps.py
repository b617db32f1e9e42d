"""The chapters' step functions on one tiny family trained once (digits, a few models): headline
rows carry the comparability fields, a side that did not fit is read "not comparable" everywhere,
and the verdict reads no row from such a side."""

import numpy as np
import pandas as pd
import pytest

from bnprivacy import attacks, headlines
from bnprivacy.protocol.comparisons import FIELDS, SETTINGS, compare, Comparison
from bnprivacy.protocol.measures import measure_table, read_comparison
from bnprivacy.analysis import canary_steps
from bnprivacy.analysis import influence as influence_steps
from bnprivacy.analysis import membership as attack_steps
from bnprivacy.analysis import family_steps
from bnprivacy.analysis import verdict as verdict_steps

MEMORIZATION_MARGINS = family_steps.margins(canary_steps.MARGINS, {})

PARAMETERS = dict(dataset="digits", arch="cnn", width=8, widths=[1.0], train_size=240, imbalance=1.0, norms=["batch", "group", "none"],
                  canaries="noise:3,mislabeled:3", canary_references=7, n_models=6, seeds=2, budgets=[1, 30],
                  equal_epochs=1, lr=0.1, lr_grid=[1.0], agc_grid=[], fit_threshold=0.9, batch_size=16, weight_decay=5e-4,
                  label_smoothing=0.0, augment="auto", probe_points=3, probe_typical=4, probe_models=1, precision="auto", device="cpu")


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("BNPRIVACY_RESULTS", str(tmp_path_factory.mktemp("family") / "results"))
    try:
        yield family_steps.train_family(family_steps.protocol_from(PARAMETERS), progress=False)
    finally:
        monkeypatch.undo()


def test_the_family_validates_its_parameters_before_training(isolated_store):
    with pytest.raises(ValueError, match="strictly increasing"):
        family_steps.protocol_from({**PARAMETERS, "budgets": [10, 1]})
    with pytest.raises(ValueError, match="must hold 'batch'"):
        family_steps.protocol_from({**PARAMETERS, "norms": []})
    with pytest.raises(ValueError, match="does not define the family parameters"):
        family_steps.protocol_from({k: v for k, v in PARAMETERS.items() if k != "budgets"})
    assert family_steps.protocol_from({**PARAMETERS, "norms": ["none", "batch"]}).reference == "none"
    assert family_steps.as_list("norms", "batch") == ["batch"]
    assert not (isolated_store / "results").exists()


def test_the_tiny_family_is_comparable_against_group_norm_only_where_both_fit(family):
    sides = family.sweep.sides().set_index(["norm", "budget"])
    assert not sides.loc[("batch", 1), "fit"]
    # BN against GroupNorm, the first reference; both fit only at 30 epochs, so equal epochs where
    # both fit and matched fit read the same runs and are one comparison
    equal, fit, interpolated, loss = family.primary()
    assert family.protocol.reference == "group" and equal.reference == "group"
    # and BN against each reference: the same settings against none, after GroupNorm's
    assert [c.reference for c in family.comparisons] == ["group"] * 4 + ["none"] * 4
    assert [c.settings for c in family.comparisons[4:]] == [c.settings for c in family.primary()]
    assert family.comparison("matched fit", "none").runs.endswith("none@30")
    assert not equal.comparable and "did not" in equal.reason
    assert fit.setting == "equal epochs, both fit = matched fit" and fit.runs == "batch@30 vs group@30"
    assert fit.comparable == (fit.train_acc_bn >= 0.9 and fit.train_acc_ref >= 0.9 and fit.test_acc_ref >= 0.15)
    assert fit.comparable, f"the tiny family should fit at 30 epochs with BN and GroupNorm: {fam_sides(family)}"
    assert family.comparison("matched fit") is fit and family.comparison("equal epochs, both fit") is fit
    assert not interpolated.comparable and "a frontier needs at least 2 fitting points" in interpolated.reason
    assert not loss.comparable and loss.setting == "matched training loss, interpolated"


def fam_sides(family):
    return family.sweep.sides()[["norm", "budget", "train_acc", "test_acc"]].to_dict("records")


def test_canary_rows_carry_comparability_and_read_not_comparable_where_a_side_did_not_fit(family):
    result = canary_steps.compare_memorization(family, MEMORIZATION_MARGINS)
    assert len(result.rows) == len(family.comparisons) * len(canary_steps.measured_keys(False))
    assert "rare" not in result.values  # a balanced pool has no rare classes to read
    assert {part for r in result.rows for part in r["setting"].split(" = ")} == set(SETTINGS)
    for row in result.rows:
        assert set(FIELDS) <= set(row)
    equal = [r for r in result.rows if r["setting"] == "equal epochs"][0]
    assert equal["comparable"] is False
    assert {r["reference"] for r in result.rows} == {"group", "none"}
    assert result.tables["canaries"].loc["equal epochs, vs group", "reading"].startswith("not comparable")
    assert "not comparable" in result.sentences[("equal epochs", "group")]
    frontier = result.sentences[("matched accuracy, interpolated", "group")]  # one fitting budget per norm: no frontier
    assert "there is nothing to measure" in frontier and "nan" not in frontier
    # the measure is the mean memorization of the canaries, recomputed here from one run
    run = family.run("batch", 30, 0)
    correct = (run.logits_pool[:, 0].argmax(-1) == run.y_pool).numpy()
    masks = run.masks.numpy()
    canary = np.array([k != "typical" for k in run.kinds])
    mem = [correct[masks[:, i], i].mean() - correct[~masks[:, i], i].mean() for i in np.flatnonzero(canary)]
    value = result.values["canaries"].query("norm == 'batch' and budget == 30 and seed == 0").value.item()
    assert value == pytest.approx(np.mean(mem))


def rare_third(run) -> np.ndarray:
    """The typical samples of the three classes with the fewest typical samples in the pool, by hand."""
    labels, typical = run.y_pool.numpy(), np.array([k == "typical" for k in run.kinds])
    counts = {c: int(np.sum(labels[typical] == c)) for c in np.unique(labels[typical])}
    rare = sorted(counts, key=lambda c: (-counts[c], c))[-3:]
    return typical & np.isin(labels, rare)


def test_a_long_tailed_family_compares_the_memorization_of_its_rare_classes(family):
    # The tiny family's pool is balanced up to chance; asked to read it as long-tailed, its three
    # smallest classes stand in for the rare ones.
    result = canary_steps.compare_memorization(family, MEMORIZATION_MARGINS, long_tailed=True)
    rare_rows = [r for r in result.rows if r["measure"] == "rare-class memorization"]
    assert len(rare_rows) == len(family.comparisons)
    assert all(r["claim_sign"] == 1 and r["margin"] == 0.05 for r in rare_rows)
    run = family.run("group", 30, 1)
    correct = (run.logits_pool[:, 0].argmax(-1) == run.y_pool).numpy()
    masks = run.masks.numpy()
    mem = [correct[masks[:, i], i].mean() - correct[~masks[:, i], i].mean() for i in np.flatnonzero(rare_third(run))]
    value = result.values["rare"].query("norm == 'group' and budget == 30 and seed == 1").value.item()
    assert value == pytest.approx(np.nanmean(mem))
    fit = family.comparison("matched fit")
    assert "rare classes' samples" in canary_steps.rare_sentence(result, fit, MEMORIZATION_MARGINS)
    assert "not comparable" in canary_steps.rare_sentence(result, family.comparison("equal epochs"), MEMORIZATION_MARGINS)


def test_against_a_reference_that_never_fits_every_fair_row_is_not_comparable(family):
    versus_none = compare(family.sweep, "none")
    assert not family.sweep.sides().query("norm == 'none'").fit.any()  # IN accuracy about 0.74 at 30 epochs
    assert not any(c.comparable for c in versus_none)
    values = measure_table(family.sweep, canary_steps.mean_memorization)
    rows = headlines.headline_rows(values, versus_none, "canary memorization", "BN memorizes more", margin=0.05)
    table = headlines.adjust(pd.DataFrame([dict(r, chapter="02_canaries", dataset="digits", arch="cnn", profile="t")
                                           for r in rows]))
    assert all(r.startswith("not comparable:") for r in table.reading)
    assert all("none did not" in r or "none fits at 0" in r for r in table.reading)
    text = verdict_steps.conclusion(table)
    assert "No fair comparison is readable" in text and "BN memorizes more" not in text


def test_gradient_ratios_come_from_the_probes_of_members(family):
    result = influence_steps.compare_ratios(family, {k: m for k, (m, _) in influence_steps.MARGINS.items()})
    assert {r["measure"] for r in result.rows} == set(influence_steps.RATIOS.values())
    run = family.run("none", 30, 1)
    probes = influence_steps.member_probes(run)
    assert probes.member.all() and set(probes.group) == {"canary", "typical"}
    # without normalisation the leave-one-out influence equals the own gradient (no coupling)
    ratio = influence_steps.ratios(probes)["loo / own (canaries)"]
    assert ratio.to_numpy() == pytest.approx(1.0, rel=1e-3)


def test_attack_rows_pool_the_targets_of_each_run_and_say_what_they_cannot_resolve(family):
    targets = attack_steps.check_targets(6, 6)
    calibration = attack_steps.calibrate_family(family, targets, draws=2)
    assert calibration.attack in attacks.HEADLINE_PREFERENCE
    assert set(calibration.table.attack) == set(attacks.HEADLINE_PREFERENCE) and calibration.table.draw.nunique() == 2
    result = attack_steps.compare_attacks(family, targets, calibration, family_steps.margins(attack_steps.MARGINS, {}))
    value = result.values["auc"].query("norm == 'group' and budget == 30 and seed == 0").value.item()
    metrics = attack_steps.run_metrics(family.run("group", 30, 0), calibration.attack, targets)
    assert value == pytest.approx(metrics["auc"]) and 0 <= value <= 1
    # About 6 x 125 pooled non-members: no TPR at 1% FPR (needs 1,000), never a number in its place.
    assert metrics["nonmembers"] < 1000 and np.isnan(metrics["tpr@0.01"])
    tpr_rows = [r for r in result.rows if r["measure"].endswith("TPR at 1% FPR") and r["comparable"]]
    assert tpr_rows and all(r["resolution"].startswith("not resolvable with") for r in tpr_rows)
    readings = headlines.readings(pd.DataFrame(result.rows))
    assert not any(r in ("BN higher", "BN lower") for r, row in zip(readings, result.rows) if row["resolution"])
    assert all(r.startswith(("BN higher", "BN lower", "equivalent within", "inconclusive", "not "))
               for r in readings)
    with pytest.raises(ValueError, match="n_targets=7"):
        attack_steps.check_targets(7, 6)
    with pytest.raises(ValueError, match="null_draws=1"):
        attack_steps.check_draws(1)


def test_a_long_tailed_family_reads_the_attack_on_its_rare_classes_against_their_own_null(family):
    targets = attack_steps.check_targets(6, 6)
    calibration = attack_steps.calibrate_family(family, targets, draws=2)
    margins = family_steps.margins(attack_steps.MARGINS, {})
    result = attack_steps.compare_attacks(family, targets, calibration, margins, long_tailed=True)
    rare_rows = [r for r in result.rows if r["measure"].endswith("AUC on rare classes")]
    assert len(rare_rows) == len(family.comparisons)
    # the rare classes' AUC, by hand from the attack's scores of one run
    run = family.run("batch", 30, 0)
    scores = np.asarray(attacks.attack_scores(attacks.AttackInput.from_run(run), calibration.attack, targets))
    rare = rare_third(run)
    members = np.asarray(run.masks[targets])
    expected = attacks.summarize(scores[:, rare].ravel(), members[:, rare].ravel())["auc"]
    value = result.values[attack_steps.RARE].query("norm == 'batch' and budget == 30 and seed == 0").value.item()
    assert value == pytest.approx(expected)
    # its null is read on the rare samples alone: fewer pooled samples than the whole pool's, near chance
    null = attack_steps.calibrate_rare_classes(family, targets, calibration)
    assert set(null.table.attack) == {calibration.attack}
    assert (null.table.members + null.table.nonmembers == len(targets) * int(rare.sum())).all()
    assert abs(null.table.auc.mean() - 0.5) < 0.05
    resolvable = [r for r in rare_rows if r["comparable"]]
    assert resolvable and all(r["resolution"] == "" or r["resolution"].startswith("not resolved") for r in resolvable)
    assert "AUC on rare classes" in result.sentences[(family.comparison("matched fit").setting, "group")]


def test_attack_tables_name_their_metrics_in_words():
    table = pd.DataFrame({"attack": ["LiRA online"], "norm": ["batch"], "auc": [0.61], "auc_lo": [0.6], "auc_hi": [0.62],
                          "tpr@0.01": [0.02], "tpr@0.01_lo": [0.01], "tpr@0.01_hi": [0.03], "nonmembers": [5000],
                          "null auc mean": [0.5], "null auc std": [0.01]})
    shown = attack_steps.in_words(attack_steps.interval_table(table, columns=("auc", "tpr@0.01")))
    assert list(shown.columns) == ["AUC", "null AUC", "TPR at 1% FPR"]
    assert shown.iloc[0]["AUC"].startswith("0.610 [0.600, 0.620]")


def test_a_difference_within_the_null_spread_reads_not_resolved():
    # Null AUCs of the headline attack: sd 0.01 on each side, 2 seeds -> spread 2 * sqrt(2e-4 / 2) = 0.02.
    rows = [{"attack": "lira_online", "norm": norm, "budget": 10, "seed": seed, "draw": draw,
             "auc": 0.5 + (0.01 if draw else -0.01) * (1 if seed else -1), "tpr@0.01": 0.01,
             "members": 1000, "nonmembers": 1000}
            for norm in ("batch", "none") for seed in (0, 1) for draw in (0, 1)]
    table = pd.DataFrame(rows)
    calibration = attack_steps.Calibration(table, attacks.null_summary(table), "lira_online")
    c = Comparison("matched fit", "none", 10, 10, 0.1, 0.1, 1.0, 1.0, 0.9, 0.9, True, True, True, "",
                            pairs=((10, 10),))
    spread = attack_steps.null_spread(calibration, c, "auc")
    assert spread == pytest.approx(2 * np.sqrt((table.auc[:4].var() + table.auc[4:].var()) / 2))
    rule = attack_steps.resolution_rule(calibration, "auc", nonmembers=20000)
    assert rule(c, {"diff": 0.5 * spread}).startswith("not resolved")
    assert rule(c, {"diff": 2 * spread}) == ""
    d = {"diff": 0.02, "lo": 0.01, "hi": 0.03, "df": 1}
    assert read_comparison(c, d, 0.01, resolution=rule(c, {"diff": 0.5 * spread})).startswith("not resolved")
    assert attack_steps.resolution_rule(calibration, "tpr@0.001", nonmembers=9999)(c, {"diff": 1.0}).startswith(
        "not resolvable with 9,999 non-members")
    # A TPR's words are in the percentage points its sentence prints, not in fractions.
    tpr_rule = attack_steps.resolution_rule(calibration, "tpr@0.01", nonmembers=20000)
    assert tpr_rule(c, {"diff": 0.0}) == "not resolved: +0.0000 points is within the null spread ±0.0000 points"


def test_the_verdict_concludes_from_the_fair_rows_and_names_the_excluded_ones(family):
    rows = canary_steps.compare_memorization(family, MEMORIZATION_MARGINS).rows
    table = headlines.adjust(pd.DataFrame([dict(r, chapter="02_canaries", dataset="digits", arch="cnn", profile="t")
                                           for r in rows]))
    text = verdict_steps.conclusion(table)
    assert "fair comparisons that are evidence" in text
    assert "equal-epochs setting is **not comparable**" in text
    shown, basis = verdict_steps.shown_table(table), verdict_steps.basis_table(table)
    assert list(basis["runs"])[:2] == ["batch@1 vs group@1", "batch@30 vs group@30"]
    assert list(basis["setting"]) == list(shown["setting"])  # one row of each table per headline row
    assert set(shown["reading"]) <= {"BN higher", "BN lower", "equivalent within ±margin", "inconclusive",
                                     "not comparable"}


def test_a_measure_reads_robustly_only_when_its_fair_readings_agree():
    def group(readings):
        return pd.DataFrame({"reading": readings})

    assert verdict_steps.robust_reading(group(["BN higher", "BN higher"])) == "BN higher"
    assert verdict_steps.robust_reading(group(["equivalent within ±0.01", "equivalent within ±0.01"])) == \
        "equivalent within ±margin"
    assert verdict_steps.robust_reading(group(["BN lower", "inconclusive"])) == "mixed"


def _rows(readings, *, chapter="04_membership_inference", setting="matched fit", signs=None):
    return pd.DataFrame({"chapter": chapter, "measure": [f"m{i}" for i in range(len(readings))],
                         "setting": setting, "reading": readings, "comparable": True, "resolution": "",
                         "margin": 0.01, "claim_sign": signs or [1] * len(readings)})


def test_the_overall_sentence_counts_every_settings_fair_evidence_and_names_where_the_claim_stands():
    settings = {"quick": _rows(["BN higher", "BN lower", "inconclusive", "BN lower"], signs=[1, -1, 1, 0]),
                "cifar": _rows(["BN lower", "equivalent within ±0.01"]),
                "old": _rows(["inconclusive"], setting="equal epochs")}
    sentence = verdict_steps.overall_sentence(settings)
    # quick: BN higher where the claim says higher and lower where it says lower (epochs to memorize)
    # both go the claim's way; the sign-0 row (typical-sample memorization) is not a test of it
    assert sentence == ("Across 3 settings, of the 5 fair comparisons of memorization and membership inference "
                        "that are evidence, 2 go the way the claim predicts (BN memorizes or leaks more), 1 the "
                        "other way, 1 are equivalent within their margin and 1 are inconclusive (Holm-adjusted "
                        "within each setting, 5% family-wise), so the claim that BN amplifies them is supported on "
                        "quick; contradicted on cifar; not tested on old.")
    assert verdict_steps.claim_status(_rows(["inconclusive", "equivalent within ±0.01"])) == "not resolved"
    assert verdict_steps.claim_status(_rows(["BN higher", "BN lower"])) == "mixed"
    assert verdict_steps.claim_status(_rows(["BN lower"], signs=[0])) == "not tested"
    assert verdict_steps.overall_sentence({}).startswith("No setting has recorded a headline")


def test_a_count_names_comparisons_that_stand_for_two_settings():
    table = pd.DataFrame({"setting": ["equal epochs = equal epochs, both fit", "matched fit"],
                          "reading": ["BN higher", "not comparable: none did not fit"]})
    assert verdict_steps.count_text(table) == ("2 comparisons (1 of them standing for two settings that read the "
                                               "same runs): 1 BN higher, 1 not comparable")


@pytest.mark.parametrize("given, message", [({"auc": 0}, "margins\\['auc'\\]=0 is not allowed"),
                                            ({"auc": -0.01}, "a finite number > 0"),
                                            ({"auc": "wide"}, "a finite number > 0"),
                                            ({"accuracy": 1.0}, "not measures of this chapter"),
                                            ([0.01], "a mapping of measure to margin")])
def test_a_chapters_margins_are_checked_before_anything_runs(given, message):
    with pytest.raises(ValueError, match=message):
        family_steps.margins(attack_steps.MARGINS, given)
    assert family_steps.margins(attack_steps.MARGINS, {"auc": 0.02})["auc"] == 0.02
    stated = {m: attack_steps.MARGINS[m] for m in attack_steps.measured_keys(False)}  # as chapter 04 on a balanced pool
    words = family_steps.margins_markdown(stated, {"auc": 0.02, "tpr@0.01": 0.005, "tpr@0.001": 0.001},
                                          attack_steps.METRICS)
    assert "- AUC: ±0.02 (set by the reader with -p margins)" in words


def test_the_rate_ablation_gives_a_share_only_of_a_resolved_chosen_rate_difference():
    from bnprivacy.analysis.membership import _share

    resolved = {"diff": 0.02, "lo": 0.01, "hi": 0.03}
    assert _share(0.01, resolved, "both at BN's rate") == "50%"
    assert _share(0.01, {"diff": 0.02, "lo": -0.01, "hi": 0.05}, "both at BN's rate") == "n/a (not resolved)"
    assert _share(0.02, resolved, "chosen rates") == "(reference row)"

"""Chapter 6's steps (``analysis.mitigation``) at smoke size, and their guard on constructed sides."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from bnprivacy.analysis import mitigation
from bnprivacy.analysis.mitigation import BN, GN, dp_label
from bnprivacy.config import Config
from bnprivacy.protocol.comparisons import FIELDS as COMPARABILITY

# Tiny digits runs: 4 settings (BN, GN, DP at ε=∞ and ε=8) of 6 models each (the fewest that leave
# every sample two OUT references for the offline attack), one epoch: nothing trains, so every
# comparison of the run itself is "not comparable"; the comparable path is tested on constructed sides.
PLAN = mitigation.Plan(Config(dataset="digits", arch="cnn", width=4, epochs=1, batch_size=16, lr=0.05,
                              train_size=64, canaries="noise:2,mislabeled:2", seed=0, device="cpu"),
                       n_models=6, epsilons=[8.0], dp_batch_size=16, n_boot=20)


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """Every step of the chapter, once for the module, in a store of its own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BNPRIVACY_RESULTS", str(tmp_path_factory.mktemp("results")))
        patch.setenv("BNPRIVACY_DATA", str(tmp_path_factory.mktemp("data")))
        told = tmp_path_factory.mktemp("progress") / "06.log"
        patch.setenv("BNPRIVACY_PROGRESS", str(told))
        setup = mitigation.prepare(PLAN)
        trained = mitigation.train(setup, progress=False)
        summary = mitigation.summarize(setup, trained)
        found = mitigation.effects(setup, trained, summary)
        return {"setup": setup, "trained": trained, "summary": summary, "found": found,
                "headline": mitigation.headline_rows(setup, summary, found),
                "audit": mitigation.audit(setup, trained), "told": told.read_text().splitlines()}


def test_the_reader_is_told_the_plan_then_each_setting_as_it_trains(steps):
    told = steps["told"]
    assert told[0].startswith("settings of the mitigation: 4 runs to train: 24 models, ")
    trained = [line for line in told[1:] if line.startswith("settings of the mitigation: run ")]
    assert [line.split(" trained ")[0][-3:] for line in trained] == ["1/4", "2/4", "3/4", "4/4"]
    assert "(BN, no DP)" in trained[0] and "training done in" in trained[-1]


def side(norm, train_acc, test_acc, budget=2, lr=0.05):
    """A constructed side of a comparison, as ``protocol.comparisons.side`` returns it."""
    return pd.Series({"norm": norm, "budget": budget, "lr": lr, "train_acc": train_acc, "test_acc": test_acc})


# --- the plan -------------------------------------------------------------------------------------

def test_the_plan_has_every_setting_in_order_and_infinity_always():
    assert list(PLAN.specs()) == [BN, GN, dp_label(math.inf), dp_label(8.0)]
    assert dp_label(math.inf) == "GN, DP-SGD ε=∞" and dp_label(8.0) == "GN, DP-SGD ε=8"
    plan = mitigation.Plan(PLAN.base, 4, [1.0, 8.0, 4.0, 8.0])
    assert plan.budgets == [8.0, 4.0, 1.0]
    assert list(mitigation.effect_pairs(plan)) == [
        "GroupNorm alone (BN → GN)", "DP recipe, no noise (GN → GN ε=∞)", "DP-SGD (GN → GN ε=8)",
        "DP-SGD (GN → GN ε=4)", "DP-SGD (GN → GN ε=1)", "both (BN → GN ε=8)"]


@pytest.mark.parametrize("field, value, message", [("epsilons", [0.0], "epsilon=0.0"),
                                                   ("epsilons", [], "epsilons=\\[\\]"),
                                                   ("attack", "lira", "attack='lira'"),
                                                   ("confidence", 1.5, "confidence=1.5"),
                                                   ("confidence", "high", "confidence='high'"),
                                                   ("n_models", 7, "n_models=7 .*even"),
                                                   ("n_boot", 0, "n_boot=0"),
                                                   ("fit_threshold", float("nan"), "fit_threshold=nan"),
                                                   ("chance_factor", 0.5, "chance_factor=0.5"),
                                                   ("epsilons", ["x"], "epsilon='x'"),
                                                   ("epsilons", [1e30], "epsilon=1e\\+30 .*<= 100"),
                                                   ("max_grad_norm", math.inf, "max_grad_norm=inf .*finite"),
                                                   ("max_grad_norm", float("nan"), "max_grad_norm=nan"),
                                                   ("dp_batch_size", 0, "dp_batch_size=0 .*integer >= 1"),
                                                   ("dp_batch_size", 2.5, "dp_batch_size=2.5"),
                                                   ("dp_batch_size", True, "dp_batch_size=True"),
                                                   ("dp_lr", float("nan"), "dp_lr=nan .*finite number > 0"),
                                                   ("dp_lr", math.inf, "dp_lr=inf"),
                                                   ("dp_lr", 0, "dp_lr=0"),
                                                   ("delta", float("nan"), "delta=nan .*\\[0, 1\\)"),
                                                   ("delta", 1.0, "delta=1.0"),
                                                   ("delta", "1e-5", "delta='1e-5'"),
                                                   ("accountant", "gdp", "accountant='gdp' .*rdp, prv"),
                                                   ("max_physical_batch", 0, "max_physical_batch=0 .*integer >= 1"),
                                                   ("max_physical_batch", 64.0, "max_physical_batch=64.0"),
                                                   ("n_boot", 2.0, "n_boot=2.0")])
def test_a_bad_plan_fails_naming_its_parameter(field, value, message):
    arguments = {"n_models": 4, "epsilons": [1.0], field: value}
    with pytest.raises(ValueError, match=message):
        mitigation.Plan(PLAN.base, **arguments)


def test_a_plan_needs_a_config():
    with pytest.raises(ValueError, match="base='digits' is not allowed; allowed values: a bnprivacy Config"):
        mitigation.Plan("digits", 4, [1.0])


def test_an_epsilon_out_of_reach_fails_in_prepare_before_any_training(isolated_store):
    # The case: ε = 0.001 used to train BN, GN and DP at ∞ before the DP run found it infeasible.
    plan = dataclasses.replace(PLAN, epsilons=(0.001,))
    with pytest.raises(ValueError, match=r"DP run at epsilon=0.001 cannot train model 0 \(\d+ training samples, "
                                         r"batch_size=16, epochs=1\): epsilon=0.001 is out of reach with the rdp "
                                         r"accountant at delta=.*Raise epsilon"):
        mitigation.prepare(plan)
    assert not (isolated_store / "results" / "runs").exists()


def test_a_single_epsilon_may_be_given_as_a_number():
    assert mitigation.Plan(PLAN.base, 4, 8).budgets == [8.0]


def test_numbers_with_known_answers():
    # BN at AUC 0.8 has an advantage of 0.3 over guessing; 0.65 removes half of it.
    assert mitigation.advantage_removed(0.8, 0.65) == pytest.approx(50.0)
    assert mitigation.advantage_removed(0.8, 0.5) == pytest.approx(100.0)
    assert math.isnan(mitigation.advantage_removed(0.5, 0.5))
    assert mitigation.plot_x(math.inf, [8.0, 1.0]) == 16.0 and mitigation.plot_x(4.0, [8.0, 1.0]) == 4.0


# --- the guard on constructed sides ---------------------------------------------------------------

def test_a_side_that_did_not_fit_makes_the_change_not_comparable_and_its_reading_says_so():
    comparison = mitigation.guard_change(PLAN, side(BN, 0.80, 0.90), side(GN, 1.0, 0.92), num_classes=10,
                                         after_is_dp=False)
    assert comparison.setting == "equal epochs"
    assert not comparison.comparable and not comparison.fit_bn and comparison.fit_ref
    assert "BN, no DP did not fit" in comparison.reason
    change = mitigation.Effect(BN, GN, comparison, auc=(0.2, 0.1, 0.3), tpr=(0.1, 0.05, 0.2),
                               canary_mem=(0.3, 0.2, 0.4), accuracy=(0.0, -0.01, 0.01))
    assert change.reading("auc") == f"not comparable: {comparison.reason}"
    assert change.guard() == f"not comparable: {comparison.reason}"
    assert change.phrase("canary_mem") == "+0.300 [+0.200, +0.400]"  # no reading: not evidence


def test_a_dp_reference_that_does_not_fit_is_comparable_under_mitigation_as_long_as_it_trained():
    fitting_bn = side(BN, 1.0, 0.95)
    comparison = mitigation.guard_change(PLAN, fitting_bn, side(dp_label(1.0), 0.40, 0.60), num_classes=10,
                                         after_is_dp=True)
    assert comparison.setting == "mitigation" and comparison.comparable and not comparison.fit_ref
    change = mitigation.Effect(BN, dp_label(1.0), comparison, auc=(0.2, 0.1, 0.3), tpr=(0.1, 0.05, 0.2),
                               canary_mem=(0.0, -0.1, 0.1), accuracy=(-0.3, -0.4, -0.2))
    assert change.reading("auc") == "less risk after the change"
    assert change.reading("canary_mem") == "inconclusive"
    assert change.reading("accuracy") == "accuracy loss"
    assert change.guard() == "comparable"
    assert change.phrase("accuracy") == "-30.000 points [-40.000, -20.000] (accuracy loss)"
    # Below 1.5x chance (0.15 with 10 classes) the DP side did not train: not comparable.
    untrained = mitigation.guard_change(PLAN, fitting_bn, side(dp_label(1.0), 0.12, 0.12), num_classes=10,
                                        after_is_dp=True)
    assert not untrained.comparable and "did not train" in untrained.reason


# --- the steps at smoke size ----------------------------------------------------------------------

def test_prepare_finds_the_noise_of_every_dp_model_and_training_uses_it(steps):
    from bnprivacy.privacy.accounting import steps_per_epoch

    setup, trained = steps["setup"], steps["trained"]
    noise = setup.noise.set_index(["setting", "model"])
    assert set(noise.index.get_level_values("setting")) == set(setup.dp_settings)
    per_epoch = [steps_per_epoch(n, PLAN.dp_batch_size) for n in noise["n"]]
    assert noise["sample_rate"].tolist() == [1 / k for k in per_epoch]
    assert noise["steps"].tolist() == [k * PLAN.base.epochs for k in per_epoch]
    assert noise.loc[dp_label(math.inf), "noise_multiplier"].eq(0).all()
    assert noise.loc[dp_label(8.0), "noise_multiplier"].gt(0).all()
    assert setup.delta == noise["delta"].max()
    for label in setup.dp_settings:
        privacy = trained.privacy[label].set_index("model")
        assert privacy["noise_multiplier"].tolist() == noise.loc[label, "noise_multiplier"].tolist()
        assert privacy["sample_rate"].tolist() == noise.loc[label, "sample_rate"].tolist()


def test_the_summary_has_a_row_per_setting_with_numbers_that_have_known_answers(steps):
    setup, trained, summary = steps["setup"], steps["trained"], steps["summary"]
    assert list(summary.table.index) == setup.settings == list(summary.shown.index)
    pool = len(setup.data.y_train)
    # Balanced masks: every sample is OUT for half of the attacked models.
    assert summary.numbers["non_members"] == PLAN.n_models * pool // 2
    assert summary.numbers["pairs"] == PLAN.n_models * pool
    assert summary.numbers["fp_at_01"] == pytest.approx(summary.numbers["non_members"] * 0.001)
    accuracy = trained.runs[GN].final_accuracy()["test_acc"]
    assert summary.table.loc[GN, "test acc"] == pytest.approx(accuracy.mean())
    assert math.isinf(summary.table.loc[BN, "accountant ε"])
    assert 0 < summary.table.loc[dp_label(8.0), "accountant ε"] <= 8.0 + 1e-6
    assert summary.table.loc[dp_label(math.inf), "x"] == 16.0


def test_a_setting_against_itself_changes_nothing(steps):
    setup, trained, summary = steps["setup"], steps["trained"], steps["summary"]
    same = mitigation.effect(setup, trained, summary, GN, GN)
    assert same.canary_mem == pytest.approx((0.0, 0.0, 0.0))
    assert same.accuracy == pytest.approx((0.0, 0.0, 0.0))
    assert same.auc[0] == pytest.approx(0.0)


def test_every_change_is_guarded_and_shown_in_the_comparability_table(steps):
    found = steps["found"]
    assert list(found.effects) == list(mitigation.effect_pairs(PLAN))
    table = found.comparability
    assert list(table.index) == list(found.effects)
    assert list(table.columns) == ["setting", "epochs", "lr", "IN acc %", "test acc %", "fit", "comparable"]
    for name, change in found.effects.items():
        c = change.comparison
        assert table.loc[name, "comparable"] == ("yes" if c.comparable else f"no: {c.reason}")
    assert table.loc["GroupNorm alone (BN → GN)", "setting"] == "equal epochs"
    assert (table.drop(index="GroupNorm alone (BN → GN)")["setting"] == "mitigation").all()
    for name, change in found.effects.items():
        c, guard = change.comparison, found.table.loc[name, "guard"]
        assert guard == ("comparable" if c.comparable else f"not comparable: {c.reason}")
        assert c.comparable or guard in found.conclusion


def test_headline_rows_carry_their_comparison_and_read_not_comparable_when_it_fails(steps):
    headline, found = steps["headline"], steps["found"]
    assert [(r["setting"], r["reference"]) for r in headline.rows] == [
        ("equal epochs", "group"), ("equal epochs", "group"),
        ("mitigation", "group + DP-SGD (ε = 8)"), ("mitigation", "group + DP-SGD (ε = 8)")]
    for row in headline.rows:
        assert set(COMPARABILITY) <= set(row)
    for row, reading in zip(headline.rows, headline.table["reading"]):
        assert reading.startswith("not comparable: ") == (not row["comparable"])
    gn_alone = found.effects["GroupNorm alone (BN → GN)"]
    assert headline.rows[0]["diff"] == pytest.approx(gn_alone.auc[0])
    assert headline.rows[0]["batch"] - headline.rows[0]["ref"] == pytest.approx(gn_alone.auc[0])


def test_the_audit_bounds_every_setting_and_dp_stays_below_its_accountant(steps):
    audit, setup = steps["audit"], steps["setup"]
    assert len(audit.table) == 2 * len(setup.settings)
    assert list(audit.best.index) == setup.settings
    assert audit.violations.empty and audit.verdict.startswith("In every DP setting")
    assert np.isfinite(audit.table["empirical ε ≥"]).all()

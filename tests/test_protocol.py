"""The comparison protocol: bad input refused before training, the guard, the three comparisons on
known sweeps, headline rows with comparability fields, and shared runs on a tiny real sweep."""


import numpy as np
import pandas as pd
import pytest

from bnprivacy import Config, headlines, protocol
from bnprivacy.protocol import Protocol, Sweep, compare, guard
from bnprivacy.stats import paired_difference

BASE = Config(dataset="digits", arch="cnn", width=4, batch_size=32, device="cpu")


@pytest.mark.parametrize("changes, message", [
    (dict(budgets=(20, 10)), "strictly increasing"),
    (dict(budgets=(10, 10)), "strictly increasing"),
    (dict(budgets=(0, 10)), "epoch counts >= 1"),
    (dict(budgets=()), "non-empty"),
    (dict(fit_threshold=0.0), "fit_threshold"),
    (dict(fit_threshold=1.5), "fit_threshold"),
    (dict(lr_grid=(1.0, -1.0)), "lr_grid"),
    (dict(lr_grid=(1.0, float("nan"))), "lr_grid"),
    (dict(lr_grid=(float("inf"),)), "lr_grid"),
    (dict(norms=("none", "group")), "must hold 'batch'"),
    (dict(norms=("batch",)), "at least one reference"),
    (dict(norms=("batch", "wobble")), "not allowed"),
    (dict(seeds=0), "seeds"),
    (dict(n_models=3), "even"),
    (dict(equal_epochs=15), "one of the budgets"),
    (dict(n_models=4, probe_points=2, probe_models=9), "probe_models=9 is more than the n_models=4"),
])
def test_bad_protocols_are_refused_before_anything_is_written(changes, message, isolated_store):
    with pytest.raises(ValueError, match=message):
        Protocol(BASE, **changes)
    assert not (isolated_store / "results").exists()


def test_equal_epochs_defaults_to_the_first_budget_and_the_reference_to_the_first_other_norm():
    p = Protocol(BASE, norms=("batch", "group", "none"), budgets=(5, 10))
    assert p.equal_epochs == 5 and p.reference == "group"
    assert p.config("none", 10, 0.2, 1) == BASE.replace(norm="none", epochs=10, lr=0.2, seed=1)


def _side(norm, budget, train_acc, test_acc, lr=0.05):
    return pd.Series({"norm": norm, "budget": budget, "lr": lr, "train_acc": train_acc, "test_acc": test_acc})


def test_the_guard_refuses_a_side_that_did_not_fit_or_did_not_train():
    fine = guard("equal epochs", _side("batch", 10, 0.999, 0.97), _side("none", 10, 0.995, 0.95), num_classes=10)
    assert fine.comparable and fine.reason == "" and fine.fit_bn and fine.fit_ref
    unfit = guard("equal epochs", _side("batch", 10, 0.999, 0.97), _side("none", 10, 0.954, 0.93), num_classes=10)
    assert not unfit.comparable and unfit.reason.startswith("none did not fit (IN accuracy 0.954 < 0.99")
    untrained = guard("equal epochs", _side("batch", 10, 0.999, 0.97), _side("none", 10, 0.2, 0.14), num_classes=10)
    assert not untrained.comparable and "none did not train" in untrained.reason and "1.5x chance" in untrained.reason
    assert protocol.reading(untrained, 0.1, 0.2).startswith("not comparable: none did not train")
    assert protocol.reading(fine, 0.1, 0.2) == "BN higher"


def test_a_reference_exempt_from_fitting_must_still_train():
    dp = guard("mitigation", _side("batch", 10, 0.999, 0.97), _side("group", 10, 0.80, 0.78), num_classes=10,
               ref_must_fit=False)
    assert dp.comparable and not dp.fit_ref
    dead = guard("mitigation", _side("batch", 10, 0.999, 0.97), _side("group", 10, 0.1, 0.1), num_classes=10,
                 ref_must_fit=False)
    assert not dead.comparable and "group did not train" in dead.reason


def _sweep(accuracies, fit_threshold=0.99):
    """A sweep from ``{(norm, budget): (train_acc, test_acc)}`` with two seeds each, no runs."""
    p = Protocol(BASE, budgets=(10, 20, 40), seeds=2, fit_threshold=fit_threshold)
    rows = [dict(norm=n, budget=b, seed=s, lr=0.05, train_acc=tr, test_acc=te)
            for (n, b), (tr, te) in accuracies.items() for s in range(2)]
    return Sweep(p, pd.DataFrame(), {}, pd.DataFrame(rows), num_classes=10)


# The measured table on digits: BN fits at once, none fits only at 40 and never reaches BN.
DIGITS = {("batch", 10): (0.998, 0.978), ("batch", 20): (1.0, 0.980), ("batch", 40): (1.0, 0.981),
          ("none", 10): (0.954, 0.930), ("none", 20): (0.985, 0.950), ("none", 40): (0.997, 0.959)}


def test_comparisons_on_a_known_sweep():
    equal, fit, accuracy = compare(_sweep(DIGITS))
    assert (equal.epochs_bn, equal.epochs_ref, equal.comparable) == (10, 10, False)
    assert "none did not fit" in equal.reason
    assert (fit.epochs_bn, fit.epochs_ref, fit.comparable) == (10, 40, True)
    # the highest accuracy every norm reaches is none's best, 0.959: BN's closest budget is 10
    assert (accuracy.epochs_bn, accuracy.epochs_ref, accuracy.comparable) == (10, 40, True)
    assert "none never reaches batch's best" in accuracy.note and "+1.90 points" in accuracy.note


def test_matched_fit_without_a_fitting_budget_is_not_comparable_and_says_so():
    never = {k: ((0.9, 0.9) if k[0] == "none" else v) for k, v in DIGITS.items()}
    fit = compare(_sweep(never))[1]
    assert not fit.comparable and fit.epochs_ref == 40 and "no budget of the ladder fits for none" in fit.note


def test_headline_rows_pair_seeds_at_each_sides_budget_and_carry_the_fields():
    sweep = _sweep(DIGITS)
    comparisons = compare(sweep)
    values = sweep.table.assign(value=lambda d: d.budget / 10 + d.seed + np.where(d.norm == "batch", 1.0, 0.0))
    rows = protocol.headline_rows(values, comparisons, "canary memorization", "BN memorizes more")
    by_setting = {r["setting"]: r for r in rows}
    fit = by_setting["matched fit"]  # BN at 10 epochs (1 + seed + 1) against none at 40 (4 + seed)
    assert fit["diff"] == pytest.approx(-2.0) and fit["batch"] == pytest.approx(2.5)
    assert fit["epochs_bn"] == 10 and fit["epochs_ref"] == 40 and fit["comparable"] is True
    for row in rows:
        assert set(headlines.COMPARABILITY) <= set(row)
    assert by_setting["equal epochs"]["comparable"] is False
    table = pd.DataFrame(rows)
    assert headlines.readings(table)[0].startswith("not comparable: none did not fit")


def test_curves_give_a_t_interval_per_norm_and_budget():
    sweep = _sweep(DIGITS)
    values = sweep.table.assign(value=[0.1, 0.3] * (len(sweep.table) // 2))
    curve = protocol.curves(values)
    row = curve[(curve.norm == "none") & (curve.budget == 40)].iloc[0]
    expected = paired_difference([0.1, 0.3], [0.0, 0.0])
    assert row["mean"] == pytest.approx(0.2) and row["lo"] == pytest.approx(expected["lo"])
    assert row["test_acc"] == pytest.approx(0.959)


def test_headline_rows_without_a_comparison_are_refused_except_simulations():
    with pytest.raises(ValueError, match="needs its comparison"):
        headlines.headline_row("AUC", "matched fit", 0.6, 0.5, 0.1, 0.0, 0.2, "x", "y")
    row = headlines.headline_row("steps", "simulation", 3, 1, 2, 1, 3, "x", "y")
    assert row["comparable"] is True


def test_the_learning_rate_choice_breaks_ties_towards_the_base_rate(monkeypatch):
    scores = {0.25: 0.9, 1.0: 0.95, 4.0: 0.95}
    monkeypatch.setattr(protocol, "_cached_validation", lambda cfg, *a: scores[round(cfg.lr / BASE.lr, 2)])
    from bnprivacy.data import load_dataset
    import torch

    p = Protocol(BASE, budgets=(1,), seeds=1, n_models=2)
    table = protocol.choose_learning_rates(p, load_dataset(BASE, torch.device("cpu")))
    assert protocol.chosen_lr(table) == {"batch": BASE.lr, "none": BASE.lr}


def test_the_validation_split_holds_only_typical_samples_and_is_fixed():
    import torch
    from bnprivacy.data import load_dataset

    data = load_dataset(BASE.replace(canaries="noise:5,mislabeled:5"), torch.device("cpu"))
    first = protocol.validation_split(data, 0.2)
    assert torch.equal(first, protocol.validation_split(data, 0.2))
    assert all(data.kinds[i] == "typical" for i in first.tolist())
    assert len(first) == round(0.2 * sum(k == "typical" for k in data.kinds))


def test_a_tiny_real_sweep_fits_shares_its_runs_and_loads_them_again(isolated_store):
    import torch
    from bnprivacy.data import load_dataset

    base = BASE.replace(train_size=256, canaries="noise:2")
    p = Protocol(base, budgets=(1, 3), lr_grid=(1.0,), seeds=2, n_models=2, probe_points=2, probe_typical=2,
                 probe_models=1)
    data = load_dataset(base, torch.device("cpu"))
    sweep = protocol.run_sweep(p, data, progress=False)
    assert len(sweep.runs) == 2 * 2 * 2 and set(sweep.table.budget) == {1, 3}
    run = sweep.run("batch", 3, 1)
    assert run.spec.config.epochs == 3 and run.history.epoch.max() == 3 and not run.probe_history.empty
    # longer budgets fit better: the complete 3-epoch schedule beats the 1-epoch one on IN accuracy
    sides = sweep.sides().set_index(["norm", "budget"])
    assert sides.loc[("batch", 3), "train_acc"] > sides.loc[("batch", 1), "train_acc"]
    folders = sorted((isolated_store / "results" / "runs").iterdir())
    again = protocol.run_sweep(p, data, progress=False)
    assert sorted((isolated_store / "results" / "runs").iterdir()) == folders
    assert again.run("batch", 3, 1).folder == run.folder
    assert torch.equal(again.run("none", 1, 0).logits_pool, sweep.run("none", 1, 0).logits_pool)
    comparisons = compare(again)
    assert [c.setting for c in comparisons] == list(protocol.SETTINGS)


def test_fitting_pairings_show_when_the_answer_depends_on_the_budgets():
    sweep = _sweep(DIGITS)  # BN fits at 10, 20, 40; none only at 40
    bn_value = {10: 0.60, 20: 0.90, 40: 0.92}
    values = sweep.table.assign(value=[bn_value[b] + 0.01 * s if n == "batch" else 0.80 + 0.01 * s
                                       for n, b, s in zip(sweep.table.norm, sweep.table.budget, sweep.table.seed)])
    pairs = protocol.fitting_pairings(sweep, values)
    assert list(zip(pairs.epochs_bn, pairs.epochs_ref)) == [(10, 40), (20, 40), (40, 40)]
    assert list(pairs.reading) == ["BN lower", "BN higher", "BN higher"]
    assert pairs["diff"].tolist() == pytest.approx([-0.20, 0.10, 0.12])
    assert protocol.robustness(pairs) == ("depends on the budgets: 2 BN higher, 1 BN lower of 3 pairs of budgets "
                                          "at which both sides fit")
    assert protocol.robustness(pairs.iloc[1:]) == "BN higher at all 2 pairs of budgets at which both sides fit"
    never = _sweep({k: ((0.9, 0.9) if k[0] == "none" else v) for k, v in DIGITS.items()})
    assert protocol.robustness(protocol.fitting_pairings(never, values)) == "no pair of budgets at which both sides fit"

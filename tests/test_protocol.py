"""The comparison protocol: bad input refused before training, the guard, the comparisons on known
sweeps (equal epochs, both fit, matched fit, the interpolated frontier, merged settings), headline
rows with comparability fields and tests, and shared runs on a tiny real sweep."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from bnprivacy import Config, headlines
from bnprivacy.protocol import learning_rates
from bnprivacy.protocol.comparisons import FIELDS, SETTINGS, compare, compare_each, guard
from bnprivacy.protocol.family import Protocol
from bnprivacy.protocol.learning_rates import choose_learning_rates, chosen_agc, chosen_lr, grid_edge_lines, lr_table_shown, validation_split
from bnprivacy.protocol.measures import comparison_table, curves, difference, fitting_pairings, frontier_values, pairings_shown, read_comparison, robustness
from bnprivacy.protocol.sweep import run_sweep, Sweep
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
    (dict(widths=(0.5, 2.0)), "1 among them"),
    (dict(widths=(1.0, 1.0)), "distinct"),
    (dict(widths=(1.0, float("nan"))), "finite multipliers"),
    (dict(widths=(1.0, -2.0)), "finite multipliers"),
    (dict(widths=(1.0, 0.1)), "gives width 0, fewer than one channel per group"),
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
    d = {"diff": 0.15, "lo": 0.1, "hi": 0.2, "df": 4}
    assert read_comparison(untrained, d, 0.01).startswith("not comparable: none did not train")
    assert read_comparison(fine, d, 0.01) == "BN higher"


def test_a_reference_exempt_from_fitting_must_still_train():
    dp = guard("mitigation", _side("batch", 10, 0.999, 0.97), _side("group", 10, 0.80, 0.78), num_classes=10,
               ref_must_fit=False)
    assert dp.comparable and not dp.fit_ref
    dead = guard("mitigation", _side("batch", 10, 0.999, 0.97), _side("group", 10, 0.1, 0.1), num_classes=10,
                 ref_must_fit=False)
    assert not dead.comparable and "group did not train" in dead.reason


def _sweep(accuracies, fit_threshold=0.99, equal_epochs=10, seeds=2, widths=(1.0,)):
    """A sweep from ``{(norm, budget): (train_acc, test_acc)}`` (or ``(norm, width, budget)`` keys, for
    points off the ladder) with ``seeds`` seeds each, no runs. Each point's clean IN loss is
    ``1 - train_acc + (1 - test_acc)``, so that it falls as the point fits and generalises."""
    p = Protocol(BASE, budgets=(10, 20, 40), seeds=seeds, fit_threshold=fit_threshold, equal_epochs=equal_epochs,
                 widths=widths)
    keyed = {(k if len(k) == 3 else (k[0], 1.0, k[1])): v for k, v in accuracies.items()}
    rows = [dict(norm=n, width=w, budget=b, seed=s, lr=0.05, train_acc=tr, test_acc=te,
                 in_loss=(1 - tr) + (1 - te), out_loss=2.0, in_margin=1.0, out_margin=0.5)
            for (n, w, b), (tr, te) in keyed.items() for s in range(seeds)]
    return Sweep(p, pd.DataFrame(), {}, pd.DataFrame(rows), num_classes=10)


# The issue's measured table on digits: BN fits at once, none fits only at 40 and never reaches BN.
DIGITS = {("batch", 10): (0.998, 0.978), ("batch", 20): (1.0, 0.980), ("batch", 40): (1.0, 0.981),
          ("none", 10): (0.954, 0.930), ("none", 20): (0.985, 0.950), ("none", 40): (0.997, 0.959)}


def test_comparisons_on_a_known_sweep():
    equal, both, fit, interpolated, loss = compare(_sweep(DIGITS))
    assert (equal.epochs_bn, equal.epochs_ref, equal.comparable) == (10, 10, False)
    assert "none did not fit" in equal.reason
    assert both.setting == "equal epochs, both fit" and both.pairs == ((40, 40),) and both.comparable
    assert (fit.epochs_bn, fit.epochs_ref, fit.comparable, fit.runs) == (10, 40, True, "batch@10 vs none@40")
    # none fits at one budget only: no frontier to interpolate along, and the row says why
    assert interpolated.setting == "matched accuracy, interpolated" and not interpolated.comparable
    assert interpolated.reason == ("a frontier needs at least 2 fitting points (width, budget) per norm; of "
                                   "10,20,40, none fits at 1 (40)")
    assert loss.setting == "matched training loss, interpolated" and loss.reason == interpolated.reason


def test_matched_fit_without_a_fitting_budget_is_not_comparable_and_says_so():
    never = {k: ((0.9, 0.9) if k[0] == "none" else v) for k, v in DIGITS.items()}
    equal, both, fit, interpolated, loss = compare(_sweep(never))
    assert not fit.comparable and fit.epochs_ref == 40 and "no budget of the ladder fits for none" in fit.note
    assert not both.comparable and "no budget of the ladder at which both sides fit" in both.note
    assert "none fits at 0 (none)" in interpolated.reason


# Both norms fit at two budgets or more, with overlapping test accuracies: a frontier exists.
FRONTIER = {("batch", 10): (0.998, 0.90), ("batch", 20): (1.0, 0.94), ("batch", 40): (1.0, 0.96),
            ("none", 10): (0.95, 0.85), ("none", 20): (0.995, 0.92), ("none", 40): (0.999, 0.95)}


def _linear_in_accuracy(sweep, offset=0.1):
    """A measure that is 2 x test accuracy + seed/100, plus ``offset`` with BN: BN minus none at
    equal accuracy is exactly ``offset`` whatever the budgets."""
    return sweep.table.assign(value=2 * sweep.table.test_acc + 0.01 * sweep.table.seed
                              + np.where(sweep.table.norm == "batch", offset, 0.0))


def test_the_interpolated_comparison_reads_both_curves_at_equal_test_accuracy():
    sweep = _sweep(FRONTIER, seeds=3)
    interpolated = compare(sweep)[-2]
    assert interpolated.comparable and interpolated.pairs == ()
    assert interpolated.frontier_bn == ((1.0, 10), (1.0, 20), (1.0, 40))
    assert interpolated.frontier_ref == ((1.0, 20), (1.0, 40))
    assert interpolated.frontier_range == pytest.approx((0.92, 0.95))
    assert interpolated.runs == "test-accuracy frontier batch@10,20,40 vs none@20,40"
    d = difference(_linear_in_accuracy(sweep), interpolated)
    assert d["diff"] == pytest.approx(0.1) and d["n"] == 3 and d["df"] == 2
    # whole budgets would compare BN at 0.94 or 0.96 with none at 0.95: off by 2 x 0.01 either way
    fit = difference(_linear_in_accuracy(sweep), compare(sweep)[2])
    assert fit["diff"] == pytest.approx(0.1 + 2 * (0.90 - 0.92))


def test_a_frontier_is_never_extrapolated():
    apart = {**FRONTIER, ("none", 20): (0.995, 0.85), ("none", 40): (0.999, 0.88)}
    interpolated = compare(_sweep(apart))[-2]
    assert not interpolated.comparable
    assert interpolated.reason == ("the test accuracy ranges of the fitting points do not overlap "
                                   "(batch 0.900-0.960, none 0.850-0.880); not extrapolated")
    sweep = _sweep(FRONTIER)
    with pytest.raises(ValueError, match="never extrapolated"):
        frontier_values(_linear_in_accuracy(sweep), "none", (20, 40), [0.90, 0.93])


def test_equal_epochs_both_fit_averages_the_per_seed_differences_over_the_common_fitting_budgets():
    sweep = _sweep(FRONTIER, seeds=3)
    both = compare(sweep)[1]
    assert both.pairs == ((20, 20), (40, 40)) and both.comparable
    values = sweep.table.assign(value=sweep.table.budget / 10 + sweep.table.seed
                                + np.where(sweep.table.norm == "batch", sweep.table.budget / 100, 0.0))
    d = difference(values, both)
    assert d["diff"] == pytest.approx((0.2 + 0.4) / 2)


def test_two_settings_that_read_the_same_runs_are_one_comparison():
    # equal epochs at 40, where alone both fit: the plain row and the both-fit row are the same runs
    comparisons = compare(_sweep(DIGITS, equal_epochs=40))
    assert [c.setting for c in comparisons] == ["equal epochs = equal epochs, both fit", "matched fit",
                                                "matched accuracy, interpolated", "matched training loss, interpolated"]
    assert comparisons[0].settings == ["equal epochs", "equal epochs, both fit"]
    assert {c.runs for c in comparisons if c.pairs} == {"batch@40 vs none@40", "batch@10 vs none@40"}


def test_headline_rows_pair_seeds_at_each_sides_budget_and_carry_the_fields():
    sweep = _sweep(DIGITS)
    comparisons = compare(sweep)
    values = sweep.table.assign(value=lambda d: d.budget / 10 + d.seed + np.where(d.norm == "batch", 1.0, 0.0))
    rows = headlines.headline_rows(values, comparisons, "canary memorization", "BN memorizes more", margin=0.05)
    by_setting = {r["setting"]: r for r in rows}
    fit = by_setting["matched fit"]  # BN at 10 epochs (1 + seed + 1) against none at 40 (4 + seed)
    assert fit["diff"] == pytest.approx(-2.0) and fit["batch"] == pytest.approx(2.5)
    assert fit["epochs_bn"] == 10 and fit["epochs_ref"] == 40 and fit["comparable"] is True
    for row in rows:
        assert set(FIELDS) <= set(row) and row["margin"] == 0.05
    assert fit["interval"] == "95% Student-t interval over 2 seeds paired by masks (1 df)" and fit["df"] == 1
    assert by_setting["equal epochs"]["comparable"] is False
    table = pd.DataFrame(rows)
    assert headlines.readings(table)[0].startswith("not comparable: none did not fit")


def test_curves_give_a_t_interval_per_norm_and_budget():
    sweep = _sweep(DIGITS)
    values = sweep.table.assign(value=[0.1, 0.3] * (len(sweep.table) // 2))
    curve = curves(values)
    row = curve[(curve.norm == "none") & (curve.budget == 40)].iloc[0]
    expected = paired_difference([0.1, 0.3], [0.0, 0.0])
    assert row["mean"] == pytest.approx(0.2) and row["lo"] == pytest.approx(expected["lo"])
    assert row["test_acc"] == pytest.approx(0.959)


def test_headline_rows_without_a_comparison_are_refused_except_simulations():
    with pytest.raises(ValueError, match="needs its comparison"):
        headlines.headline_row("AUC", "matched fit", 0.6, 0.5, 0.1, 0.0, 0.2, "x", "y", margin=0.01, df=2)
    row = headlines.headline_row("steps", "simulation", 3, 1, 2, 1, 3, "x", "y", margin=0.5, df=2)
    assert row["comparable"] is True


@pytest.mark.parametrize("margin", [0, -0.01, float("nan"), float("inf"), "0.01", True, None])
def test_a_margin_that_is_not_a_positive_number_is_refused(margin):
    sweep = _sweep(DIGITS)
    with pytest.raises(ValueError, match="allowed values: a finite number > 0"):
        headlines.headline_rows(sweep.table.assign(value=1.0), compare(sweep), "m", "y", margin=margin)


def test_the_learning_rate_choice_breaks_ties_towards_the_base_rate(monkeypatch):
    scores = {0.25: 0.9, 1.0: 0.95, 4.0: 0.95}
    monkeypatch.setattr(learning_rates, "_cached_validation", lambda cfg, *a: scores[round(cfg.lr / BASE.lr, 2)])
    from bnprivacy.data import load_dataset
    import torch

    p = Protocol(BASE, budgets=(1,), seeds=1, n_models=2)
    table = choose_learning_rates(p, load_dataset(BASE, torch.device("cpu")))
    assert chosen_lr(table) == {"batch": BASE.lr, "none": BASE.lr}


def test_nf_chooses_its_agc_threshold_beside_its_learning_rate_and_the_others_do_not_clip(monkeypatch):
    seen = []

    def score(cfg, *args):
        seen.append((cfg.norm, cfg.lr, cfg.agc_clip))
        # nf reads best at lr x4 with AGC 0.02; the others at x1 whatever their (unused) threshold
        return 0.9 + (cfg.norm == "nf" and cfg.lr == 4 * BASE.lr and cfg.agc_clip == 0.02) * 0.05
    monkeypatch.setattr(learning_rates, "_cached_validation", score)
    from bnprivacy.data import load_dataset
    import torch

    p = Protocol(BASE, norms=("batch", "nf", "none"), budgets=(1,), seeds=1, n_models=2, agc_grid=(0.02, 0.08))
    table = choose_learning_rates(p, load_dataset(BASE, torch.device("cpu")))
    assert sorted({a for n, _, a in seen if n == "nf"}) == [0.02, 0.08] and len(seen) == 3 + 6 + 3
    assert {a for n, _, a in seen if n != "nf"} == {BASE.agc_clip}
    assert chosen_lr(table) == {"batch": BASE.lr, "nf": 4 * BASE.lr, "none": BASE.lr}
    assert chosen_agc(table) == {"batch": None, "nf": 0.02, "none": None}
    assert p.spec("nf", 1, 0.2, 0, 100, 0.02).config.agc_clip == 0.02
    shown = lr_table_shown(table)
    assert list(shown.index) == ["batch", "nf, AGC 0.02", "nf, AGC 0.08", "none"]


@pytest.mark.parametrize("grid", [(0.0,), (-1.0,), (float("nan"),), (True,), ("0.02",)])
def test_a_bad_agc_grid_is_refused_before_anything_trains(grid):
    with pytest.raises(ValueError, match="agc_grid=.*thresholds > 0"):
        Protocol(BASE, norms=("batch", "nf"), agc_grid=grid)


def test_the_validation_split_holds_only_typical_samples_and_is_fixed():
    import torch
    from bnprivacy.data import load_dataset

    data = load_dataset(BASE.replace(canaries="noise:5,mislabeled:5"), torch.device("cpu"))
    first = validation_split(data, 0.2)
    assert torch.equal(first, validation_split(data, 0.2))
    assert all(data.kinds[i] == "typical" for i in first.tolist())
    assert len(first) == round(0.2 * sum(k == "typical" for k in data.kinds))


def test_a_tiny_real_sweep_fits_shares_its_runs_and_loads_them_again(isolated_store, capsys, monkeypatch):
    import torch
    from bnprivacy.data import load_dataset
    from bnprivacy.progress import PROGRESS_ENV

    monkeypatch.delenv(PROGRESS_ENV, raising=False)

    base = BASE.replace(train_size=256, canaries="noise:2")
    p = Protocol(base, budgets=(1, 3), lr_grid=(1.0,), seeds=2, n_models=2, probe_points=2, probe_typical=2,
                 probe_models=1)
    data = load_dataset(base, torch.device("cpu"))
    sweep = run_sweep(p, data, progress=False)
    assert len(sweep.runs) == 2 * 2 * 2 and set(sweep.table.budget) == {1, 3}
    run = sweep.run("batch", 3, 1)
    assert run.spec.config.epochs == 3 and run.history.epoch.max() == 3 and not run.probe_history.empty
    # longer budgets fit better: the complete 3-epoch schedule beats the 1-epoch one on IN accuracy
    sides = sweep.sides().set_index(["norm", "budget"])
    assert sides.loc[("batch", 3), "train_acc"] > sides.loc[("batch", 1), "train_acc"]
    # the reader saw the plan before training and every run as it finished (2 norms x 2 budgets x 2 seeds)
    told = capsys.readouterr().err.splitlines()
    assert told[0].startswith("learning-rate candidates: 2 runs to train: 4 models")
    plan = next(line for line in told if line.startswith("shadow runs of the family: 8 runs to train"))
    assert "16 models" in plan and "image-epochs" in plan
    trained = [line for line in told if line.startswith("shadow runs of the family: run ")]
    assert len(trained) == 8 and "about" in trained[0] and trained[-1].endswith(trained[-1].split(";")[-1])
    assert "training done in" in trained[-1]
    folders = sorted((isolated_store / "results" / "runs").iterdir())
    again = run_sweep(p, data, progress=False)
    told = capsys.readouterr().err
    assert "shadow runs of the family: all 8 runs are in the results store; nothing to train" in told
    assert "learning-rate candidates: all 2 runs are in the results store" in told
    assert sorted((isolated_store / "results" / "runs").iterdir()) == folders
    assert again.run("batch", 3, 1).folder == run.folder
    assert torch.equal(again.run("none", 1, 0).logits_pool, sweep.run("none", 1, 0).logits_pool)
    comparisons = compare(again)
    assert {part for c in comparisons for part in c.settings} == set(SETTINGS)


def test_fitting_pairings_show_when_the_answer_depends_on_the_budgets():
    sweep = _sweep(DIGITS)  # BN fits at 10, 20, 40; none only at 40
    bn_value = {10: 0.60, 20: 0.90, 40: 0.92}
    values = sweep.table.assign(value=[bn_value[b] + 0.01 * s if n == "batch" else 0.80 + 0.01 * s
                                       for n, b, s in zip(sweep.table.norm, sweep.table.budget, sweep.table.seed)])
    pairs = fitting_pairings(sweep, values)
    assert list(zip(pairs.epochs_bn, pairs.epochs_ref)) == [(10, 40), (20, 40), (40, 40)]
    assert list(pairs.reading) == ["BN lower", "BN higher", "BN higher"]
    assert pairs["diff"].tolist() == pytest.approx([-0.20, 0.10, 0.12])
    assert robustness(pairs) == ("depends on the budgets: 2 BN higher, 1 BN lower of 3 pairs of budgets "
                                          "at which both sides fit (differences -0.2 to +0.12)")
    assert robustness(pairs.iloc[1:]) == ("BN higher at all 2 pairs of budgets at which both sides fit "
                                                   "(differences +0.1 to +0.12)")
    never = _sweep({k: ((0.9, 0.9) if k[0] == "none" else v) for k, v in DIGITS.items()})
    assert robustness(fitting_pairings(never, values)) == "no pair of budgets at which both sides fit"
    shown = pairings_shown(pairs)
    assert list(shown.columns) == ["BN epochs", "reference epochs", "BN", "reference", "BN − reference [95% CI]",
                                   "reading"]
    assert shown["BN − reference [95% CI]"].iloc[0].startswith("-0.200 [") and shown["reference"].iloc[0] == "0.805"


def test_a_frontier_with_nothing_to_read_says_so_instead_of_printing_nan():
    sweep = _sweep(DIGITS)
    comparisons = compare(sweep)
    interpolated = comparisons[-2]
    assert not interpolated.measurable and interpolated.where().endswith("no common test accuracy to read")
    table = comparison_table(sweep.table.assign(value=1.0), comparisons, margin=0.05)
    row = table.loc["matched accuracy, interpolated"]
    assert row["BN / ref"] == "n/a" and row["BN − ref [95% CI]"] == "n/a" and row["reading"].startswith("not comparable")
    assert "nan" not in " ".join(table.astype(str).to_numpy().ravel())


def _lr_table(rows):
    import pandas as pd

    table = pd.DataFrame(rows, columns=["norm", "lr", "val_acc"])
    table["multiplier"] = table.lr / 0.1
    table["chosen"] = False
    for norm, group in table.groupby("norm", sort=False):
        table.loc[group.val_acc.idxmax(), "chosen"] = True
    return table


def test_a_learning_rate_chosen_at_the_edge_of_its_grid_is_reported_and_an_interior_one_is_not():
    table = _lr_table([("batch", 0.05, 0.54), ("batch", 0.4, 0.62), ("batch", 0.8, 0.59),
                       ("none", 0.05, 0.48), ("none", 0.1, 0.45), ("none", 0.8, 0.0),
                       ("group", 0.05, 0.3), ("group", 0.1, 0.4), ("group", 0.8, 0.5)])
    lines = grid_edge_lines(table)
    assert len(lines) == 2
    assert lines[0].startswith("none chose lr 0.05, the lowest of its grid (0.05 to 0.8)") and "smaller" in lines[0]
    assert lines[1].startswith("group chose lr 0.8, the highest of its grid") and "larger" in lines[1]
    assert grid_edge_lines(_lr_table([("batch", 0.1, 0.9)])) == []  # one rate: no grid to leave


def test_only_the_curve_seed_measures_every_epoch_and_that_leaves_the_run_keys_alone():
    from bnprivacy.runs.spec import RunSpec

    p = Protocol(BASE, budgets=(1, 2), seeds=3, n_models=2)
    specs = [p.spec("batch", 2, 0.1, seed, 256) for seed in range(3)]
    assert [s.epoch_curves for s in specs] == [True, False, False]
    assert RunSpec(BASE, 2, epoch_curves=False).key() == RunSpec(BASE, 2).key()


def _family(accuracies, norms):
    from bnprivacy.analysis.family_steps import TrainedFamily

    sweep = _sweep(accuracies)
    p = dataclasses.replace(sweep.protocol, norms=norms)
    sweep = Sweep(p, sweep.lr_table, {}, sweep.table, num_classes=10)
    return TrainedFamily(p, None, sweep, compare_each(sweep), 0.0)


def test_a_reference_within_two_points_of_bn_is_said_to_train_as_well_and_a_shortfall_is_stated():
    from bnprivacy.analysis import family_steps

    close = {**DIGITS, **{("nf", b): (1.0, acc - 0.015) for (n, b), (_, acc) in DIGITS.items() if n == "batch"}}
    family = _family(close, ("batch", "nf", "none"))
    best = family_steps.best_accuracies(family).set_index("norm")
    assert best.loc["batch", "test accuracy %"] == pytest.approx(98.1) and best.loc["batch", "epochs"] == 40
    assert best.loc["none", "epochs"] == 40 and best.loc["none", "fits"]  # none fits at 40 only
    text = family_steps.reference_gap_markdown(family)
    assert "**nf**, is within 2 points of BN (+1.5 points behind" in text
    far = family_steps.reference_gap_markdown(_family(DIGITS, ("batch", "none")))
    assert "**No reference gets within 2 points of BN:** the closest, none, falls short by 2.2 points" in far
    assert "x0.25, 1, 4 of the base rate" in far
    # every reference is compared, the first one's comparisons first
    assert [c.reference for c in family.comparisons][:1] == ["nf"] and {c.reference for c in family.comparisons} == {"nf", "none"}
    assert family.comparison("matched fit").reference == "nf" and family.comparison("matched fit", "none").reference == "none"


def _linear_in_loss(sweep, offset=0.1):
    """A measure that is 3 x clean IN loss + seed/100, plus ``offset`` with BN."""
    t = sweep.table
    return t.assign(value=3 * t.in_loss + 0.01 * t.seed + np.where(t.norm == "batch", offset, 0.0))


def test_the_matched_loss_comparison_reads_both_curves_at_equal_clean_in_loss():
    sweep = _sweep(FRONTIER, seeds=3)
    loss = compare(sweep)[-1]
    assert loss.setting == "matched training loss, interpolated" and loss.comparable
    # in_loss = 2 - train - test: BN 0.102, 0.06, 0.04 against none 0.085, 0.051 (fitting points)
    assert loss.frontier_axis == "in_loss" and loss.frontier_range == pytest.approx((0.051, 0.085))
    assert loss.in_loss_bn == loss.in_loss_ref == pytest.approx(0.068)
    assert loss.where().startswith("at equal clean IN loss from 0.051 to 0.085")
    assert loss.runs == "IN-loss frontier batch@10,20,40 vs none@20,40"
    # two frontiers read the same runs along different axes: two rows, never merged into one
    rows = headlines.headline_rows(_linear_in_loss(sweep), compare(sweep), "m", "BN more", margin=0.05)
    assert {"matched accuracy, interpolated", "matched training loss, interpolated"} <= {r["setting"] for r in rows}
    d = difference(_linear_in_loss(sweep), loss)
    assert d["diff"] == pytest.approx(0.1) and d["n"] == 3


def test_width_points_join_the_frontier_and_let_disjoint_ladders_overlap():
    # On the ladder BN (0.94-0.96) and none (0.85-0.88) never meet; BN at half width and none at
    # double width reach 0.90 and 0.91, so the accuracy frontier reads 0.90-0.91.
    ladders = {**FRONTIER, ("none", 20): (0.995, 0.85), ("none", 40): (0.999, 0.88), ("batch", 10): (1.0, 0.94)}
    points = {**ladders, ("batch", 0.5, 10): (0.999, 0.90), ("none", 2.0, 10): (0.999, 0.91)}
    without = compare(_sweep(ladders, widths=(0.5, 1.0, 2.0)))[-2]
    assert not without.comparable and "do not overlap (batch 0.940-0.960, none 0.850-0.880)" in without.reason
    sweep = _sweep(points, seeds=3, widths=(0.5, 1.0, 2.0))
    interpolated = compare(sweep)[-2]
    assert interpolated.comparable and interpolated.frontier_range == pytest.approx((0.90, 0.91))
    assert interpolated.frontier_bn == ((1.0, 10), (1.0, 20), (1.0, 40), (0.5, 10))
    assert interpolated.runs == "test-accuracy frontier batch@10,20,40,10@x0.5 vs none@20,40,10@x2"
    d = difference(_linear_in_accuracy(sweep), interpolated)
    assert d["diff"] == pytest.approx(0.1)
    # the per-budget readers see only the ladder: curves and equal-epoch pairs ignore the width points
    curve = curves(_linear_in_accuracy(sweep))
    assert len(curve) == 6 and set(curve.budget) == {10, 20, 40}


def test_the_width_grid_trains_its_points_at_the_first_budget_only():
    p = Protocol(BASE, budgets=(10, 20), widths=(0.5, 1.0, 2.0))
    assert p.width_points == ((0.5, 10), (2.0, 10))
    assert p.config("batch", 10, 0.1, 0, width=0.5).width == 2 and p.config("batch", 10, 0.1, 0).width == 4
    assert p.spec("batch", 10, 0.1, 0, 100, width=2.0).config.width == 8
    # the ladder's runs keep their keys: a family without a width grid names the same runs as before
    assert Protocol(BASE, budgets=(10, 20)).spec("batch", 10, 0.1, 0, 100) == p.spec("batch", 10, 0.1, 0, 100)


def test_the_run_state_is_the_clean_loss_and_margin_of_in_and_out_samples():
    import math
    import types

    import torch
    from bnprivacy.protocol.sweep import run_state

    # two models, three samples, three classes; model 0 holds samples 0 and 1, model 1 sample 2
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                           [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])
    run = types.SimpleNamespace(logits_pool=logits[:, None], y_pool=torch.tensor([0, 1, 2]),
                                masks=torch.tensor([[True, True, False], [False, False, True]]))
    state = run_state(run)
    ce = lambda z, y: float(torch.logsumexp(torch.tensor(z), 0) - z[y])  # noqa: E731
    in_loss = ((ce([2, 0, 0], 0) + ce([0, 0, 0], 1)) / 2 + ce([0, 0, 3], 2)) / 2
    out_loss = (ce([0, 1, 0], 2) + (ce([0, 0, 0], 0) + ce([0, 0, 0], 1)) / 2) / 2
    assert state["in_loss"] == pytest.approx(in_loss) and state["out_loss"] == pytest.approx(out_loss)
    assert state["in_margin"] == pytest.approx(((2 + 0) / 2 + 3) / 2)
    assert state["out_margin"] == pytest.approx((-1 + 0) / 2)
    assert ce([0, 0, 0], 0) == pytest.approx(math.log(3))  # uniform logits: log K


def test_the_best_accuracy_of_a_norm_may_lie_at_a_width_point_and_says_where():
    from bnprivacy.analysis import family_steps
    from bnprivacy.analysis.family_steps import TrainedFamily

    wide = {**DIGITS, ("none", 2.0, 10): (0.999, 0.975)}
    sweep = _sweep(wide, widths=(1.0, 2.0))
    family = TrainedFamily(sweep.protocol, None, sweep, compare_each(sweep), 0.0)
    best = family_steps.best_accuracies(family).set_index("norm")
    assert best.loc["none", "width"] == 2.0 and best.loc["none", "test accuracy %"] == pytest.approx(97.5)
    assert best.loc["none", "clean IN loss"] == pytest.approx(0.001 + 0.025)
    assert "none 97.5% (10 epochs at width x2, lr 0.05)" in family_steps.reference_gap_markdown(family)


def test_a_tiny_sweep_trains_its_width_points_and_the_rate_ablation_pairs_each_side_at_the_others_rate(
        isolated_store, monkeypatch):
    import math

    import torch
    from bnprivacy.data import load_dataset
    from bnprivacy.protocol import learning_rates
    from bnprivacy.protocol.ablation import ARMS, ablation_rates, train_rate_ablation
    from bnprivacy.protocol.measures import measure_table
    from bnprivacy.protocol.sweep import run_summary

    base = BASE.replace(train_size=128)
    p = Protocol(base, budgets=(1,), lr_grid=(1.0, 4.0), seeds=2, n_models=2, widths=(0.5, 1.0))
    data = load_dataset(base, torch.device("cpu"))
    # BN chooses x4, none x1: the ablation has a rate to move each side to
    monkeypatch.setattr(learning_rates, "_cached_validation",
                        lambda cfg, *a: {("batch", 4): 0.9, ("none", 1): 0.8}.get((cfg.norm, round(cfg.lr / base.lr)), 0.1))
    sweep = run_sweep(p, data, progress=False)
    assert set(sweep.width_runs) == {("batch", 0.5, 1, 0), ("batch", 0.5, 1, 1), ("none", 0.5, 1, 0), ("none", 0.5, 1, 1)}
    assert sweep.width_runs["batch", 0.5, 1, 0].spec.config.width == 2
    values = measure_table(sweep, lambda run: run_summary(run)["in_loss"])
    assert len(values) == 8 and set(values.width) == {0.5, 1.0}
    assert values["value"].equals(values["in_loss"]) and all(math.isfinite(v) for v in values.out_margin)
    assert ablation_rates(sweep) == [("batch", 4 * base.lr), ("none", base.lr), ("batch", base.lr), ("none", 4 * base.lr)]
    ablation = train_rate_ablation(sweep, data)
    assert [arm for arm, *_ in ablation.arms("none")] == list(ARMS)
    assert ablation.runs["batch", 4 * base.lr][1].folder == sweep.run("batch", 1, 1).folder  # the family's own runs
    assert ablation.runs["none", 4 * base.lr][0].spec.config.lr == 4 * base.lr
    moved = ablation.comparison("none", 4 * base.lr, 4 * base.lr)
    assert (moved.lr_bn, moved.lr_ref, moved.setting) == (4 * base.lr, 4 * base.lr, "lr ablation")
    d = ablation.difference("none", 4 * base.lr, 4 * base.lr, lambda run: run_summary(run)["test_acc"])
    assert d["n"] == 2 and d["batch"] == pytest.approx(moved.test_acc_bn)


def test_a_side_that_diverges_makes_its_ablation_row_not_comparable():
    from bnprivacy.protocol.ablation import RateAblation

    ablation = RateAblation(10, {"batch": 0.4, "none": 0.025}, {("batch", 0.4): None, ("none", 0.4): None},
                            10, 0.99, 1.5)
    c = ablation.comparison("none", 0.4, 0.4)
    assert not c.comparable and c.reason == "batch diverged at lr 0.4; none diverged at lr 0.4"
    assert math.isnan(ablation.difference("none", 0.4, 0.4, len)["diff"])
    assert [arm for arm, *_ in RateAblation(10, {"batch": 0.1, "nf": 0.1}, {}, 10, 0.99, 1.5).arms("nf")] == ["chosen rates"]

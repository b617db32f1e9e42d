"""Epochs to memorize a canary (fraction of the run's budget), on hand-made per-epoch histories."""

import numpy as np
import pandas as pd
import pytest
import torch

from bnprivacy.memorization import epochs_to_memorize, mean_epochs_to_memorize


def history(correct: dict[tuple[int, int], list[bool]]) -> pd.DataFrame:
    """A canary history from ``{(model, sample): [correct after epoch 1, 2, ...]}``."""
    return pd.DataFrame([dict(model=m, epoch=e + 1, sample=s, correct=bool(c), confidence=0.5)
                         for (m, s), seq in correct.items() for e, c in enumerate(seq)])


def first_right_from(epoch: int, budget: int) -> list[bool]:
    return [e >= epoch for e in range(1, budget + 1)]


def test_closed_forms_first_right_flip_back_and_never():
    masks = torch.ones(1, 3, dtype=torch.bool)
    flips = [True, True, False, True, False, False, True, True, True, True]  # last wrong after epoch 6
    h = history({(0, 0): first_right_from(3, 10), (0, 1): flips, (0, 2): [False] * 9 + [False]})
    got = epochs_to_memorize(h, masks, budget=10).set_index("sample")
    assert got.loc[0, "fraction"] == pytest.approx(0.3) and got.loc[0, "epoch"] == 3
    assert got.loc[1, "fraction"] == pytest.approx(0.7) and got.loc[1, "epoch"] == 7
    assert got.loc[2, "fraction"] == 1.0 and not got.loc[2, "memorized"] and np.isnan(got.loc[2, "epoch"])
    assert got["memorized"].tolist() == [True, True, False]
    assert mean_epochs_to_memorize(h, masks, budget=10) == pytest.approx((0.3 + 0.7 + 1.0) / 3)


def test_right_from_the_first_epoch_and_only_at_the_last():
    masks = torch.ones(1, 2, dtype=torch.bool)
    h = history({(0, 0): [True] * 4, (0, 1): [False, True, False, True]})
    got = epochs_to_memorize(h, masks).set_index("sample")  # budget: the history's last epoch, 4
    assert got.loc[0, "fraction"] == 0.25 and got.loc[1, "fraction"] == 1.0 and got.loc[1, "memorized"]


def test_the_run_value_is_the_mean_over_canaries_of_the_mean_over_in_models_only():
    # canary 0: IN for models 0 and 1 (epochs 2 and 4 of 4), OUT for model 2 (never right: ignored);
    # canary 1: IN for model 2 only (epoch 1), OUT for models 0 and 1.
    masks = torch.tensor([[True, False], [True, False], [False, True]])
    h = history({(0, 0): first_right_from(2, 4), (1, 0): first_right_from(4, 4), (2, 0): [False] * 4,
                 (0, 1): [False] * 4, (1, 1): [False] * 4, (2, 1): [True] * 4})
    got = epochs_to_memorize(h, masks)
    assert sorted(zip(got["sample"], got["model"])) == [(0, 0), (0, 1), (1, 2)]
    assert mean_epochs_to_memorize(h, masks) == pytest.approx(((0.5 + 1.0) / 2 + 0.25) / 2)


def test_typical_samples_are_left_out_when_kinds_are_given():
    masks = torch.ones(1, 2, dtype=torch.bool)
    h = history({(0, 0): [True, True], (0, 1): [False, True]})
    assert mean_epochs_to_memorize(h, masks, kinds=["typical", "noise"]) == 1.0
    with pytest.raises(ValueError, match="no canaries"):
        mean_epochs_to_memorize(h, masks, kinds=["typical", "typical"])


def test_bad_inputs_raise_clear_errors():
    masks = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="canary history is empty"):
        epochs_to_memorize(pd.DataFrame(), masks)
    with pytest.raises(ValueError, match="needs the columns"):
        epochs_to_memorize(pd.DataFrame({"model": [0], "epoch": [1]}), masks)
    with pytest.raises(ValueError, match="no canary of the history has a model that trained on it"):
        epochs_to_memorize(history({(0, 0): [True]}), torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"lacks epochs \[3\]"):
        epochs_to_memorize(history({(0, 0): [True, True]}), masks, budget=3)
    with pytest.raises(ValueError, match="epochs must lie in"):
        epochs_to_memorize(history({(0, 0): [True, True, True]}), masks, budget=2)
    with pytest.raises(ValueError, match="repeats an epoch"):
        epochs_to_memorize(pd.concat([history({(0, 0): [True]})] * 2), masks)
    with pytest.raises(ValueError, match="outside masks"):
        epochs_to_memorize(history({(5, 0): [True]}), masks)
    with pytest.raises(ValueError, match="dtype bool"):
        epochs_to_memorize(history({(0, 0): [True]}), torch.ones(2, 2))


def random_process(seed: int, models: int, canaries: int, budget: int, speed: float) -> pd.DataFrame:
    """Each (model, canary) flips to right with probability ``speed`` per epoch, and back with 0.1."""
    generator = np.random.default_rng(seed)
    seqs = {}
    for m in range(models):
        for s in range(canaries):
            state, seq = False, []
            for _ in range(budget):
                state = generator.random() < (speed if not state else 0.9)
                seq.append(state)
            seqs[(m, s)] = seq
    return history(seqs)


def test_null_identical_prediction_processes_give_a_zero_difference():
    from bnprivacy.ensemble import balanced_masks

    masks = balanced_masks(8, 6, seed=0)
    bn = mean_epochs_to_memorize(random_process(1, 8, 6, 10, 0.4), masks)
    ref = mean_epochs_to_memorize(random_process(1, 8, 6, 10, 0.4), masks)
    assert bn - ref == 0.0
    assert mean_epochs_to_memorize(random_process(2, 8, 6, 10, 0.4), masks) != bn  # a different draw


def test_a_fraction_of_the_budget_compares_runs_of_different_budgets():
    # 30% into a 10-epoch and into a 40-epoch schedule: the same value, though 3 and 12 epochs
    masks = torch.ones(2, 3, dtype=torch.bool)
    short = history({(m, s): first_right_from(3, 10) for m in range(2) for s in range(3)})
    long = history({(m, s): first_right_from(12, 40) for m in range(2) for s in range(3)})
    assert mean_epochs_to_memorize(short, masks) == pytest.approx(mean_epochs_to_memorize(long, masks)) == 0.3


def test_separates_runs_whose_canary_memorization_is_saturated_at_the_end():
    masks = torch.ones(4, 5, dtype=torch.bool)
    early = history({(m, s): first_right_from(2, 10) for m in range(4) for s in range(5)})
    late = history({(m, s): first_right_from(8, 10) for m in range(4) for s in range(5)})
    # every canary right in every model after the last epoch: end-of-training memorization ties
    assert early.query("epoch == 10").correct.all() and late.query("epoch == 10").correct.all()
    assert mean_epochs_to_memorize(early, masks) == pytest.approx(0.2)
    assert mean_epochs_to_memorize(late, masks) == pytest.approx(0.8)

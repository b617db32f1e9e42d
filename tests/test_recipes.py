"""The recipe search reads candidates on a validation split of the pool, never the test split, and
checks every candidate before anything trains."""

from pathlib import Path

import pytest
import torch

from bnprivacy.config import Config
from bnprivacy.data import load_dataset
from bnprivacy.protocol.learning_rates import validation_split
from bnprivacy.recipes import PROJECTED_MODELS, PROJECTED_SEEDS, check_candidates, projected_hours, trial, trial_masks
from bnprivacy.values import read_yaml

REPO = Path(__file__).resolve().parents[1]


def test_a_trial_model_trains_on_half_the_pool_and_never_on_the_validation_split():
    data = load_dataset(Config(train_size=300))
    held_out = validation_split(data, 0.2)
    masks = trial_masks(300, held_out, models=3, seed=0)
    assert (masks.sum(1) == 150).all() and not masks[:, held_out].any()
    assert not torch.equal(masks[0], masks[1])


def test_a_trial_reads_validation_and_in_accuracy_and_its_cost():
    cfg = Config(train_size=300, width=4, epochs=2, batch_size=32, device="cpu")
    r = trial(cfg, load_dataset(cfg), models=2)
    assert 0 <= r["val_acc"] <= 1 and 0 <= r["in_acc"] <= 1 and r["images_per_s"] > 0
    assert r["projected_hours"] == pytest.approx(projected_hours(r["images_per_s"], 300, 2))
    # the clean loss of a model on samples it trained on is below the loss on the others, and both
    # are cross-entropies of a 10-class model that learned something (below log 10 = 2.303)
    assert 0 < r["in_loss"] < r["out_loss"] < 2.303


def test_the_projection_is_seeds_times_models_times_half_the_pool_times_the_ladder():
    # 3 seeds x 16 models x 500 images x (10 + 20) epochs at 1,000 images/s.
    assert projected_hours(1000.0, 1000, 10) == pytest.approx(PROJECTED_SEEDS * PROJECTED_MODELS * 500 * 30 / 1000 / 3600)


@pytest.mark.parametrize("candidates, message", [
    ([], "non-empty list"),
    ([{"arch": "cnn"}, "resnet18"], "candidate 2 is 'resnet18'"),
    ([{"arch": "cnn", "pool": -1}], r"candidate 1 .*train_size=-1"),
    ([{"arch": "cnn", "optimizer": "adam"}], r"candidate 1 .*unknown Config parameter\(s\) \['optimizer'\]"),
])
def test_a_bad_candidate_is_named_before_anything_trains(candidates, message):
    with pytest.raises(ValueError, match=message):
        check_candidates(candidates, {"dataset": "digits"})


def test_the_shipped_candidates_are_valid():
    candidates = read_yaml((REPO / "benchmarks" / "recipes.yml").read_text(), "recipes.yml")
    configs = check_candidates(candidates, {"dataset": "cifar10", "device": "cpu"})
    assert {c.norm for c in configs} >= {"batch", "none"} and all(c.train_size > 0 for c in configs)

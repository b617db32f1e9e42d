import math

import numpy as np
import pandas as pd
import pytest
import torch

from bnprivacy.canaries import inject_canaries, make_canaries
from bnprivacy.config import Config
from bnprivacy.ensemble import balanced_masks
from bnprivacy.memorization import canary_curves, exposure, group_memorization, memorization_scores


def test_a_family_right_exactly_when_trained_on_a_sample_memorizes_it_fully():
    masks = balanced_masks(16, 30, seed=0)
    scores = memorization_scores(masks.clone(), masks)
    assert (scores["mem"] == 1).all() and (scores["p_in"] == 1).all() and (scores["p_out"] == 0).all()
    assert (scores["n_in"] == 8).all()


def test_membership_independent_correctness_gives_zero_within_the_interval():
    generator = torch.Generator().manual_seed(0)
    masks = balanced_masks(64, 200, seed=1)
    correct = torch.rand(64, 200, generator=generator) < 0.7  # independent of membership
    groups = group_memorization(correct, masks, ["typical"] * 200, n_boot=400)
    assert groups.loc["typical", "lo"] <= 0 <= groups.loc["typical", "hi"]
    assert abs(groups.loc["typical", "mem"]) < 0.05
    scores = memorization_scores(correct, masks, n_boot=200)
    covered = ((scores["mem_lo"] <= 0) & (0 <= scores["mem_hi"])).mean()
    assert covered > 0.85  # nominal 95% per sample, bootstrap over 64 models


def test_memorization_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="must both be"):
        memorization_scores(torch.ones(4, 5, dtype=torch.bool), torch.ones(4, 6, dtype=torch.bool))


def test_exposure_on_a_constructed_ranking():
    references = torch.arange(1.0, 16.0)  # 15 references: |R| = 16, 4 bits
    canaries = torch.tensor([0.5, 7.5, 100.0])  # lowest of all, rank 8, highest
    got = exposure(canaries, references)
    assert got.tolist() == pytest.approx([4.0, 4 - math.log2(8), 0.0])
    per_model = exposure(canaries.repeat(2, 1), references.repeat(2, 1))
    assert per_model.shape == (2, 3)


def test_exposure_refuses_a_reference_set_too_small_for_the_resolution():
    with pytest.raises(ValueError, match="resolve exposure up to.*fewer than the 10 bits.*1023"):
        exposure(torch.zeros(2), torch.zeros(100), resolution_bits=10)


def test_injection_keeps_the_non_canary_samples_and_labels_intact():
    generator = torch.Generator().manual_seed(3)
    x, y = torch.rand(100, 1, 8, 8, generator=generator), torch.arange(100) % 10
    xt, yt = torch.rand(50, 1, 8, 8, generator=generator), torch.arange(50) % 10
    pool = inject_canaries(x, y, xt, yt, 10, "noise:3,mislabeled:4,ood:2,atypical:5", 6, seed=0)
    typical = [i for i, k in enumerate(pool.kinds) if k == "typical"]
    assert len(typical) == 100 - 11 and typical == list(range(89))
    # Every typical pool sample is an original (image and label), in the original order.
    originals = {tuple(x[i].flatten().tolist()): int(y[i]) for i in range(100)}
    kept = [tuple(pool.x[i].flatten().tolist()) for i in typical]
    assert all(originals[k] == int(pool.y[i]) for k, i in zip(kept, typical))
    positions = [list(originals).index(k) for k in kept]
    assert positions == sorted(positions)
    # The canaries' sources are gone from the pool.
    assert pool.kinds.count("mislabeled") == 4 and pool.kinds[-5:] == ["atypical"] * 5
    assert len(pool.ref_kinds) == 4 * 6 and pool.x_ref.shape == (24, 1, 8, 8)


def test_each_kind_is_what_it_says():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 1, 8, 8, generator=generator), torch.arange(20) % 10
    mislabeled_x, mislabeled_y = make_canaries("mislabeled", x, y, 10, generator)
    assert torch.equal(mislabeled_x, x) and (mislabeled_y != y).all()
    ood_x, _ = make_canaries("ood", x, y, 10, generator)
    assert torch.allclose(ood_x, torch.rot90(1 - x, 1, dims=(2, 3)))
    atypical_x, atypical_y = make_canaries("atypical", x, y, 10, generator)
    assert torch.equal(atypical_y, y) and (atypical_x == 0).float().mean() > 0.5
    noise_x, _ = make_canaries("noise", x, y, 10, generator)
    assert 0 <= noise_x.min() and noise_x.max() <= 1 and not torch.equal(noise_x, x)


@pytest.mark.parametrize("spec, message", [
    ("gaussian:3", "canary kind 'gaussian' is not allowed"),
    ("noise:0", "KIND:COUNT with a positive count"),
    ("noise:2,noise:3", "each kind once"),
])
def test_bad_canary_specs_are_explained(spec, message):
    with pytest.raises(ValueError, match=message):
        Config(canaries=spec)


def test_more_canaries_than_the_pool_can_hold_is_refused():
    from bnprivacy.data import load_dataset

    with pytest.raises(ValueError, match="at most half of it"):
        load_dataset(Config(train_size=100, canaries="mislabeled:60"))
    with pytest.raises(ValueError, match="lower canary_references"):
        load_dataset(Config(canaries="ood:5", canary_references=1000))


def test_canary_curves_split_by_kind_and_membership():
    history = pd.DataFrame({"model": [0, 1, 0, 1], "epoch": [1, 1, 2, 2], "sample": [2, 2, 2, 2],
                            "correct": [True, False, True, True], "confidence": [0.9, 0.1, 0.95, 0.6]})
    masks = torch.tensor([[False, False, True], [False, False, False]])
    curves = canary_curves(history, masks, ["typical", "typical", "noise"]).set_index(["membership", "epoch"])
    assert curves.loc[("IN", 1), "accuracy"] == 1 and curves.loc[("OUT", 1), "accuracy"] == 0
    assert curves.loc[("OUT", 2), "confidence"] == pytest.approx(0.6)


def test_paired_difference_matches_the_t_interval():
    from scipy import stats

    from bnprivacy.stats import paired_difference

    a, b = [0.5, 0.7, 0.6], [0.1, 0.2, 0.3]
    got = paired_difference(a, b)
    expected = stats.t.interval(0.95, 2, loc=np.mean([0.4, 0.5, 0.3]), scale=stats.sem([0.4, 0.5, 0.3]))
    assert got["diff"] == pytest.approx(0.4) and (got["lo"], got["hi"]) == pytest.approx(expected)
    assert math.isnan(paired_difference([1.0], [0.0])["lo"])

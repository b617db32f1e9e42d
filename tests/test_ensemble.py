"""The engine: masks, and N models trained at once equal N models trained one at a time."""

import pytest
import torch

from bnprivacy.config import ARCHS, NORMS, Config
from bnprivacy.data import load_dataset
from bnprivacy.ensemble import (balanced_masks, check_masks, fraction_masks, init_model,
                                train_ensemble)
from bnprivacy.models import build_model, ensemble_input, ensemble_output, merge_states, split_state

# Float tolerance of the equivalence: the wide network sums the same products in a different
# order (grouped convolutions), so parameters agree to float32 rounding, not bit for bit.
ATOL = 1e-4


@pytest.fixture(scope="module")
def pool():
    return load_dataset(Config(dataset="digits", train_size=256))


def test_balanced_masks_put_each_sample_in_exactly_half_the_models():
    masks = balanced_masks(8, 500, seed=3)
    assert masks.dtype == torch.bool and masks.shape == (8, 500)
    assert (masks.sum(0) == 4).all()
    assert torch.equal(masks, balanced_masks(8, 500, seed=3))
    assert not torch.equal(masks, balanced_masks(8, 500, seed=4))


def test_fraction_masks_give_each_model_its_fraction():
    masks = fraction_masks(5, 1000, 0.7, seed=0)
    assert (masks.sum(1) == 700).all()
    assert len({tuple(row.tolist()) for row in masks}) == 5  # every model its own subset


@pytest.mark.parametrize("call, message", [
    (lambda: balanced_masks(3, 10), "even number"),
    (lambda: balanced_masks(0, 10), "n_models=0"),
    (lambda: fraction_masks(4, 10, 1.0), r"fraction=1.0.*\(0, 1\)"),
    (lambda: fraction_masks(4, 10, 0.0), "fraction"),
    (lambda: check_masks(torch.ones(4, 9, dtype=torch.bool), 10, 2), r"shape \[N >= 1, 10\]"),
    (lambda: check_masks(torch.ones(4, 10), 10, 2), "torch.bool"),
    (lambda: check_masks(torch.ones(0, 10, dtype=torch.bool), 10, 2), "N >= 1"),
    (lambda: check_masks(balanced_masks(2, 10), 10, 8), "fewer than one batch"),
])
def test_bad_masks_are_rejected_before_training(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", NORMS)
def test_wide_network_equals_separate_models(arch, norm):
    torch.manual_seed(0)
    singles = [build_model(arch, norm, 8, (3, 16, 16), 5) for _ in range(3)]
    for model in singles:  # non-zero SkipInit gains, so the residual branches count
        for name, p in model.named_parameters():
            if "skip_gain" in name:
                torch.nn.init.normal_(p)
    wide = build_model(arch, norm, 8, (3, 16, 16), 5, n_models=3)
    wide.load_state_dict(merge_states([m.state_dict() for m in singles]))
    x = torch.randn(3, 6, 3, 16, 16)
    for train in (True, False):
        for model in singles + [wide]:
            model.train(train)
        expected = torch.stack([m(x[k]) for k, m in enumerate(singles)])
        assert torch.allclose(ensemble_output(wide(ensemble_input(x)), 3), expected, atol=1e-4)
    for k, state in enumerate(split_state(wide.state_dict(), 3)):
        for name, tensor in singles[k].state_dict().items():
            assert torch.allclose(state[name].float(), tensor.float(), atol=1e-5), name


@pytest.mark.parametrize("norm", ["batch", "gn_ws", "nf", "none"])
def test_engine_equals_models_trained_one_at_a_time(pool, norm):
    # agc_clip 0.01 clips most units under nf, so AGC is part of what is compared
    cfg = Config(norm=norm, width=8, epochs=2, batch_size=32, augment="flip-crop", device="cpu", agc_clip=0.01)
    masks = balanced_masks(4, len(pool.y_train), seed=0)
    batched = train_ensemble(cfg, pool, masks, strategy="batched")
    looped = train_ensemble(cfg, pool, masks, strategy="loop")
    for k in range(4):
        for name, tensor in looped.states[k].items():
            assert torch.allclose(batched.states[k][name].float(), tensor.float(), atol=ATOL), (k, name)
    cols = ["model", "epoch", "test_acc"]
    a, b = batched.history.sort_values(cols[:2])[cols], looped.history.sort_values(cols[:2])[cols]
    assert (a.values - b.values).__abs__().max() <= 1 / len(pool.y_test) + 1e-6  # one sample at most
    if norm == "batch":
        means = [s["1.running_mean"] for s in batched.states]
        assert all(not torch.allclose(means[0], m) for m in means[1:]), "BN statistics are shared"
        for k in range(4):
            assert torch.allclose(batched.states[k]["1.running_mean"], looped.states[k]["1.running_mean"],
                                  atol=ATOL)


def test_a_model_is_the_same_in_any_chunk(pool):
    cfg = Config(norm="batch", width=8, epochs=1, batch_size=32, device="cpu")
    masks = balanced_masks(4, len(pool.y_train), seed=0)
    whole = train_ensemble(cfg, pool, masks)
    part = train_ensemble(cfg, pool, masks, models=[2, 3])
    for name, tensor in part.states[1].items():
        assert torch.allclose(tensor.float(), whole.states[3][name].float(), atol=ATOL)


def test_models_start_from_their_own_initialisation(pool):
    cfg = Config(width=8, device="cpu")
    first, again, other = (init_model(cfg, pool, k).state_dict() for k in (0, 0, 1))
    assert torch.equal(first["0.weight"], again["0.weight"])
    assert not torch.equal(first["0.weight"], other["0.weight"])


def test_models_learn_their_own_subsets(pool):
    cfg = Config(norm="batch", width=16, epochs=8, batch_size=32, device="cpu")
    masks = fraction_masks(2, len(pool.y_train), 0.5, seed=1)
    result = train_ensemble(cfg, pool, masks)
    assert (result.history.groupby("model").test_acc.last() > 0.6).all()


def test_every_model_trains_exactly_the_configured_epochs(pool):
    cfg = Config(norm="batch", width=4, epochs=3, batch_size=32, device="cpu")
    result = train_ensemble(cfg, pool, balanced_masks(2, len(pool.y_train)))
    assert len(result.states) == 2
    for model in (0, 1):
        assert result.history.loc[result.history.model == model, "epoch"].tolist() == [1, 2, 3]
    # The schedule is laid over exactly those epochs: the last epoch ends at learning rate 0.
    assert result.history.groupby("model").lr.last().eq(0).all()


def test_unknown_strategy_and_model_index_are_rejected(pool):
    masks = balanced_masks(2, len(pool.y_train))
    cfg = Config(width=8, epochs=1, device="cpu")
    with pytest.raises(ValueError, match="strategy='vmap'.*batched, loop"):
        train_ensemble(cfg, pool, masks, strategy="vmap")
    with pytest.raises(ValueError, match=r"indices in \[0, 2\)"):
        train_ensemble(cfg, pool, masks, models=[2])

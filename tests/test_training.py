import math

import pytest
import torch

from bnprivacy.config import Config
from bnprivacy.data import load_dataset
from bnprivacy.ensemble import train_model
from bnprivacy.models import build_model, classifier, merge_states
from bnprivacy.training import AGC_EPS, TrainingDiverged, adaptive_clip_, lr_factor

# Per-epoch wall time differs run to run; results are compared without it.
WALL_CLOCK = "seconds"
FAST = dict(width=8, epochs=3, batch_size=64, device="cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset(Config(dataset="digits"))


@pytest.mark.parametrize("norm", ["batch", "gn_ws", "nf", "none"])
def test_training_lowers_the_loss_and_learns(digits, norm):
    result = train_model(Config(norm=norm, **FAST), digits)
    history = result.history
    assert list(history.epoch) == [1, 2, 3]
    assert history.train_loss.iloc[-1] < history.train_loss.iloc[0] < math.log(10) + 0.5
    assert history.test_acc.iloc[-1] > 0.5  # chance is 0.1


def test_same_seed_gives_identical_model_and_history(digits):
    cfg = Config(norm="batch", augment="flip-crop", **FAST)
    first, second = train_model(cfg, digits), train_model(cfg, digits)
    assert first.history.drop(columns=WALL_CLOCK).equals(second.history.drop(columns=WALL_CLOCK))
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    other = train_model(cfg.replace(seed=1), digits)
    assert not torch.equal(next(iter(other.model.parameters())), next(iter(first.model.parameters())))


def test_divergence_stops_with_a_clear_message(digits):
    with pytest.raises(TrainingDiverged, match="became non-finite in epoch 1.*lower the learning rate"):
        train_model(Config(norm="none", lr=1e8, momentum=0.0, **{**FAST, "epochs": 2}), digits)


def test_a_pool_smaller_than_a_batch_is_rejected():
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_model(Config(batch_size=64, train_size=40, **{k: v for k, v in FAST.items() if k != "batch_size"}),
                    load_dataset(Config(train_size=40)))


@pytest.mark.parametrize("schedule, expected", [
    ("cosine", [1.0, 0.5, 0.0]), ("constant", [1.0, 1.0, 1.0]), ("onecycle", [0.0, 0.625, 0.0]),
])
def test_schedules_follow_their_closed_forms(schedule, expected):
    cfg = Config(schedule=schedule)
    got = [lr_factor(cfg, step, 100) for step in (0, 50, 100)]
    assert got == pytest.approx(expected)


def test_bf16_on_a_cpu_without_native_bf16_is_refused(digits, monkeypatch):
    from bnprivacy import training

    monkeypatch.setattr(training, "cpu_supports_bf16", lambda: False)
    with pytest.raises(ValueError, match="bf16.*CUDA device or a CPU with native bf16"):
        train_model(Config(precision="bf16", **FAST), digits)


def test_auto_precision_keeps_a_cpu_in_float32():
    from bnprivacy.training import uses_bf16

    assert not uses_bf16(Config(device="cpu"), torch.device("cpu"))
    assert not uses_bf16(Config(device="cpu", precision="fp32"), torch.device("cpu"))


@pytest.mark.skipif(not __import__("bnprivacy.training", fromlist=["x"]).cpu_supports_bf16(),
                    reason="this CPU has no native bf16")
def test_bf16_on_a_cpu_learns_like_float32(digits):
    fp32 = train_model(Config(norm="batch", **FAST), digits).history.iloc[-1]
    bf16 = train_model(Config(norm="batch", precision="bf16", **FAST), digits).history.iloc[-1]
    # The documented tolerance of bf16 on a CPU: same accuracy within 3 points, loss within 15%.
    assert abs(bf16.test_acc - fp32.test_acc) <= 0.03
    assert bf16.train_loss == pytest.approx(fp32.train_loss, rel=0.15)


def test_each_epoch_is_measured_on_a_fixed_test_subset_and_the_last_on_the_whole_split(digits, monkeypatch):
    from bnprivacy import ensemble

    monkeypatch.setattr(ensemble, "EPOCH_EVAL_SAMPLES", 100)
    cfg = Config(norm="batch", **FAST)
    result = train_model(cfg, digits)
    history = result.history
    assert list(history.test_samples) == [100, 100, len(digits.y_test)]
    assert torch.equal(ensemble.epoch_eval_subset(500), ensemble.epoch_eval_subset(500))
    assert len(set(ensemble.epoch_eval_subset(500).tolist())) == 100
    _, accuracy = ensemble.evaluate_ensemble(cfg, result.model, 1, digits.x_test, digits.y_test)
    assert history.test_acc.iloc[-1] == pytest.approx(float(accuracy[0]))


def test_a_run_without_epoch_curves_trains_the_same_models_and_measures_only_its_last_epoch(digits):
    from bnprivacy.ensemble import balanced_masks, train_ensemble

    cfg, masks = Config(norm="batch", **FAST), balanced_masks(4, len(digits.y_train), seed=0)
    curves = train_ensemble(cfg, digits, masks)
    last_only = train_ensemble(cfg, digits, masks, epoch_curves=False)
    for a, b in zip(curves.states, last_only.states):
        assert all(torch.equal(a[k], b[k]) for k in a)  # the evaluation changes nothing in training
    final = last_only.history[last_only.history.epoch == 3].drop(columns=WALL_CLOCK).reset_index(drop=True)
    assert final.equals(curves.history[curves.history.epoch == 3].drop(columns=WALL_CLOCK).reset_index(drop=True))
    earlier = last_only.history[last_only.history.epoch < 3]
    assert earlier.test_acc.isna().all() and (earlier.test_samples == 0).all()
    assert earlier.train_loss.notna().all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_training_on_gpu_learns():
    data = load_dataset(Config(dataset="digits"), "cuda")
    result = train_model(Config(norm="batch", device="cuda", **{**FAST, "device": "cuda"}), data)
    assert result.history.test_acc.iloc[-1] > 0.8


def test_adaptive_clipping_follows_its_closed_form():
    """AGC (Brock et al. 2021): a unit whose gradient norm exceeds clip * max(|W|, 1e-3) is scaled
    to exactly that norm; the others, and the classifier, keep their gradient."""
    torch.manual_seed(0)
    model = build_model("mlp", "nf", 8, (1, 4, 4), 3)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 10
    model[1].weight.data[0] = 0.0  # a unit of zero weights: the 1e-3 floor sets its limit
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    weight = model[1].weight.detach()
    rows = before["1.weight"].norm(dim=1)
    small = rows.argmin()
    model[1].weight.grad[small] *= 1e-6  # one unit well under the limit
    rows[small] *= 1e-6
    adaptive_clip_(model, clip=0.01)
    limit = 0.01 * weight.norm(dim=1).clamp_min(AGC_EPS)
    clipped = model[1].weight.grad.norm(dim=1)
    assert limit[0].item() == pytest.approx(0.01 * AGC_EPS) and rows[small] < limit[small]
    assert torch.allclose(clipped, torch.minimum(rows, limit), rtol=1e-5)
    gains = model[1].gain  # a vector is one unit (per model)
    assert model[1].gain.grad.norm().item() == pytest.approx(0.01 * gains.detach().norm().item(), rel=1e-5)
    head = classifier(model)
    assert torch.equal(head.weight.grad, before["7.weight"]) and torch.equal(head.bias.grad, before["7.bias"])


def test_adaptive_clipping_of_a_wide_network_is_each_models_own():
    torch.manual_seed(0)
    singles = [build_model("resnet18", "nf", 4, (3, 8, 8), 5) for _ in range(3)]
    for model in singles:
        for p in model.parameters():
            p.data.normal_()
            p.grad = torch.randn_like(p) * torch.rand(()) * 3
    wide = build_model("resnet18", "nf", 4, (3, 8, 8), 5, n_models=3)
    wide.load_state_dict(merge_states([m.state_dict() for m in singles]))
    for name, p in wide.named_parameters():
        parts = [dict(m.named_parameters())[name].grad for m in singles]
        p.grad = parts[0].clone() if p.ndim == 0 else torch.cat(parts)
    for model in singles:
        adaptive_clip_(model, clip=0.05)
    adaptive_clip_(wide, clip=0.05, n_models=3)
    for name, p in wide.named_parameters():
        expected = torch.cat([dict(m.named_parameters())[name].grad for m in singles])
        assert torch.allclose(p.grad, expected, rtol=1e-5, atol=1e-7), name

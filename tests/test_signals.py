import math

import pytest
import torch

from bnprivacy.config import Config
from bnprivacy.data import load_dataset
from bnprivacy.ensemble import balanced_masks, train_ensemble
from bnprivacy.scores import correct, lira_score, losses
from bnprivacy.signals import collect_logits, query_views


def test_lira_score_is_log_odds_of_the_true_class():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    labels = torch.tensor([0, 2])
    p = logits.softmax(-1)
    expected = torch.log(p[[0, 1], labels]) - torch.log(1 - p[[0, 1], labels])
    assert torch.allclose(lira_score(logits, labels), expected, atol=1e-6)
    assert lira_score(logits, labels)[1].item() == pytest.approx(math.log(1 / 2))


def test_lira_score_stays_finite_for_confident_models():
    logits = torch.tensor([[200.0, 0.0, 0.0]])
    assert lira_score(logits, torch.tensor([0])).item() == pytest.approx(200 - math.log(2), rel=1e-6)


def test_losses_and_correctness_broadcast_over_models_and_queries():
    logits = torch.randn(3, 2, 5, 4)
    labels = torch.randint(0, 4, (5,))
    out = losses(logits, labels)
    assert out.shape == (3, 2, 5)
    assert torch.allclose(out[1, 1], torch.nn.functional.cross_entropy(logits[1, 1], labels, reduction="none"))
    assert correct(logits, labels).shape == (3, 2, 5)


def test_query_views_are_identity_then_mirror():
    x = torch.randn(2, 1, 5, 5)
    views = query_views(x, 4)
    assert torch.equal(views[0], x) and torch.equal(views[1], x.flip(3)) and len(views) == 4
    with pytest.raises(ValueError, match="queries=0"):
        query_views(x, 0)


@pytest.fixture(scope="module")
def trained():
    data = load_dataset(Config(train_size=128))
    cfg = Config(norm="batch", width=8, epochs=2, batch_size=32, device="cpu")
    return cfg, data, train_ensemble(cfg, data, balanced_masks(2, 128))


def test_eval_mode_logits_equal_each_model_alone(trained):
    from bnprivacy.models import build_model

    cfg, data, result = trained
    logits = collect_logits(cfg, data, result.states, data.x_test[:50], queries=2, mode="eval")
    assert logits.shape == (2, 2, 50, 10)
    for k, state in enumerate(result.states):
        model = build_model("cnn", "batch", 8, data.input_shape, 10)
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            assert torch.allclose(logits[k, 0], model(data.x_test[:50]), atol=1e-4)
            assert torch.allclose(logits[k, 1], model(data.x_test[:50].flip(3)), atol=1e-4)


def test_train_mode_uses_batch_statistics_and_keeps_running_ones(trained):
    cfg, data, result = trained
    before = {k: v.clone() for k, v in result.states[0].items()}
    eval_logits = collect_logits(cfg, data, result.states, data.x_test[:64], mode="eval")
    train_logits = collect_logits(cfg, data, result.states, data.x_test[:64], mode="train")
    assert not torch.allclose(eval_logits, train_logits)
    # A query batch's own statistics: the same sample in another batch gets other logits.
    shifted = collect_logits(cfg, data, result.states, data.x_test[32:96], mode="train")
    assert not torch.allclose(train_logits[:, :, 32:], shifted[:, :, :32])
    again = collect_logits(cfg, data, result.states, data.x_test[:64], mode="eval")
    assert torch.equal(eval_logits, again)
    assert all(torch.equal(before[k], result.states[0][k]) for k in before)


def test_unknown_query_mode_is_rejected(trained):
    cfg, data, result = trained
    with pytest.raises(ValueError, match="mode='test'.*eval, train"):
        collect_logits(cfg, data, result.states, data.x_test[:4], mode="test")

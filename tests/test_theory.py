"""The closed forms of theory.py against autograd (float64), their limits, and their errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from bnprivacy import theory

TOL = 1e-6
NAMES_BN = ("weight", "gamma", "beta")


def problem(batch, p=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, p, generator=g, dtype=torch.float64) * 2 + 1
    y = torch.randint(0, k, (batch,), generator=g)
    weight = torch.randn(k, p, generator=g, dtype=torch.float64)
    gamma = torch.rand(k, generator=g, dtype=torch.float64) * 2 + 0.3  # gamma != 1 on purpose
    beta = torch.randn(k, generator=g, dtype=torch.float64)
    return x, y, weight, gamma, beta


def autograd_losses(params, x, y, batchnorm):
    """Per-sample losses through PyTorch's own BatchNorm (train mode) or a plain linear layer."""
    if batchnorm:
        weight, gamma, beta = params
        logits = F.batch_norm(x @ weight.T, None, None, gamma, beta, training=True, eps=theory.BN_EPS)
    else:
        weight, bias = params
        logits = x @ weight.T + bias
    return F.cross_entropy(logits, y, reduction="none")


def leaves(*tensors):
    return [t.clone().requires_grad_() for t in tensors]


def max_error(closed, autograd, names):
    return max((closed[n] - a).abs().max().item() for n, a in zip(names, autograd))


@pytest.mark.parametrize("batch", [2, 3, 8, 33])
def test_bn_own_gradients_match_autograd(batch):
    x, y, weight, gamma, beta = problem(batch, seed=batch)
    params = leaves(weight, gamma, beta)
    losses = autograd_losses(params, x, y, batchnorm=True)
    closed = theory.bn_linear_own_grads(x, y, weight, gamma, beta)
    for i in range(batch):
        grads = torch.autograd.grad(losses[i], params, retain_graph=True)
        assert max_error({n: closed[n][i] for n in NAMES_BN}, grads, NAMES_BN) <= TOL


@pytest.mark.parametrize("batch", [1, 4, 16])
def test_linear_own_gradients_match_autograd(batch):
    x, y, weight, _, bias = problem(batch, seed=batch)
    params = leaves(weight, bias)
    losses = autograd_losses(params, x, y, batchnorm=False)
    closed = theory.linear_own_grads(x, y, weight, bias)
    for i in range(batch):
        grads = torch.autograd.grad(losses[i], params, retain_graph=True)
        assert max_error({n: closed[n][i] for n in ("weight", "bias")}, grads, ("weight", "bias")) <= TOL


@pytest.mark.parametrize("batch,i", [(3, 0), (8, 5), (20, -1)])
def test_bn_leave_one_out_matches_autograd(batch, i):
    x, y, weight, gamma, beta = problem(batch, seed=batch)
    keep = torch.ones(batch, dtype=torch.bool)
    keep[i] = False
    params = leaves(weight, gamma, beta)
    full = torch.autograd.grad(autograd_losses(params, x, y, True).sum(), params)
    without = torch.autograd.grad(autograd_losses(params, x[keep], y[keep], True).sum(), params)
    closed = theory.bn_linear_loo_grad(x, y, weight, gamma, beta, i)
    assert max_error(closed, [a - b for a, b in zip(full, without)], NAMES_BN) <= TOL


def test_bn_own_gradients_sum_to_the_batch_gradient():
    x, y, weight, gamma, beta = problem(10)
    params = leaves(weight, gamma, beta)
    batch = torch.autograd.grad(autograd_losses(params, x, y, True).sum(), params)
    summed = theory.batch_gradient(theory.bn_linear_own_grads(x, y, weight, gamma, beta))
    assert max_error(summed, batch, NAMES_BN) <= TOL


def test_without_bn_the_leave_one_out_influence_is_the_own_gradient():
    x, y, weight, _, bias = problem(9)
    own = theory.linear_own_grads(x, y, weight, bias)
    keep = torch.arange(9) != 4
    without = theory.batch_gradient(theory.linear_own_grads(x[keep], y[keep], weight, bias))
    full = theory.batch_gradient(own)
    for name in own:
        assert (full[name] - without[name] - own[name][4]).abs().max() <= 1e-12


def test_bn_weight_gradient_is_orthogonal_to_the_weight_and_scales_inversely_with_it():
    x, y, weight, gamma, beta = problem(12)
    own = theory.bn_linear_own_grads(x, y, weight, gamma, beta, eps=0.0)
    assert torch.einsum("brp,rp->br", own["weight"], weight).abs().max() <= 1e-10
    scaled = theory.bn_linear_own_grads(x, y, 3.0 * weight, gamma, beta, eps=0.0)
    assert (scaled["weight"] * 3.0 - own["weight"]).abs().max() <= 1e-10
    assert (scaled["gamma"] - own["gamma"]).abs().max() <= 1e-10


@pytest.mark.parametrize("batch", [2, 5, 64])
def test_an_outlier_normalises_to_sqrt_batch_minus_one_and_the_rest_collapse(batch):
    x, _, weight, gamma, beta = problem(batch - 1, seed=batch)
    u = torch.randn(x.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    yhat = theory.batch_norm_forward(theory.outlier_batch(x, u, 1e7), weight, gamma, beta, eps=0.0)["yhat"]
    far, near = theory.bn_outlier_limit(batch)
    sign = torch.sign(weight @ u)
    assert far == pytest.approx(math.sqrt(batch - 1))
    assert (yhat[-1] - sign * far).abs().max() <= 1e-4
    assert (yhat[:-1] - sign * near).abs().max() <= 1e-4


def outlier_problem(batch=8, seed=3):
    x, y, weight, gamma, beta = problem(batch, seed=seed)
    u = torch.randn(x.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    return x[:-1], y[:-1], weight, gamma, beta, u


def test_bn_own_gradient_of_a_far_outlier_tends_to_its_limit_with_a_weight_part_like_one_over_d_squared():
    x_rest, y_rest, weight, gamma, beta, u = outlier_problem()
    y = torch.cat([y_rest, torch.tensor([1])])
    c = theory.bn_own_weight_grad_asymptote(x_rest, 1, weight, gamma, beta, u)
    limit = theory.bn_own_grad_limit(1, weight, gamma, beta, u / u.norm(), len(x_rest) + 1)
    for d in (1e4, 1e5):
        own = theory.bn_linear_own_grads(theory.outlier_batch(x_rest, u, d), y, weight, gamma, beta)
        assert own["weight"][-1].norm().item() * d ** 2 == pytest.approx(c, rel=1e-3)
        for name in ("gamma", "beta"):
            assert (own[name][-1] - limit[name]).abs().max() <= 1e-3


def test_bn_leave_one_out_influence_of_a_far_outlier_is_bounded():
    x_rest, y_rest, weight, gamma, beta, u = outlier_problem()
    y = torch.cat([y_rest, torch.tensor([2])])
    limit = theory.bn_loo_grad_limit(x_rest, y_rest, 2, weight, gamma, beta, u)
    loo = theory.bn_linear_loo_grad(theory.outlier_batch(x_rest, u, 1e7), y, weight, gamma, beta, -1)
    assert max(((loo[n] - limit[n]).abs().max().item() for n in NAMES_BN)) <= 1e-3


def test_without_bn_the_own_gradient_of_a_misfit_outlier_grows_linearly():
    x_rest, y_rest, weight, _, bias, u = outlier_problem()
    label = int(torch.argmin(weight @ u))  # the class the far outlier is least likely to get
    y = torch.cat([y_rest, torch.tensor([label])])
    norms = [theory.grad_norm(theory.linear_own_grads(theory.outlier_batch(x_rest, u, d), y, weight, bias))[-1]
             for d in (1e3, 2e3)]
    assert (norms[1] / norms[0]).item() == pytest.approx(2.0, rel=1e-3)


def test_bad_inputs_say_what_was_wrong():
    x, y, weight, gamma, beta = problem(4)
    with pytest.raises(ValueError, match="at least 2 samples"):
        theory.bn_linear_own_grads(x[:1], y[:1], weight, gamma, beta)
    with pytest.raises(ValueError, match=r"weight must be \[K, p\] with p = 5"):
        theory.bn_linear_own_grads(x, y, weight[:, :3], gamma, beta)
    with pytest.raises(ValueError, match="one entry per output unit"):
        theory.bn_linear_own_grads(x, y, weight, gamma[:2], beta)
    with pytest.raises(ValueError, match="one label per sample"):
        theory.linear_own_grads(x, y[:3], weight, beta)
    with pytest.raises(ValueError, match="flatten the inputs"):
        theory.linear_own_grads(x.view(4, 5, 1), y, weight, beta)
    with pytest.raises(ValueError, match="labels must lie in 0 ... 2"):
        theory.linear_own_grads(x, y + 3, weight, beta)
    with pytest.raises(ValueError, match="at least 3 samples"):
        theory.bn_linear_loo_grad(x[:2], y[:2], weight, gamma, beta, 0)
    with pytest.raises(ValueError, match="outside the batch"):
        theory.bn_linear_loo_grad(x, y, weight, gamma, beta, 4)
    with pytest.raises(ValueError, match="shape of one sample"):
        theory.outlier_batch(x, torch.ones(3, dtype=torch.float64), 10.0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        theory.bn_outlier_limit(1)


def test_the_memorization_simulation_is_deterministic_and_fits_a_near_outlier():
    kwargs = dict(batch_size=16, max_epochs=10, pretrain_epochs=2)
    first = theory.memorization_steps("none", [30.0], [0, 1], **kwargs)
    assert first == theory.memorization_steps("none", [30.0], [0, 1], **kwargs)
    assert all(row["steps"] >= 1 for row in first)
    bn = theory.memorization_steps("batch", [30.0], [0], **kwargs)
    assert 0 <= bn[0]["acc_after"] <= 1
    with pytest.raises(ValueError, match="allowed values: batch, none"):
        theory.memorization_steps("group", [1.0], [0])
    with pytest.raises(ValueError, match="at least 2 samples"):
        theory.steps_to_memorize("batch", 1.0, 0, batch_size=1)


def test_bn_eval_mode_gradients_match_autograd():
    x, y, weight, gamma, beta = problem(6)
    mean, var = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    params = leaves(weight, gamma, beta)
    logits = F.batch_norm(x @ params[0].T, mean, var, params[1], params[2], training=False, eps=theory.BN_EPS)
    losses = F.cross_entropy(logits, y, reduction="none")
    closed = theory.bn_linear_eval_grads(x, y, weight, gamma, beta, mean, var)
    for i in range(6):
        grads = torch.autograd.grad(losses[i], params, retain_graph=True)
        assert max_error({n: closed[n][i] for n in NAMES_BN}, grads, NAMES_BN) <= TOL


def test_linear_parameters_feed_the_closed_forms_of_a_trained_model():
    model, *_ = theory.pretrained_linear("batch", 0, epochs=1)
    p = theory.linear_parameters(model)
    assert set(p) == {"weight", "gamma", "beta", "running_mean", "running_var"}
    assert set(theory.linear_parameters(theory.linear_model("none", 10, 3, 0))) == {"weight", "bias"}


def test_at_the_crossover_distance_the_outlier_doubles_the_variance():
    x_rest, _, weight, gamma, beta, u = outlier_problem()
    crossover = theory.bn_crossover_distance(x_rest, weight, u)
    c = x_rest - x_rest.mean(0)
    s = torch.einsum("rp,pq,rq->r", weight, c.T @ c / len(x_rest), weight)
    k = len(x_rest) / (len(x_rest) + 1)
    for r, d in enumerate(crossover.tolist()):
        sigma = theory.batch_norm_forward(theory.outlier_batch(x_rest, u, d), weight, gamma, beta, eps=0.0)["sigma"]
        assert sigma[r] ** 2 == pytest.approx(2 * k * s[r].item(), rel=1e-9)


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_the_batched_simulation_equals_the_model_by_model_one(norm):
    kwargs = dict(batch_size=32, pretrain_epochs=1, max_epochs=4)
    batched = theory.memorization_steps(norm, [1.0, 30.0], [0, 1], **kwargs)
    for row in batched:
        single = theory.steps_to_memorize(norm, row["distance"], row["seed"], **kwargs)
        assert row["steps"] == single["steps"] or (math.isnan(row["steps"]) and math.isnan(single["steps"]))
        assert row["acc_before"] == pytest.approx(single["acc_before"], abs=1e-12)
        assert row["acc_after"] == pytest.approx(single["acc_after"], abs=1e-12)

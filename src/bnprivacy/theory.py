"""Closed-form per-sample gradients of a linear layer with and without BatchNorm (chapter 5).

The model is one linear layer whose outputs are the logits of a softmax cross-entropy loss:

- without BN: ``logits_j = W x_j + b``;
- with BN (train mode, batch statistics): ``z_j = W x_j``, per output unit r
  ``mu_r = mean_j z_jr``, ``sigma_r^2 = mean_j (z_jr - mu_r)^2 + eps`` (biased variance, as
  PyTorch), ``yhat_jr = (z_jr - mu_r) / sigma_r`` and ``logits_jr = gamma_r yhat_jr + beta_r``.

With ``delta_j = softmax(logits_j) - onehot(y_j)``, centred inputs ``c_j = x_j - xbar`` and the
batch covariance ``Sigma = mean_j c_j c_j^T``, the gradient of sample i's own loss term (batch
statistics as they are, including the paths through them; ``gradients.py`` definition (a)) is

    d l_i / d w_r     = delta_ir (gamma_r / sigma_r) P_r c_i,  P_r = I - Sigma w_r w_r^T / sigma_r^2
    d l_i / d gamma_r = delta_ir yhat_ir,   d l_i / d beta_r = delta_ir

against ``delta_ir x_i`` and ``delta_ir`` without BN. ``c_i`` carries the path through the mean,
the ``Sigma w_r w_r^T`` term the path through the variance. The leave-one-out influence
(definition (b)) follows because the summed-loss batch gradient is the sum of the own gradients.

Every function takes float tensors ``x [B, p]``, integer labels ``y [B]``, ``weight [K, p]`` and
returns per-sample gradients as a dict ``{name: [B, *shape]}`` (or one gradient ``{name: shape}``).
The ``*_limit`` and ``*_asymptote`` functions give the outlier's gradient as its distance from the
batch grows without bound (the proposition of chapter 5).

The second half simulates the memorization argument: how many SGD steps a linear model, with BN or
without, needs to fit one mislabeled outlier (``steps_to_memorize``, one model, the readable
reference; ``memorization_steps``, all seeds and distances as one batched computation).
"""

from __future__ import annotations

import math

import torch

BN_EPS = 1e-5  # PyTorch's BatchNorm default, so that the closed forms match nn.BatchNorm1d


def _check_inputs(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, *vectors: torch.Tensor,
                  batchnorm: bool) -> None:
    if x.ndim != 2:
        raise ValueError(f"x must be a batch of vectors [B, p]; got shape {tuple(x.shape)}: flatten the inputs first")
    if weight.ndim != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight must be [K, p] with p = {x.shape[1]} input features (x is {tuple(x.shape)}); "
                         f"got {tuple(weight.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must hold one label per sample, shape ({x.shape[0]},); got {tuple(y.shape)}")
    if len(y) and (y.min() < 0 or y.max() >= weight.shape[0]):
        raise ValueError(f"labels must lie in 0 ... {weight.shape[0] - 1} (weight has K = {weight.shape[0]} rows)")
    for v in vectors:
        if v.shape != (weight.shape[0],):
            raise ValueError(f"bias, gamma and beta must have one entry per output unit, shape "
                             f"({weight.shape[0]},); got {tuple(v.shape)}")
    if batchnorm and x.shape[0] < 2:
        raise ValueError("BatchNorm in train mode needs a batch of at least 2 samples: the variance of one "
                         "sample is zero and its normalised value undefined; pass a larger batch")


def softmax_residual(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``delta = softmax(logits) - onehot(y)``: the gradient of cross-entropy w.r.t. the logits."""
    return torch.softmax(logits, dim=1) - torch.nn.functional.one_hot(y, logits.shape[1]).to(logits.dtype)


def batch_norm_forward(x: torch.Tensor, weight: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                       eps: float = BN_EPS) -> dict[str, torch.Tensor]:
    """The BN layer's intermediate quantities: centred inputs ``c``, covariance ``Sigma``,
    ``sigma`` per unit, normalised values ``yhat`` and ``logits``."""
    c = x - x.mean(0)
    cov = c.T @ c / len(x)
    sigma = torch.sqrt(torch.einsum("rp,pq,rq->r", weight, cov, weight) + eps)
    yhat = c @ weight.T / sigma
    return {"c": c, "cov": cov, "sigma": sigma, "yhat": yhat, "logits": gamma * yhat + beta}


def linear_own_grads(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample gradients without BN: ``delta_ir x_i`` for ``w_r`` and ``delta_ir`` for ``b_r``.
    Samples are independent, so this is every definition (own, leave-one-out, eval) at once."""
    _check_inputs(x, y, weight, bias, batchnorm=False)
    delta = softmax_residual(x @ weight.T + bias, y)
    return {"weight": delta.unsqueeze(2) * x.unsqueeze(1), "bias": delta}


def bn_linear_own_grads(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, gamma: torch.Tensor,
                        beta: torch.Tensor, eps: float = BN_EPS) -> dict[str, torch.Tensor]:
    """Per-sample own gradients (definition (a)) through BN with the batch's statistics:
    ``delta_ir (gamma_r / sigma_r) P_r c_i`` for ``w_r``, ``delta_ir yhat_ir`` for ``gamma_r``,
    ``delta_ir`` for ``beta_r``. They sum to the gradient of the summed batch loss."""
    _check_inputs(x, y, weight, gamma, beta, batchnorm=True)
    f = batch_norm_forward(x, weight, gamma, beta, eps)
    delta = softmax_residual(f["logits"], y)
    # P_r c_i = c_i - Sigma w_r (w_r . c_i) / sigma_r^2, with w_r . c_i = sigma_r yhat_ir.
    cov_w = weight @ f["cov"]  # row r is Sigma w_r
    projected = f["c"].unsqueeze(1) - f["yhat"].unsqueeze(2) * (cov_w / f["sigma"].unsqueeze(1)).unsqueeze(0)
    scale = delta * gamma / f["sigma"]
    return {"weight": scale.unsqueeze(2) * projected, "gamma": delta * f["yhat"], "beta": delta}


def bn_linear_eval_grads(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, gamma: torch.Tensor,
                         beta: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                         eps: float = BN_EPS) -> dict[str, torch.Tensor]:
    """Per-sample gradients through BN in eval mode (fixed running statistics, definition (c)).
    BN is then a fixed affine map: ``delta_ir gamma_r x_i / sqrt(var_r + eps)`` for ``w_r``, so
    nothing bounds an outlier's gradient; it grows with its distance as without BN."""
    _check_inputs(x, y, weight, gamma, beta, running_mean, running_var, batchnorm=False)
    scale = gamma / torch.sqrt(running_var + eps)
    yhat = (x @ weight.T - running_mean) * scale / gamma
    delta = softmax_residual(gamma * yhat + beta, y)
    return {"weight": (delta * scale).unsqueeze(2) * x.unsqueeze(1), "gamma": delta * yhat, "beta": delta}


def linear_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters of a :func:`linear_model` under the names the closed forms take
    (``weight`` and ``bias``, or ``weight``, ``gamma``, ``beta``, ``running_mean``, ``running_var``)."""
    linear = model[0]
    if len(model) == 1:
        return {"weight": linear.weight.detach(), "bias": linear.bias.detach()}
    bn = model[1]
    return {"weight": linear.weight.detach(), "gamma": bn.weight.detach(), "beta": bn.bias.detach(),
            "running_mean": bn.running_mean.detach(), "running_var": bn.running_var.detach()}


def batch_gradient(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The gradient of the summed loss of a batch from its per-sample own gradients."""
    return {name: g.sum(0) for name, g in grads.items()}


def bn_linear_loo_grad(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, gamma: torch.Tensor,
                       beta: torch.Tensor, i: int, eps: float = BN_EPS) -> dict[str, torch.Tensor]:
    """Leave-one-out influence (definition (b)) of sample ``i``: ``G(B) - G(B without i)`` for the
    summed loss. It differs from i's own gradient because i moves the mean and variance that every
    other sample is normalised with."""
    if not -len(x) <= i < len(x):
        raise ValueError(f"sample index i={i} outside the batch of {len(x)}; allowed values: 0 ... {len(x) - 1}")
    if len(x) < 3:
        raise ValueError("leave-one-out influence under BatchNorm needs a batch of at least 3 samples, so that "
                         "the batch without the sample still has a variance; pass a larger batch")
    keep = torch.ones(len(x), dtype=torch.bool)
    keep[i] = False
    full = batch_gradient(bn_linear_own_grads(x, y, weight, gamma, beta, eps))
    without = batch_gradient(bn_linear_own_grads(x[keep], y[keep], weight, gamma, beta, eps))
    return {name: full[name] - without[name] for name in full}


def grad_norm(grads: dict[str, torch.Tensor], batched: bool = True) -> torch.Tensor:
    """L2 norm over all parameters; per sample (``[B]``) when ``batched``, else one number."""
    if batched:
        return torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
    return torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))


def outlier_batch(x_rest: torch.Tensor, direction: torch.Tensor, distance: float) -> torch.Tensor:
    """The batch ``x_rest`` plus one outlier, last, at ``mean(x_rest) + distance * u`` with ``u``
    the unit vector along ``direction``."""
    if direction.shape != x_rest.shape[1:]:
        raise ValueError(f"direction must have the shape of one sample, {tuple(x_rest.shape[1:])}; "
                         f"got {tuple(direction.shape)}")
    u = direction / direction.norm()
    return torch.cat([x_rest, (x_rest.mean(0) + distance * u).unsqueeze(0)])


def bn_outlier_limit(batch_size: int) -> tuple[float, float]:
    """Normalised values as the outlier's distance d -> infinity (for eps -> 0), for a unit whose
    weight has a component along the outlier's direction: the outlier tends to
    ``sign * sqrt(B - 1)`` and every other sample to ``-sign / sqrt(B - 1)``. The largest value BN can give
    any sample of a batch of B is sqrt(B - 1), whatever its distance."""
    if batch_size < 2:
        raise ValueError(f"batch_size={batch_size}: BatchNorm needs a batch of at least 2 samples")
    return math.sqrt(batch_size - 1), -1 / math.sqrt(batch_size - 1)


def bn_crossover_distance(x_rest: torch.Tensor, weight: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Per unit, the outlier distance ``d* = sqrt(B s_r) / |w_r . u|`` at which the variance the
    outlier adds to the unit equals that of the other samples (``s_r = w_r^T S w_r``, S their
    covariance): below d* BN acts almost as a fixed affine map, above it the outlier sets the
    unit's scale and its normalised value approaches sqrt(B - 1)."""
    c = x_rest - x_rest.mean(0)
    s = torch.einsum("rp,pq,rq->r", weight, c.T @ c / len(x_rest), weight)
    return torch.sqrt((len(x_rest) + 1) * s) / (weight @ (direction / direction.norm())).abs()


def bn_own_grad_limit(y_outlier: int, weight: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                      direction: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """The outlier's own gradient as its distance d -> infinity (eps -> 0): the weight part
    vanishes (see :func:`bn_own_weight_grad_asymptote`), the gamma and beta parts tend to
    ``delta_r yhat_r`` and ``delta_r`` at the limiting logits ``gamma_r sign(w_r . u) sqrt(B-1) + beta_r``."""
    far, _ = bn_outlier_limit(batch_size)
    yhat = torch.sign(weight @ direction) * far
    delta = softmax_residual((gamma * yhat + beta).unsqueeze(0), torch.tensor([y_outlier]))[0]
    return {"weight": torch.zeros_like(weight), "gamma": delta * yhat, "beta": delta}


def bn_own_weight_grad_asymptote(x_rest: torch.Tensor, y_outlier: int, weight: torch.Tensor, gamma: torch.Tensor,
                                 beta: torch.Tensor, direction: torch.Tensor, eps: float = BN_EPS) -> float:
    """The constant C with ``|d l_o / d W| ~ C / d^2`` as the outlier's distance d -> infinity.

    With ``k = (B-1)/B``, ``u`` the unit direction, ``a_r = w_r . u``, ``S`` the covariance of the
    other samples and ``s_r = w_r^T S w_r``, the weight gradient of unit r tends to
    ``delta_r gamma_r B^(3/2) / (d^2 |a_r|^3 sqrt(k)) [(k s_r + eps) u - k a_r S w_r]``: the
    outlier's own deviation is cancelled by the variance it adds, to first order.
    """
    batch = len(x_rest) + 1
    k = (batch - 1) / batch
    u = direction / direction.norm()
    a = weight @ u
    if torch.any(a == 0):
        raise ValueError("a unit's weight is orthogonal to the outlier's direction: its variance does not grow "
                         "with the distance and its weight gradient grows linearly instead; no 1/d^2 asymptote")
    c = x_rest - x_rest.mean(0)
    s_cov = c.T @ c / len(x_rest)
    s = torch.einsum("rp,pq,rq->r", weight, s_cov, weight)
    delta = bn_own_grad_limit(y_outlier, weight, gamma, beta, u, batch)["beta"]
    bracket = (k * s + eps).unsqueeze(1) * u - k * a.unsqueeze(1) * (weight @ s_cov)
    coef = delta * gamma * batch ** 1.5 / (a.abs() ** 3 * math.sqrt(k))
    return float((coef.unsqueeze(1) * bracket).norm())


def bn_loo_grad_limit(x_rest: torch.Tensor, y_rest: torch.Tensor, y_outlier: int, weight: torch.Tensor,
                      gamma: torch.Tensor, beta: torch.Tensor, direction: torch.Tensor,
                      eps: float = BN_EPS) -> dict[str, torch.Tensor]:
    """The outlier's leave-one-out influence as its distance d -> infinity (eps -> 0 in the limit).

    Every weight gradient of the batch with the outlier vanishes (each sample's is divided by a
    sigma that grows like d), so the limit is the gamma/beta gradient of the batch at the limiting
    normalised values of :func:`bn_outlier_limit` minus the whole gradient of the batch without
    the outlier. It is finite: BN bounds the outlier's leave-one-out influence too.
    """
    batch = len(x_rest) + 1
    far, near = bn_outlier_limit(batch)
    sign = torch.sign(weight @ direction)
    yhat = torch.cat([(sign * near).expand(len(x_rest), -1), (sign * far).unsqueeze(0)])
    labels = torch.cat([y_rest, torch.tensor([y_outlier], dtype=y_rest.dtype)])
    delta = softmax_residual(gamma * yhat + beta, labels)
    without = batch_gradient(bn_linear_own_grads(x_rest, y_rest, weight, gamma, beta, eps))
    return {"weight": -without["weight"], "gamma": (delta * yhat).sum(0) - without["gamma"],
            "beta": delta.sum(0) - without["beta"]}


# --- simulation: how many steps until an outlier is fit ---------------------------------------------

SIMULATION_NORMS = ("batch", "none")


def gaussian_mixture(seed: int, n_per_class: int = 40, features: int = 10, classes: int = 3,
                     separation: float = 3.0, n_test_per_class: int = 200):
    """A float64 Gaussian mixture (unit-variance classes, means ``separation`` apart on average),
    a held-out test set, and a random unit direction for an outlier: ``(x, y, x_test, y_test, u)``."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, features, generator=g, dtype=torch.float64) * separation / math.sqrt(2)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = means[y] + torch.randn(len(y), features, generator=g, dtype=torch.float64)
    y_test = torch.arange(classes).repeat_interleave(n_test_per_class)
    x_test = means[y_test] + torch.randn(len(y_test), features, generator=g, dtype=torch.float64)
    u = torch.randn(features, generator=g, dtype=torch.float64)
    return x, y, x_test, y_test, u / u.norm()


def typical_distance(x: torch.Tensor) -> float:
    """Root-mean-square distance of the samples ``x [N, ...]`` from their mean: the unit in which
    the chapter measures an outlier's distance."""
    return float((x - x.mean(0)).flatten(1).pow(2).sum(1).mean().sqrt())


def linear_model(norm: str, features: int, classes: int, seed: int) -> torch.nn.Module:
    """``Linear -> BatchNorm1d`` (no bias: BN's beta replaces it) or ``Linear`` with a bias, float64."""
    if norm not in SIMULATION_NORMS:
        raise ValueError(f"norm={norm!r} is not allowed here; allowed values: {', '.join(SIMULATION_NORMS)}")
    torch.manual_seed(seed)
    if norm == "batch":
        return torch.nn.Sequential(torch.nn.Linear(features, classes, bias=False),
                                   torch.nn.BatchNorm1d(classes)).double()
    return torch.nn.Sequential(torch.nn.Linear(features, classes)).double()


def _sgd_epochs(model, opt, x, y, batch_size, generator, epochs, stop=None):
    """Plain SGD over shuffled batches (the last incomplete batch dropped); the step count at
    which ``stop()`` first holds, or None."""
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            model.train()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if stop is not None and stop():
                return steps
    return None


def _accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def pretrained_linear(norm: str, seed: int, *, batch_size: int = 32, lr: float = 0.1, epochs: int = 20,
                      **mixture):
    """A linear model (:func:`linear_model`) trained by SGD on :func:`gaussian_mixture` ``seed``;
    returns the model, its optimizer, the batch generator and the mixture (x, y, x_test, y_test, u)."""
    if batch_size < 2:
        raise ValueError(f"batch_size={batch_size}: BatchNorm needs batches of at least 2 samples")
    problem = gaussian_mixture(seed, **mixture)
    x, y = problem[0], problem[1]
    model = linear_model(norm, x.shape[1], int(y.max()) + 1, seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed + 10_000)
    _sgd_epochs(model, opt, x, y, batch_size, generator, epochs)
    return model, opt, generator, problem


def steps_to_memorize(norm: str, distance: float, seed: int, *, batch_size: int = 32, lr: float = 0.1,
                      pretrain_epochs: int = 20, max_epochs: int = 60, **mixture) -> dict:
    """Steps of SGD until a mislabeled outlier at ``distance`` from the data mean is fit.

    A linear model (with BN or without) first learns a Gaussian mixture; then one outlier is added
    at ``mean + distance * rms * u`` (``rms``: the root-mean-square distance of the training
    samples from their mean, so ``distance`` is in typical distances) with the label the model finds least likely for it, and training
    continues on the data plus the outlier (shuffled batches, so the outlier is in one batch per
    epoch) until the model, in eval mode (BN's running statistics, as when it is queried), predicts
    its label. Returns the steps (NaN if not fit within ``max_epochs``), and the test accuracy on
    the mixture before the outlier was added and when training stopped.
    """
    model, opt, generator, (x, y, x_test, y_test, u) = pretrained_linear(
        norm, seed, batch_size=batch_size, lr=lr, epochs=pretrain_epochs, **mixture)
    before = _accuracy(model, x_test, y_test)
    outlier = (x.mean(0) + distance * typical_distance(x) * u).unsqueeze(0)
    model.eval()
    with torch.no_grad():
        label = int(model(outlier).argmin())

    def fitted() -> bool:
        model.eval()
        with torch.no_grad():
            return int(model(outlier).argmax()) == label

    steps = _sgd_epochs(model, opt, torch.cat([x, outlier]), torch.cat([y, torch.tensor([label])]),
                        batch_size, generator, max_epochs, fitted)
    return {"steps": float("nan") if steps is None else float(steps), "acc_before": before,
            "acc_after": _accuracy(model, x_test, y_test)}


def memorization_steps(norm: str, distances, seeds, *, batch_size: int = 32, lr: float = 0.1,
                       pretrain_epochs: int = 20, max_epochs: int = 60, momentum: float = 0.1, **mixture) -> list[dict]:
    """:func:`steps_to_memorize` for every (distance, seed) at once, as one batched computation.

    The models of all seeds and distances train side by side as stacked tensors (the linear layer,
    BN with its running statistics updated as ``nn.BatchNorm1d`` does, plain SGD), each with its own
    data, initialisation and batch order, so the result equals running :func:`steps_to_memorize`
    model by model (a test checks it) at a fraction of the Python overhead. Returns one dict per
    (distance, seed) with ``distance``, ``seed``, ``steps``, ``acc_before``, ``acc_after``.
    """
    distances, seeds = [float(d) for d in distances], [int(s) for s in seeds]
    if norm not in SIMULATION_NORMS:
        raise ValueError(f"norm={norm!r} is not allowed here; allowed values: {', '.join(SIMULATION_NORMS)}")
    if batch_size < 2:
        raise ValueError(f"batch_size={batch_size}: BatchNorm needs batches of at least 2 samples")
    problems = [gaussian_mixture(s, **mixture) for s in seeds]
    models = [linear_model(norm, problems[0][0].shape[1], int(problems[0][1].max()) + 1, s) for s in seeds]
    params = {"weight": torch.stack([m[0].weight.detach() for m in models])}
    if norm == "batch":
        params["gamma"] = torch.stack([m[1].weight.detach() for m in models])
        params["beta"] = torch.stack([m[1].bias.detach() for m in models])
    else:
        params["bias"] = torch.stack([m[0].bias.detach() for m in models])
    k = params["weight"].shape[1]
    stats = {"mean": torch.zeros(len(seeds), k, dtype=torch.float64), "var": torch.ones(len(seeds), k, dtype=torch.float64)}
    generators = [torch.Generator().manual_seed(s + 10_000) for s in seeds]
    x = torch.stack([p[0] for p in problems])
    y = torch.stack([p[1] for p in problems])
    _batched_sgd(norm, params, stats, x, y, generators, batch_size, lr, momentum, pretrain_epochs)
    before = _batched_accuracy(norm, params, stats, problems)

    # Every (distance, seed) pair continues from its seed's pretrained state, with its own copy.
    pairs = [(d, i) for d in distances for i in range(len(seeds))]
    index = torch.tensor([i for _, i in pairs])
    params = {n: t[index].clone() for n, t in params.items()}
    stats = {n: t[index].clone() for n, t in stats.items()}
    gens = []
    for _, i in pairs:
        g = torch.Generator()
        g.set_state(generators[i].get_state())
        gens.append(g)
    outliers = torch.stack([problems[i][0].mean(0) + d * typical_distance(problems[i][0]) * problems[i][4]
                            for d, i in pairs])
    with torch.no_grad():
        labels = _batched_logits(norm, params, stats, outliers.unsqueeze(1), train=False)[:, 0].argmin(1)
    x_all = torch.cat([x[index], outliers.unsqueeze(1)], 1)
    y_all = torch.cat([y[index], labels.unsqueeze(1)], 1)
    steps = torch.full((len(pairs),), float("nan"), dtype=torch.float64)
    after = torch.full((len(pairs),), float("nan"), dtype=torch.float64)
    test_problems = [problems[i] for _, i in pairs]

    def check(step):
        with torch.no_grad():
            hit = _batched_logits(norm, params, stats, outliers.unsqueeze(1), train=False)[:, 0].argmax(1) == labels
        new = hit & steps.isnan()
        if new.any():
            steps[new] = float(step)
            acc = _batched_accuracy(norm, params, stats, test_problems)
            after[new] = acc[new]
        return bool((~steps.isnan()).all())

    _batched_sgd(norm, params, stats, x_all, y_all, gens, batch_size, lr, momentum, max_epochs, check)
    final = _batched_accuracy(norm, params, stats, test_problems)
    after = torch.where(after.isnan(), final, after)
    return [{"distance": d, "seed": seeds[i], "steps": float(steps[j]), "acc_before": float(before[i]),
             "acc_after": float(after[j])} for j, (d, i) in enumerate(pairs)]


def _batched_logits(norm, params, stats, x, train: bool):
    z = torch.einsum("mbp,mkp->mbk", x, params["weight"])
    if norm == "none":
        return z + params["bias"].unsqueeze(1)
    if train:
        yhat = (z - z.mean(1, keepdim=True)) / torch.sqrt(z.var(1, unbiased=False, keepdim=True) + BN_EPS)
    else:
        yhat = (z - stats["mean"].unsqueeze(1)) / torch.sqrt(stats["var"].unsqueeze(1) + BN_EPS)
    return params["gamma"].unsqueeze(1) * yhat + params["beta"].unsqueeze(1)


def _batched_accuracy(norm, params, stats, problems) -> torch.Tensor:
    x_test = torch.stack([p[2] for p in problems])
    y_test = torch.stack([p[3] for p in problems])
    with torch.no_grad():
        return (_batched_logits(norm, params, stats, x_test, train=False).argmax(2) == y_test).double().mean(1)


def _batched_sgd(norm, params, stats, x, y, generators, batch_size, lr, momentum, epochs, check=None):
    """SGD on stacked models, each with its own batch order; ``check(step)`` after every step may stop it."""
    rows = torch.arange(len(x)).unsqueeze(1)
    steps = 0
    for _ in range(epochs):
        orders = torch.stack([torch.randperm(x.shape[1], generator=g) for g in generators])
        for start in range(0, x.shape[1] - batch_size + 1, batch_size):
            idx = orders[:, start:start + batch_size]
            xb, yb = x[rows, idx], y[rows, idx]
            leaves = {n: t.requires_grad_() for n, t in params.items()}
            logits = _batched_logits(norm, leaves, stats, xb, train=True)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="sum") / batch_size
            grads = torch.autograd.grad(loss, list(leaves.values()))
            with torch.no_grad():
                if norm == "batch":  # as nn.BatchNorm1d: the forward pass's statistics, unbiased variance
                    z = torch.einsum("mbp,mkp->mbk", xb, params["weight"])
                    stats["mean"].mul_(1 - momentum).add_(momentum * z.mean(1))
                    stats["var"].mul_(1 - momentum).add_(momentum * z.var(1, unbiased=True))
                for (name, t), g in zip(leaves.items(), grads):
                    params[name] = (t - lr * g).detach()
            steps += 1
            if check is not None and check(steps):
                return

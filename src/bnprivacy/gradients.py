"""Per-sample gradients under BatchNorm, defined three ways.

In train mode BatchNorm normalises each sample with the statistics of its batch, so the loss of
sample i depends on every sample of the batch and "the gradient of sample i" needs a definition.
For a batch B and losses ``l_j(theta; B)`` (cross-entropy of sample j, computed with B's statistics):

(a) ``own``: the gradient of sample i's own loss term with the batch statistics as they are,
    ``g_i = d l_i(theta; B) / d theta`` (including the paths through the batch mean and
    variance). The batch gradient of the mean loss is ``mean_i g_i``.
(b) ``loo``: the leave-one-out step influence,
    ``G(B) - G(B \\ {i})`` with ``G(S) = sum_{j in S} d l_j(theta; S) / d theta``: what including i
    changes in the (summed) update, through its own loss *and* through the batch statistics it
    shifts for every other sample. We use the summed loss so that, without any coupling between
    samples, ``G(B) - G(B \\ {i}) = g_i`` exactly; with the mean loss the difference would carry an
    extra ``1/|B|`` scale and a term from the changed batch size.
(c) ``eval``: the gradient of ``l_i`` with the running statistics (eval mode): no coupling.

Without BatchNorm (norm ``none``, ``group`` or ``layer``, whose statistics are per sample) the
three agree; ``tests/test_gradients.py`` shows it. Only the *norms* of these vectors are returned
(one float per sample), which is what the chapters compare.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap
from .privacy.opacus import make_private_module

DEFINITIONS = ("own", "loo", "eval")
METHODS = ("auto", "jacobian", "loop", "vmap", "hooks")
COUPLED_METHODS = ("jacobian", "loop")    # (a) through a BatchNorm batch in train mode
INDEPENDENT_METHODS = ("vmap", "hooks")   # every other case: each sample on its own


def has_batchnorm(model: nn.Module) -> bool:
    """Whether the model contains a BatchNorm layer (which couples a batch in train mode)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _frozen_copy(model: nn.Module, train: bool) -> nn.Module:
    """A copy whose BN layers use batch statistics (train) without updating running ones, or the
    running statistics (eval); measuring gradients must never change the model."""
    clone = copy.deepcopy(model)
    clone.train(train)
    if train:
        for module in clone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                # Without running buffers BN normalises with the batch and updates nothing, which
                # torch.func's transforms require (no in-place update of captured tensors).
                module.track_running_stats = False
                module.running_mean = module.running_var = module.num_batches_tracked = None
    return clone


def _split(model: nn.Module):
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    return params, buffers


def _norms(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-sample L2 norm over all parameters of ``{name: [S, *shape]}``."""
    return torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))


def _check_batch(model: nn.Module, x: torch.Tensor, coupled: bool) -> None:
    if coupled and len(x) < 2:
        raise ValueError(
            "a batch of one sample has no batch statistics: BatchNorm in train mode divides by the "
            "batch's variance, which is undefined for one sample; use a batch of at least 2 or the "
            "'eval' definition (running statistics)"
        )


def per_sample_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, definition: str = "own",
                          *, method: str = "auto", samples=None) -> torch.Tensor:
    """Gradient norms of the samples ``samples`` (default all) of the batch ``(x, y)``.

    ``definition``: ``own`` (a), ``loo`` (b) or ``eval`` (c); see the module docstring. ``method``
    picks how the norms are computed. For a coupled (BatchNorm, train-mode) batch, (a) is
    ``jacobian`` (one batched Jacobian through the shared batch graph) or ``loop`` (one backward
    pass per sample through the same graph). Without coupling, ``vmap`` (``torch.func`` per-sample
    gradients) or ``hooks`` (Opacus's ``GradSampleModule``: one backward pass, per-sample gradients
    from layer hooks). ``auto`` takes, per device, whichever measured faster
    (``benchmarks/gradients.py``, BENCHMARKS.md). The model is never modified. Raises
    ``ValueError`` for an unknown definition or method, a method that does not apply to the batch,
    a sample index outside the batch, or a batch of one with BN in train mode.
    """
    if definition not in DEFINITIONS:
        raise ValueError(f"definition={definition!r} is not allowed; allowed values: {', '.join(DEFINITIONS)}")
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not allowed; allowed values: {', '.join(METHODS)}")
    samples = _check_samples(samples, len(x))
    coupled = definition != "eval" and has_batchnorm(model)
    _check_batch(model, x, coupled)
    if definition == "loo":
        return _loo_norms(_frozen_copy(model, True), x, y, samples)
    frozen = _frozen_copy(model, train=definition == "own")
    method = _pick_method(method, coupled, x.device)
    if method == "hooks":
        return _hook_norms(frozen, x[samples], y[samples])
    if method == "vmap":
        return _independent_norms(frozen, x[samples], y[samples])
    if method == "jacobian":
        return _jacobian_norms(frozen, x, y)[samples]
    return _loop_norms(frozen, x, y, samples)


def _pick_method(method: str, coupled: bool, device: torch.device) -> str:
    """The method for this batch; ``auto`` is the faster one measured on this kind of device."""
    if method == "auto":
        # benchmarks/gradients.py: the loop beats the Jacobian on a CPU (the Jacobian is taken on
        # CUDA); for independent samples vmap beat Opacus's hooks by 1.3-2x on a CPU (BENCHMARKS.md).
        # Neither choice has been measured on CUDA yet.
        if coupled:
            return "jacobian" if device.type == "cuda" else "loop"
        return "vmap"
    allowed = COUPLED_METHODS if coupled else INDEPENDENT_METHODS
    if method not in allowed:
        kind = "a BatchNorm batch in train mode" if coupled else "a batch without coupling"
        raise ValueError(f"method={method!r} does not apply to {kind}; allowed values: auto, {', '.join(allowed)}")
    return method


def _check_samples(samples, batch: int) -> torch.Tensor:
    if samples is None:
        return torch.arange(batch)
    samples = torch.as_tensor(samples, dtype=torch.long).flatten()
    bad = samples[(samples < 0) | (samples >= batch)].tolist()
    if bad:
        raise ValueError(f"sample index(es) {bad} outside the batch; allowed values: 0 ... {batch - 1}")
    return samples


def _independent_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """No coupling: each sample as a batch of one, vectorised with vmap(grad)."""
    params, buffers = _split(model)

    def loss(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    return _norms(vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y))


def _hook_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """No coupling: Opacus's GradSampleModule, whose layer hooks give every sample's gradient
    from one backward pass of the summed loss."""
    from opacus.grad_sample import GradSampleModule

    if has_batchnorm(model):
        # Opacus would swap BatchNorm for GroupNorm, measuring another model.
        raise ValueError("method='hooks' does not apply to a model with BatchNorm; use method='vmap'")
    copied = copy.deepcopy(model).train()  # no BatchNorm or dropout: train mode computes the same
    hooked = GradSampleModule(make_private_module(copied), loss_reduction="sum")
    with warnings.catch_warnings():
        # The inputs need no gradient; Opacus's full backward hooks warn about it, harmlessly.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        F.cross_entropy(hooked(x), y, reduction="sum").backward()
    grads = {name: p.grad_sample for name, p in hooked.named_parameters() if p.requires_grad}
    norms = _norms(grads).detach()
    hooked.remove_hooks()
    return norms


def _batch_losses(model: nn.Module, buffers):
    def losses(p, x, y):
        return F.cross_entropy(functional_call(model, (p, buffers), (x,)), y, reduction="none")
    return losses


def _jacobian_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Coupled batch: the Jacobian of all per-sample losses at once (B vector-Jacobian products)."""
    params, buffers = _split(model)
    return _norms(jacrev(_batch_losses(model, buffers))(params, x, y))


def _loop_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """Coupled batch: one forward, then one backward pass per sample through the shared graph."""
    params = [p for p in model.parameters() if p.requires_grad]
    losses = F.cross_entropy(model(x), y, reduction="none")
    out = []
    for k, i in enumerate(samples.tolist()):
        grads = torch.autograd.grad(losses[i], params, retain_graph=k < len(samples) - 1)
        out.append(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
    return torch.stack(out).detach()


def _loo_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """``|G(B) - G(B \\ {i})|`` for each i, the leave-one-out batches vectorised with vmap."""
    params, buffers = _split(model)
    losses = _batch_losses(model, buffers)

    def summed(p, xb, yb):
        return losses(p, xb, yb).sum()

    full = grad(summed)(params, x, y)
    batch = len(x)
    keep = torch.ones(len(samples), batch, dtype=torch.bool, device=x.device)
    keep[torch.arange(len(samples)), samples.to(x.device)] = False
    x_loo = x.unsqueeze(0).expand(len(samples), *x.shape)[keep].view(len(samples), batch - 1, *x.shape[1:])
    y_loo = y.unsqueeze(0).expand(len(samples), batch)[keep].view(len(samples), batch - 1)
    if batch - 1 < 2 and has_batchnorm(model):
        raise ValueError("leave-one-out influence with BatchNorm needs a batch of at least 3 samples")
    without = vmap(grad(summed), in_dims=(None, 0, 0))(params, x_loo, y_loo)
    return _norms({name: full[name].unsqueeze(0) - without[name] for name in full})


def probe_norms(model: nn.Module, x_base: torch.Tensor, y_base: torch.Tensor, x_probe: torch.Tensor,
                y_probe: torch.Tensor, *, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Definitions (a) and (b) for probe samples inserted one at a time into a batch.

    For each probe p the batch is ``B_p = base + [p]`` (train mode, batch statistics of ``B_p``).
    Returns ``own[p] = |d l_p(theta; B_p)/d theta|`` (a) and
    ``loo[p] = |G(B_p) - G(base)|`` (b), the change that adding p makes to the summed-loss
    gradient of the batch. All probes are computed at once with vmap, ``chunk`` at a time.
    """
    if len(x_base) + 1 < 2 or (has_batchnorm(model) and len(x_base) < 2):
        raise ValueError("probing needs a base batch of at least 2 samples")
    frozen = _frozen_copy(model, True)
    params, buffers = _split(frozen)
    losses = _batch_losses(frozen, buffers)

    def last_loss(p, xb, yb):
        return losses(p, xb, yb)[-1]

    def summed(p, xb, yb):
        return losses(p, xb, yb).sum()

    base = grad(summed)(params, x_base, y_base)
    own, loo = [], []
    for start in range(0, len(x_probe), chunk):
        xp, yp = x_probe[start:start + chunk], y_probe[start:start + chunk]
        xb = torch.cat([x_base.unsqueeze(0).expand(len(xp), *x_base.shape), xp.unsqueeze(1)], dim=1)
        yb = torch.cat([y_base.unsqueeze(0).expand(len(yp), -1), yp.unsqueeze(1)], dim=1)
        own.append(_norms(vmap(grad(last_loss), in_dims=(None, 0, 0))(params, xb, yb)))
        with_p = vmap(grad(summed), in_dims=(None, 0, 0))(params, xb, yb)
        loo.append(_norms({name: with_p[name] - base[name].unsqueeze(0) for name in base}))
    return torch.cat(own), torch.cat(loo)

"""DP-SGD shadow runs with Opacus, the accountant's epsilon, and an empirical epsilon lower bound.

**Why GroupNorm.** DP-SGD clips each sample's gradient, so every sample's gradient must be defined
on its own. BatchNorm in train mode couples the samples of a batch (each output depends on the
batch statistics), and its running statistics are a non-private channel; Opacus refuses it and
``ModuleValidator.fix`` swaps every BatchNorm for a GroupNorm. Opacus's GroupNorm has ``min(32, C)``
groups, ours (``norm="group"``) at least four channels per group, so a BN model "fixed" by Opacus
is a different network from our GroupNorm models. To separate what GroupNorm does from what
DP-SGD does, a DP run trains *our* ``norm="group"`` architecture (:func:`dp_config` swaps it in),
the same network as the non-private GroupNorm baseline; every model still goes through
:func:`make_private_module`, which validates it with Opacus and fixes what Opacus can fix.

**DP shadow models.** A :class:`DPRunSpec` is a shadow run (balanced inclusion masks, model k's
initialisation from ``(seed, k)``) whose models are trained one at a time with Opacus: Poisson
sampling of the model's own subset at rate ``q = 1 / ceil(n_k / batch_size)`` (its sampling
generator seeded from ``(seed, k)``), per-sample clipping at ``max_grad_norm``, Gaussian noise from
a generator of its own (seeded from ``(seed, k)``), and ``BatchMemoryManager`` splitting a logical
batch into physical batches of at most ``max_physical_batch``. The noise multiplier is the one
``make_private_with_epsilon`` picks for ``(epsilon, delta)`` after ``epochs`` epochs (its search,
reproduced so that it always ends, runs before any training and is cached: :func:`noise_multiplier`,
:func:`planned_noise`). ``epsilon = inf`` trains the same model through the same
Opacus path with per-sample clipping and no noise: the DP recipe without its noise. (Without
clipping as well it would be ordinary training, which the engine's non-private runs already are;
and a learning rate tuned for clipped gradients can diverge on unclipped ones.) The run is stored
by :func:`store.shadow_run` (atomic, checksummed chunks of one model each, so a killed run resumes
at the model it was training) and is an ordinary :class:`store.ShadowRun`: the attacks and
memorization estimators apply unchanged.

**Empirical epsilon.** Any test that tells "x was in the training set" from "it was not" on the
output of an (epsilon, delta)-DP mechanism satisfies ``TPR <= e^eps FPR + delta`` and
``1 - FPR <= e^eps (1 - TPR) + delta`` (Kairouz et al. 2015). A membership attack's TPR and FPR
therefore bound epsilon from below (Jagielski et al. 2020, Nasr et al. 2021):
``eps >= max(log((TPR - delta) / FPR), log((1 - FPR - delta) / (1 - TPR)))``, here with one-sided
Clopper-Pearson bounds (TPR from below, FPR from above) so that the bound holds at a stated
confidence. The threshold is chosen on one half of the (target, sample) pairs and the bound is
evaluated on the other half: maximising over thresholds on the same pairs would be optimistic.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .stats import clopper_pearson  # noqa: F401  (one implementation, re-exported)
from .config import Config
from .ensemble import EnsembleResult, check_masks, data_generator, init_model, model_seed
from .store import RunSpec, ShadowRun, shadow_run, spec_key
from .training import TrainingDiverged, lr_factor, make_optimizer

ACCOUNTANTS = ("rdp", "prv")
DP_NORMS = ("group", "layer", "none")
DEFAULT_DELTA = 1e-5
# The largest finite budget: e^100 bounds a likelihood ratio by about 1e43, which says nothing, and
# the noise such budgets need is so small that the PRV accountant takes tens of seconds per
# evaluation (measured: 20 s at a noise multiplier of 0.1). epsilon = inf trains without noise.
MAX_EPSILON = 100.0
# The noise search of Opacus's get_noise_multiplier (opacus.accountants.utils), reproduced by
# noise_multiplier: its largest noise multiplier and its tolerance on epsilon.
MAX_SIGMA = 1e6
EPSILON_TOLERANCE = 0.01
# Halvings of the noise interval before the search gives up: a search that converges needs about
# 30 (float64 cannot halve an interval of at most 2e6 more than about 75 times).
MAX_BISECTIONS = 100


class UnsupportedModule(ValueError):
    """A module Opacus cannot train with per-sample gradients, even after ``ModuleValidator.fix``."""


# --- models Opacus can train ----------------------------------------------------------------------

def dp_config(cfg: Config) -> Config:
    """``cfg`` for DP-SGD: BatchNorm replaced by the project's GroupNorm (module docstring)."""
    return cfg.replace(norm="group") if cfg.norm == "batch" else cfg


def make_private_module(module: nn.Module) -> nn.Module:
    """``module`` ready for Opacus: validated, fixed by ``ModuleValidator.fix`` where needed
    (BatchNorm -> GroupNorm, ...), and with in-place activations made out-of-place.

    Raises :class:`UnsupportedModule` naming every submodule Opacus still cannot handle.
    """
    from opacus.grad_sample import GradSampleModule
    from opacus.validators import ModuleValidator

    if ModuleValidator.validate(module, strict=False):
        module = ModuleValidator.fix(module)
    for sub in module.modules():
        # Opacus's backward hooks return views that an in-place ReLU would overwrite.
        if hasattr(sub, "inplace"):
            sub.inplace = False
    problems = [str(e) for e in ModuleValidator.validate(module, strict=False)]
    problems += [str(e) for e in GradSampleModule.validate(module, strict=False)]
    if problems:
        raise UnsupportedModule(
            "Opacus cannot compute per-sample gradients of this model even after "
            f"ModuleValidator.fix: {'; '.join(problems)}. Replace the named module(s) by layers "
            "without buffers (e.g. GroupNorm instead of a custom normalisation) or register a "
            "grad sampler for them (opacus.grad_sample.register_grad_sampler)")
    return module


# --- the run --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DPRunSpec:
    """A shadow run of ``n_models`` models of ``config`` trained with DP-SGD at ``(epsilon, delta)``.

    ``config.batch_size`` is the expected logical batch (Opacus samples model k's ``n_k`` training
    samples at the Poisson rate ``1 / ceil(n_k / batch_size)``), ``config.lr`` and
    ``config.epochs`` the recipe. ``epsilon = math.inf`` trains the same model with the same
    batches and clipping but no noise (not private). ``delta = 0`` takes ``min(1e-5, 1 / (10 n))``;
    any delta must be below ``1 / n`` for the largest training set n. ``max_physical_batch`` bounds the memory of one
    forward pass (``BatchMemoryManager``). Masks are balanced (each sample IN for half the models).
    """

    config: Config
    n_models: int
    epsilon: float
    delta: float = 0.0
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    max_physical_batch: int = 256
    mask_seed: int = 0

    def __post_init__(self):
        check_epsilon(self.epsilon)
        _check_real("delta", self.delta, "a number in [0, 1): 0 for the default min(1e-5, 1/(10 n))",
                    0 <= self.delta < 1)
        check_max_grad_norm(self.max_grad_norm)
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant={self.accountant!r} is not allowed; allowed values: "
                             f"{', '.join(ACCOUNTANTS)}")
        if isinstance(self.max_physical_batch, bool) or not isinstance(self.max_physical_batch, int) \
                or self.max_physical_batch < 1:
            raise ValueError(f"max_physical_batch={self.max_physical_batch!r} is not allowed; "
                             "allowed values: an integer >= 1")
        if self.config.norm not in DP_NORMS:
            raise ValueError(f"DP-SGD cannot train norm={self.config.norm!r}: per-sample gradients "
                             "are undefined when BatchNorm couples the batch. Use "
                             f"{', '.join(repr(n) for n in DP_NORMS)}; dp_config(cfg) swaps "
                             "BatchNorm for GroupNorm")
        _ = self.shadow  # RunSpec validates n_models (an even number >= 2)

    @property
    def shadow(self) -> RunSpec:
        """The non-private run with the same models, masks and recipe."""
        return RunSpec(self.config, self.n_models, mask_seed=self.mask_seed)

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)

    def to_dict(self) -> dict:
        dp = {"epsilon": self.epsilon if self.private else "inf", "delta": self.delta,
              "max_grad_norm": self.max_grad_norm, "accountant": self.accountant}
        # The physical batch splits a logical batch for memory only: it changes nothing computed.
        return {**self.shadow.to_dict(), "dp": dp}

    def key(self) -> str:
        return spec_key(self.to_dict(), self.config)

    def masks(self, pool_size: int) -> torch.Tensor:
        return self.shadow.masks(pool_size)

    def probe(self):
        return None

    def resolve_delta(self, masks: torch.Tensor) -> float:
        """The delta of this run for training sets of the sizes in ``masks`` (checked < 1/n)."""
        return resolve_delta(self.delta, int(masks.sum(1).max()))

    def train(self, data, masks, models: list[int], *, strategy: str = "loop",
              progress: bool = False) -> EnsembleResult:
        """Train models ``models`` one at a time with DP-SGD (``strategy`` is ignored: Opacus
        needs ordinary modules)."""
        check_masks(masks, len(data.y_train), self.config.batch_size)
        delta = self.resolve_delta(masks)
        parts = [train_dp_model(self, data, masks[k].nonzero().squeeze(1), k, delta, progress)
                 for k in models]
        history = pd.concat([p[1] for p in parts], ignore_index=True)
        privacy = pd.DataFrame([p[2] for p in parts])
        return EnsembleResult(list(models), [p[0] for p in parts], history, tables={"privacy": privacy})


def dp_shadow_run(spec: DPRunSpec, data=None, *, chunk_size: int = 1, queries: int = 2,
                  progress: bool = True, executor: str = "local", address: str | None = None,
                  cpus_per_task: int | None = None, max_retries: int = 2) -> ShadowRun:
    """Train (or resume, or load) the DP shadow run ``spec``; an ordinary ``ShadowRun``.

    ``chunk_size=1`` stores every model as soon as it is trained, so an interrupted run loses at
    most the model in progress. The privacy accounting of every model is in :func:`run_privacy`.
    ``executor="ray"`` (with ``address``, ``cpus_per_task``, ``max_retries``) trains the models as
    Ray tasks, as in :func:`bnprivacy.store.shadow_run`; the workers need Opacus.
    """
    from .data import load_dataset
    from .training import resolve_device

    if data is None:
        data = load_dataset(spec.config, resolve_device(spec.config))
    planned_noise(spec, spec.masks(len(data.y_train)))  # a bad delta or epsilon fails before any training
    return shadow_run(spec, data, chunk_size=chunk_size, queries=queries, progress=progress, executor=executor,
                      address=address, cpus_per_task=cpus_per_task, max_retries=max_retries)


def run_privacy(run: ShadowRun) -> pd.DataFrame:
    """Per model of a DP run: noise multiplier, sampling rate, steps, delta and the accountant's
    epsilon (``inf`` for a non-private run)."""
    from .store import chunk_table

    return chunk_table(run, "privacy")


def check_epsilon(epsilon) -> None:
    """Raise ``ValueError`` unless ``epsilon`` is a number in ``(0, MAX_EPSILON]`` or ``math.inf``
    (no noise, no privacy)."""
    _check_real("epsilon", epsilon, f"a number > 0 and <= {MAX_EPSILON:g} (larger budgets guarantee nothing), "
                "or math.inf for clipping without noise",
                not isinstance(epsilon, bool) and isinstance(epsilon, (int, float))
                and (0 < epsilon <= MAX_EPSILON or epsilon == math.inf))


def check_max_grad_norm(max_grad_norm) -> None:
    """Raise ``ValueError`` unless the clipping norm is a finite number > 0 (an infinite one clips
    nothing, and the noise scaled by it is infinite)."""
    _check_real("max_grad_norm", max_grad_norm, "a finite number > 0 (the per-sample clipping norm), e.g. 1.0",
                isinstance(max_grad_norm, (int, float)) and 0 < max_grad_norm < math.inf)


def resolve_delta(delta: float, n: int) -> float:
    """``delta`` checked against a training set of ``n`` samples; 0 -> ``min(1e-5, 1/(10 n))``.

    A delta of ``1/n`` or more allows a mechanism that publishes one random training sample in
    the clear, so it is refused.
    """
    if delta == 0:
        return min(DEFAULT_DELTA, 1 / (10 * n))
    if delta >= 1 / n:
        raise ValueError(f"delta={delta:g} is not below 1/n = {1 / n:.3g} for a training set of "
                         f"n={n} samples: such a delta allows publishing a training sample in the "
                         f"clear. Use delta < 1/n, e.g. delta={min(DEFAULT_DELTA, 1 / (10 * n)):.1g}, "
                         "or 0 for that default")
    return float(delta)


def _check_real(name: str, value, allowed: str, ok: bool) -> None:
    if not ok or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} is not allowed; allowed values: {allowed}")


# --- training one DP model ------------------------------------------------------------------------

def train_dp_model(spec: DPRunSpec, data, subset: torch.Tensor, model: int, delta: float,
                   progress: bool = False) -> tuple[dict, pd.DataFrame, dict]:
    """Train model ``model`` of ``spec`` on the pool samples ``subset`` with DP-SGD.

    Returns its state dict (CPU), its per-epoch history and its privacy accounting row.
    """
    from torch.utils.data import DataLoader, TensorDataset
    from tqdm.auto import tqdm

    cfg, device = spec.config, data.x_train.device
    net = make_private_module(init_model(cfg, data, model)).to(device)
    optimizer = make_optimizer(net.parameters(), cfg)
    # The loader yields pool indices; images are gathered on the device in one indexing.
    loader = DataLoader(TensorDataset(subset.cpu()), batch_size=cfg.batch_size,
                        generator=data_generator(cfg, model))
    net, optimizer, loader = _make_private(spec, net, optimizer, loader, model, delta)
    plain = net._module
    steps_per_epoch, step, rows = len(loader), 0, []
    bar = tqdm(total=cfg.epochs, desc=f"DP model {model} (eps={spec.epsilon:g})", unit="epoch",
               leave=False, disable=not progress)
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        net.train()
        loss_sum = seen = correct = 0.0
        with _physical_batches(loader, optimizer, spec) as batches:
            for (idx,) in batches:
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(cfg, step, steps_per_epoch * cfg.epochs)
                x, y = _batch(cfg, data, idx.to(device), model, epoch, step)
                logits = net(x)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                with warnings.catch_warnings():
                    # Opacus's hooks on the first layer fire without input gradients: expected.
                    warnings.filterwarnings("ignore", message="Full backward hook")
                    loss.backward()
                optimizer.step()
                step += not getattr(optimizer, "_is_last_step_skipped", False)
                loss_sum += float(loss.detach()) * len(y)
                seen += len(y)
                correct += float((logits.detach().argmax(-1) == y).sum())
        if not math.isfinite(loss_sum):
            raise TrainingDiverged(
                f"DP-SGD diverged: the loss of model {model} became non-finite in epoch {epoch} "
                f"(epsilon={spec.epsilon:g}, lr={cfg.lr}); lower the learning rate (e.g. "
                f"lr={cfg.lr / 4:g}) or the clipping norm")
        test_loss, test_acc = _evaluate(plain, data.x_test, data.y_test)
        rows.append(dict(model=model, epoch=epoch, lr=optimizer.param_groups[0]["lr"],
                         train_loss=loss_sum / max(seen, 1), train_acc=correct / max(seen, 1),
                         test_loss=test_loss, test_acc=test_acc, seconds=time.perf_counter() - started))
        bar.update(1)
        bar.set_postfix(test_acc=f"{test_acc:.3f}")
    bar.close()
    state = {name: t.detach().cpu().clone() for name, t in plain.state_dict().items()}
    return state, pd.DataFrame(rows), _privacy_row(spec, optimizer, model, len(subset), loader, step, delta)


def _make_private(spec: DPRunSpec, net, optimizer, loader, model: int, delta: float):
    """Opacus's ``make_private_with_epsilon``, with the noise multiplier's search bounded and cached
    (``epsilon = inf``: noise multiplier 0, per-sample clipping kept).

    ``make_private_with_epsilon`` is ``get_noise_multiplier`` (a binary search over the
    accountant, about a second) followed by ``make_private``; :func:`noise_multiplier` is that
    search, reproduced so that it always ends. Poisson sampling gives model k the rate
    ``q = 1 / ceil(n_k / batch_size)`` (:func:`steps_per_epoch`), which takes only a few values over a
    run's models, so the search is cached by ``(epsilon, delta, q, steps)``: the same sigma, found
    once (by :func:`planned_noise` before any training).
    """
    from opacus import PrivacyEngine

    cfg = spec.config
    noise = torch.Generator(device=data_device(net)).manual_seed(model_seed(cfg.seed, model) + 2)
    sample_rate = 1 / len(loader)  # what Opacus's DPDataLoader samples at
    sigma = 0.0
    if spec.private:
        sigma = noise_multiplier(spec.epsilon, delta, sample_rate, len(loader) * cfg.epochs, spec.accountant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns that a seeded generator is not secure
        engine = PrivacyEngine(accountant=spec.accountant)
        net, optimizer, loader = engine.make_private(
            module=net, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma,
            max_grad_norm=spec.max_grad_norm, noise_generator=noise)
    return net, optimizer, loader


def data_device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Logical batches per epoch of a model with ``n`` training samples: ``len`` of its
    ``DataLoader(batch_size=batch_size)``, which :func:`_make_private` turns into the Poisson rate
    ``1 / steps_per_epoch`` and the ``steps_per_epoch * epochs`` steps the noise is searched for."""
    return -(-int(n) // int(batch_size))


def planned_noise(spec: DPRunSpec, masks: torch.Tensor) -> pd.DataFrame:
    """Per model of ``spec``: training-set size ``n``, ``delta``, Poisson ``sample_rate``, ``steps``
    and the ``noise_multiplier`` its DP-SGD training will use, found now (and cached, so training
    reuses it): an epsilon out of reach fails here, before any training. Noise 0 at ``epsilon = inf``.
    """
    delta, cfg = spec.resolve_delta(masks), spec.config
    rows = []
    for model, n in enumerate(masks.sum(1).tolist()):
        per_epoch = steps_per_epoch(n, cfg.batch_size)
        rate, steps = 1 / per_epoch, per_epoch * cfg.epochs  # exactly as _make_private computes them
        sigma = 0.0
        if spec.private:
            try:
                sigma = noise_multiplier(spec.epsilon, delta, rate, steps, spec.accountant)
            except ValueError as error:
                raise ValueError(f"The DP run at epsilon={spec.epsilon:g} cannot train model {model} ({int(n)} "
                                 f"training samples, batch_size={cfg.batch_size}, epochs={cfg.epochs}): "
                                 f"{error}") from None
        rows.append(dict(model=model, n=int(n), delta=delta, sample_rate=rate, steps=steps, noise_multiplier=sigma))
    return pd.DataFrame(rows)


@functools.lru_cache(maxsize=256)
def noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int,
                     accountant: str = "rdp") -> float:
    """The noise multiplier Opacus's ``make_private_with_epsilon`` picks for ``(epsilon, delta)``
    after ``steps`` steps at sampling rate ``sample_rate``.

    Opacus's ``get_noise_multiplier`` search, step for step (the same accountant evaluations, so
    the same sigma): double ``sigma`` from 10 until the accountant's epsilon is at most ``epsilon``
    (refusing noise above ``MAX_SIGMA``), then bisect until it lies within ``EPSILON_TOLERANCE``
    below. Unlike Opacus's, it always ends: a non-finite epsilon of the accountant counts as too
    large, and a bisection that does not converge within ``MAX_BISECTIONS`` halvings raises (Opacus
    loops forever, e.g. for a target of 1e30, which its absolute tolerance cannot resolve). An
    epsilon above ``MAX_EPSILON`` is refused up front, and so is one below the accountant's
    :func:`epsilon_floor`, which Opacus refuses only after doubling the noise to its limit.
    Raises ``ValueError`` saying what to change when no noise multiplier reaches ``epsilon``.
    """
    _check_search(epsilon, delta, sample_rate, steps, accountant)
    where = (f"with the {accountant} accountant at delta={delta:g}, {steps} steps at sampling rate "
             f"{sample_rate:.4g}")
    floor = epsilon_floor(delta, accountant)
    if epsilon < floor:  # Opacus would double the noise up to MAX_SIGMA first, a minute at some rates
        raise ValueError(
            f"epsilon={epsilon:g} is out of reach {where}: this accountant certifies no epsilon below {floor:.3g} "
            "at this delta, however much noise. Raise epsilon above that, allow a larger delta, or use the prv "
            "accountant")
    epsilon_at = _epsilon_of_noise(accountant, delta, sample_rate, steps)
    sigma_high, eps_high = _noise_below(epsilon, epsilon_at, where)
    return _bisect_noise(epsilon, epsilon_at, sigma_high, eps_high, where)


def _epsilon_of_noise(accountant: str, delta: float, sample_rate: float, steps: int):
    """``sigma -> epsilon`` of the accountant, evaluated as Opacus's search does (one accountant,
    its history replaced)."""
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)

    def epsilon_at(sigma) -> float:
        acc.history = [(sigma, sample_rate, steps)]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order")  # the search probes extremes
            return float(acc.get_epsilon(delta=delta))

    return epsilon_at


def _noise_below(epsilon: float, epsilon_at, where: str):
    """Opacus's first phase: double sigma from 10 until its epsilon is at most ``epsilon``; at most
    17 evaluations, since it raises once sigma passes ``MAX_SIGMA``."""
    sigma_high, eps_high = 10, math.inf
    while not eps_high <= epsilon:  # a NaN epsilon counts as too large (Opacus stops at it)
        sigma_high = 2 * sigma_high
        eps_high = epsilon_at(sigma_high)
        if sigma_high > MAX_SIGMA:
            raise ValueError(
                f"epsilon={epsilon:g} is out of reach {where}: even a noise multiplier of {sigma_high:.3g} gives "
                f"epsilon {eps_high:.3g} (the search stops above {MAX_SIGMA:g}, as Opacus's does). Raise epsilon "
                "above that, or take fewer steps (fewer epochs), sample less (a smaller batch) or allow a larger delta")
    return sigma_high, eps_high


def _bisect_noise(epsilon: float, epsilon_at, sigma_high, eps_high: float, where: str) -> float:
    """Opacus's second phase: bisect ``[0, sigma_high]`` until the epsilon of ``sigma_high`` lies
    within ``EPSILON_TOLERANCE`` below ``epsilon``, in at most ``MAX_BISECTIONS`` evaluations."""
    sigma_low = 0
    for _ in range(MAX_BISECTIONS):
        if epsilon - eps_high <= EPSILON_TOLERANCE:
            return float(sigma_high)
        sigma = (sigma_low + sigma_high) / 2
        eps = epsilon_at(sigma)
        if eps < epsilon:
            sigma_high, eps_high = sigma, eps
        else:
            sigma_low = sigma
    raise ValueError(
        f"the noise search for epsilon={epsilon:g} {where} did not come within {EPSILON_TOLERANCE:g} of it in "
        f"{MAX_BISECTIONS} halvings (closest from below: epsilon {eps_high:.6g} at noise multiplier "
        f"{sigma_high:.6g}): the accountant's epsilon jumps over the target. Choose another epsilon or accountant")


def epsilon_floor(delta: float, accountant: str = "rdp") -> float:
    """The least epsilon ``accountant`` can certify at ``delta`` with any noise: the RDP accountant
    converts to (epsilon, delta) at orders up to 63, which costs epsilon even at zero Renyi
    divergence (about 0.10 at delta = 1e-5); the PRV accountant has no such floor (0)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import get_privacy_spent

    if accountant != "rdp":
        return 0.0
    orders = RDPAccountant.DEFAULT_ALPHAS
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order")  # the largest order, as expected
        eps, _ = get_privacy_spent(orders=orders, rdp=np.zeros(len(orders)), delta=delta)
    return float(eps)


def _check_search(epsilon, delta, sample_rate, steps, accountant) -> None:
    """Refuse what would make the noise search meaningless or endless (NaN compares False everywhere)."""
    check_epsilon(epsilon)
    if math.isinf(epsilon):
        raise ValueError("epsilon=inf needs no noise search: it trains with noise multiplier 0")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant={accountant!r} is not allowed; allowed values: {', '.join(ACCOUNTANTS)}")
    _check_real("delta", delta, "a number in (0, 1)", isinstance(delta, (int, float)) and 0 < delta < 1)
    _check_real("sample_rate", sample_rate, "a number in (0, 1]",
                isinstance(sample_rate, (int, float)) and 0 < sample_rate <= 1)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} is not allowed; allowed values: an integer >= 1")


def _physical_batches(loader, optimizer, spec: DPRunSpec):
    """Logical Poisson batches split into physical ones of at most ``max_physical_batch``
    (DP-SGD steps once per logical batch)."""
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    return BatchMemoryManager(data_loader=loader, max_physical_batch_size=spec.max_physical_batch,
                              optimizer=optimizer)


def _batch(cfg: Config, data, idx: torch.Tensor, model: int, epoch: int, step: int):
    """Images and labels of pool indices ``idx``, augmented like the engine when it augments."""
    from .data import augmentation_enabled, flip_crop

    x, y = data.x_train[idx], data.y_train[idx]
    if augmentation_enabled(cfg, data) and len(idx):
        generator = torch.Generator(device=x.device).manual_seed(
            model_seed(cfg.seed, model) + 3 + 1_000_003 * epoch + step)
        x = flip_crop(x, generator)
    return x, y


@torch.no_grad()
def _evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> tuple[float, float]:
    was_training = net.training
    net.eval()
    loss = correct = 0.0
    for start in range(0, len(y), batch):
        logits = net(x[start:start + batch]).float()
        loss += float(F.cross_entropy(logits, y[start:start + batch], reduction="sum"))
        correct += float((logits.argmax(-1) == y[start:start + batch]).sum())
    net.train(was_training)
    return loss / len(y), correct / len(y)


def _privacy_row(spec: DPRunSpec, optimizer, model: int, n: int, loader, steps: int, delta: float) -> dict:
    sigma, rate = float(optimizer.noise_multiplier), float(loader.sample_rate)
    epsilon = accountant_epsilon(sigma, rate, steps, delta, spec.accountant) if spec.private else math.inf
    return dict(model=model, n=n, delta=delta, sample_rate=rate, steps=steps, max_grad_norm=spec.max_grad_norm,
                noise_multiplier=sigma, epsilon=epsilon)


# --- accounting -----------------------------------------------------------------------------------

def accountant_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                       accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of ``steps`` Poisson-subsampled Gaussian steps (noise multiplier
    ``sigma``, sampling rate ``q``), by Opacus's ``accountant`` (``rdp`` or ``prv``)."""
    from opacus.accountants import create_accountant

    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant={accountant!r} is not allowed; allowed values: {', '.join(ACCOUNTANTS)}")
    finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (noise_multiplier, sample_rate, steps, delta))
    # A NaN passes every comparison below as False, and the accountant then searches forever.
    if not finite or noise_multiplier <= 0 or not 0 < sample_rate <= 1 or steps < 1 or not 0 < delta < 1:
        raise ValueError(f"accountant_epsilon needs noise_multiplier > 0, 0 < sample_rate <= 1, "
                         f"steps >= 1 and 0 < delta < 1; got {noise_multiplier}, {sample_rate}, "
                         f"{steps}, {delta}")
    acc = create_accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, int(steps))]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order")
        return float(acc.get_epsilon(delta))


# --- empirical epsilon ----------------------------------------------------------------------------

def epsilon_lower_bound(tp, fp, fn, tn, delta: float = 0.0, confidence: float = 0.95):
    """Lower bound on epsilon implied by an attack's confusion counts, at ``confidence``.

    With ``TPR_lo`` and ``FPR_hi`` one-sided Clopper-Pearson bounds (each at level
    ``(1 - confidence) / 2``, so both hold together with probability ``confidence``):
    ``max(0, log((TPR_lo - delta) / FPR_hi), log((1 - FPR_hi - delta) / (1 - TPR_lo)))``.
    Arrays of counts give an array of bounds.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} is not allowed; allowed values: a number in (0, 1)")
    alpha = (1 - confidence) / 2
    tpr_lo, _ = clopper_pearson(tp, np.asarray(tp) + np.asarray(fn), alpha)
    _, fpr_hi = clopper_pearson(fp, np.asarray(fp) + np.asarray(tn), alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.log(np.clip(tpr_lo - delta, 0, None) / fpr_hi)
        second = np.log(np.clip(1 - fpr_hi - delta, 0, None) / (1 - tpr_lo))
    bound = np.fmax(np.fmax(np.nan_to_num(first, nan=0.0, neginf=0.0),
                            np.nan_to_num(second, nan=0.0, neginf=0.0)), 0.0)
    return float(bound) if bound.ndim == 0 else bound


def empirical_epsilon(scores, masks, *, delta: float = 0.0, confidence: float = 0.95, seed: int = 0,
                      select=None) -> dict:
    """Empirical epsilon lower bound of an attack's scores ``[targets, P]`` against ``masks``.

    The (target, sample) pairs are split at random into two halves: the threshold ("member" when
    score >= threshold) that maximises the bound on the first half is evaluated on the second,
    so the reported bound is not inflated by the choice of threshold. ``select`` (bool ``[P]``)
    restricts the pairs to some samples (e.g. canaries). The Clopper-Pearson intervals treat the
    pairs as independent trials; pairs of one target model are not, so the stated confidence is
    nominal. Returns the bound and its counts.
    """
    _check_real("delta", delta, "a number in [0, 1)", isinstance(delta, (int, float)) and 0 <= delta < 1)
    _check_real("confidence", confidence, "a number in (0, 1), e.g. 0.95",
                isinstance(confidence, (int, float)) and 0 < confidence < 1)
    scores, members = np.asarray(scores, dtype=np.float64), np.asarray(masks, dtype=bool)
    if select is not None:
        scores, members = scores[:, np.asarray(select)], members[:, np.asarray(select)]
    keep = np.isfinite(scores.ravel())
    scores, members = scores.ravel()[keep], members.ravel()[keep]
    if members.all() or not members.any():
        raise ValueError("an empirical epsilon needs both members and non-members among the pairs")
    half = np.random.default_rng(seed).permutation(len(scores)) % 2 == 0
    candidates = np.unique(scores[half])
    tp, fp, fn, tn = _counts(scores[half], members[half], candidates)
    best = candidates[int(np.argmax(epsilon_lower_bound(tp, fp, fn, tn, delta, confidence)))]
    tp, fp, fn, tn = (int(c[0]) for c in _counts(scores[~half], members[~half], np.array([best])))
    return {"epsilon_lb": epsilon_lower_bound(tp, fp, fn, tn, delta, confidence), "threshold": float(best),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn, "tpr": tp / max(tp + fn, 1), "fpr": fp / max(fp + tn, 1),
            "confidence": confidence}


def _counts(scores: np.ndarray, members: np.ndarray, thresholds: np.ndarray):
    """Confusion counts of "member iff score >= t" for every threshold t."""
    order = np.sort(scores[members]), np.sort(scores[~members])
    positives = len(order[0]) - np.searchsorted(order[0], thresholds, side="left")
    false_pos = len(order[1]) - np.searchsorted(order[1], thresholds, side="left")
    return positives, false_pos, len(order[0]) - positives, len(order[1]) - false_pos

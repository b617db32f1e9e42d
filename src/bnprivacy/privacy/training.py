"""DP-SGD shadow runs with Opacus.

**DP shadow models.** A :class:`DPRunSpec` is a shadow run (balanced inclusion masks, model k's
initialisation from ``(seed, k)``) whose models are trained one at a time with Opacus: Poisson
sampling of the model's own subset at rate ``q = 1 / ceil(n_k / batch_size)`` (its sampling
generator seeded from ``(seed, k)``), per-sample clipping at ``max_grad_norm``, Gaussian noise from
a generator of its own (seeded from ``(seed, k)``), and ``BatchMemoryManager`` splitting a logical
batch into physical batches of at most ``max_physical_batch``. The noise multiplier is the one
``make_private_with_epsilon`` picks for ``(epsilon, delta)`` after ``epochs`` epochs (its search,
reproduced so that it always ends, runs before any training and is cached:
:func:`accounting.noise_multiplier`, :func:`planned_noise`). ``epsilon = inf`` trains the same model through the same
Opacus path with per-sample clipping and no noise: the DP recipe without its noise. (Without
clipping as well it would be ordinary training, which the engine's non-private runs already are;
and a learning rate tuned for clipped gradients can diverge on unclipped ones.) The run is stored
by :func:`bnprivacy.runs.shadow.shadow_run` (atomic, checksummed chunks of one model each, so a killed run resumes
at the model it was training) and is an ordinary :class:`bnprivacy.runs.shadow.ShadowRun`: the attacks and
memorization estimators apply unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_real, check_whole
from ..config import Config
from ..data import augmentation_enabled, flip_crop, load_dataset
from ..ensemble import EnsembleResult, check_masks, data_generator, init_model, model_seed
from ..runs.chunks import chunk_table
from ..runs.shadow import ShadowRun, shadow_run
from ..runs.spec import RunSpec, spec_key
from ..training import TrainingDiverged, lr_factor, make_optimizer, resolve_device
from .accounting import (ACCOUNTANTS, accountant_epsilon, check_epsilon, check_max_grad_norm,
                         noise_multiplier, resolve_delta, steps_per_epoch)
from .opacus import DP_NORMS, make_private_module

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
        check_real("delta", self.delta, "a number in [0, 1): 0 for the default min(1e-5, 1/(10 n))",
                    0 <= self.delta < 1)
        check_max_grad_norm(self.max_grad_norm)
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant={self.accountant!r} is not allowed; allowed values: "
                             f"{', '.join(ACCOUNTANTS)}")
        check_whole("max_physical_batch", self.max_physical_batch)
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
    Ray tasks, as in :func:`bnprivacy.runs.shadow.shadow_run`; the workers need Opacus.
    """
    if data is None:
        data = load_dataset(spec.config, resolve_device(spec.config))
    planned_noise(spec, spec.masks(len(data.y_train)))  # a bad delta or epsilon fails before any training
    return shadow_run(spec, data, chunk_size=chunk_size, queries=queries, progress=progress, executor=executor,
                      address=address, cpus_per_task=cpus_per_task, max_retries=max_retries)


def run_privacy(run: ShadowRun) -> pd.DataFrame:
    """Per model of a DP run: noise multiplier, sampling rate, steps, delta and the accountant's
    epsilon (``inf`` for a non-private run)."""
    return chunk_table(run, "privacy")


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


def _physical_batches(loader, optimizer, spec: DPRunSpec):
    """Logical Poisson batches split into physical ones of at most ``max_physical_batch``
    (DP-SGD steps once per logical batch)."""
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    return BatchMemoryManager(data_loader=loader, max_physical_batch_size=spec.max_physical_batch,
                              optimizer=optimizer)


def _batch(cfg: Config, data, idx: torch.Tensor, model: int, epoch: int, step: int):
    """Images and labels of pool indices ``idx``, augmented like the engine when it augments."""
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

"""The shadow-model engine: train N models of one Config at once, model k on its own subset.

Model k of a run is defined by the run's Config seed and k alone: its initialisation, its data
order (a fresh permutation of its subset every epoch) and its augmentation draws all come from
generators seeded with ``(seed, k)``. So a run gives the same models whether it is trained in one
piece, in chunks, in shards on several machines, or one model at a time (``strategy="loop"``, the
obvious baseline and the reference of the equivalence test).

The batched strategy (``strategy="batched"``) builds the chunk's models as one wide network
(``models.build_model(n_models=N)``: grouped convolutions, per-model BatchNorm channels, batched
linear layers) initialised with the N models' own weights, and trains it with one forward, one
backward and one optimizer step per batch. Each model keeps its own BatchNorm statistics (they are
its own channels of the wide BatchNorm). SGD is elementwise, so one optimizer over the wide
parameters is exactly N optimizers. We first tried ``torch.func.stack_module_state`` + ``vmap``:
it gives the same models but on a 2-core CPU it ran slower than the loop (vmap reshapes every
activation between its batched layout and the grouped-convolution layout; see BENCHMARKS.md).

Every epoch each model takes ``steps`` full batches from a fresh permutation of its subset, with
``steps = min_k |subset_k| // batch_size`` over all N models of the run: the wide network needs the same number
of steps for every model, and a model whose subset is a little larger sees a different few
samples left out each epoch.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_whole
from .config import Config
from .data import Dataset, apply_flip_crop, augmentation_enabled, draw_flip_crop
from .models import (build_model, ensemble_input, ensemble_output, merge_states, shared_input,
                     split_state)
from .training import TrainingDiverged, autocast, clip_gradients_, lr_factor, make_optimizer
from .gradients import probe_norms

STRATEGIES = ("batched", "loop")
EVAL_BATCH = 1024
# Test samples each epoch's history row is measured on: a fixed random subset, the whole test split
# after the last epoch. Evaluating all of a 10,000-image test split after every epoch cost more
# than the epoch's training on CIFAR-shaped data (BENCHMARKS.md); the final model, which every
# analysis reads, is always measured on the whole split.
EPOCH_EVAL_SAMPLES = 1024


# --- inclusion masks ------------------------------------------------------------------------------

def balanced_masks(n_models: int, pool_size: int, seed: int = 0) -> torch.Tensor:
    """``[N, P]`` bool masks with every sample IN for exactly half of the models (LiRA).

    Needs an even ``n_models``; sample i's IN models are a uniformly random half.
    """
    _check_count(n_models, pool_size)
    if n_models % 2:
        raise ValueError(f"balanced masks need an even number of models, got n_models={n_models}; "
                         "use an even number or fraction masks")
    generator = torch.Generator().manual_seed(seed)
    ranks = torch.rand(n_models, pool_size, generator=generator).argsort(0).argsort(0)
    return ranks < n_models // 2


def fraction_masks(n_models: int, pool_size: int, fraction: float, seed: int = 0) -> torch.Tensor:
    """``[N, P]`` bool masks where each model includes a random ``fraction`` of the pool
    (Feldman & Zhang's subsampling, e.g. 0.7)."""
    _check_count(n_models, pool_size)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction!r} is not allowed; allowed values: a number in (0, 1)")
    generator = torch.Generator().manual_seed(seed)
    size = max(1, round(fraction * pool_size))
    masks = torch.zeros(n_models, pool_size, dtype=torch.bool)
    for k in range(n_models):
        masks[k, torch.randperm(pool_size, generator=generator)[:size]] = True
    return masks


def _check_count(n_models, pool_size) -> None:
    check_whole("n_models", n_models)
    if pool_size < 1:
        raise ValueError(f"the pool is empty (pool_size={pool_size}); there is nothing to train on")


def check_masks(masks, pool_size: int, batch_size: int) -> None:
    """Raise ``ValueError`` unless ``masks`` is a ``[N, P]`` bool tensor whose every model has at
    least one full batch."""
    if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool:
        kind = masks.dtype if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"masks must be a torch.bool tensor of shape [N, {pool_size}], got {kind}")
    if masks.ndim != 2 or masks.shape[1] != pool_size or masks.shape[0] < 1:
        raise ValueError(f"masks must have shape [N >= 1, {pool_size}] (one column per pool "
                         f"sample), got {tuple(masks.shape)}")
    smallest = int(masks.sum(1).min())
    if smallest < batch_size:
        raise ValueError(f"a model's subset holds {smallest} samples, fewer than one batch of "
                         f"{batch_size}; lower batch_size or include more of the pool")


def steps_for(masks: torch.Tensor, batch_size: int) -> int:
    """Batches per epoch shared by every model of the run (see the module docstring)."""
    return int(masks.sum(1).min()) // batch_size


# --- per-model seeds and data order ---------------------------------------------------------------

def model_seed(run_seed: int, model: int) -> int:
    """Seed of model ``model`` of a run: a hash of ``(run_seed, model)``, independent of chunking."""
    return int(np.random.SeedSequence([run_seed, model]).generate_state(1, np.uint64)[0] % (2**62))


def init_model(cfg: Config, data: Dataset, model: int) -> nn.Module:
    """Model ``model`` of the run at initialisation (its weights depend only on seed and index)."""
    torch.manual_seed(model_seed(cfg.seed, model))
    return build_model(cfg.arch, cfg.norm, cfg.width, data.input_shape, data.num_classes)


def data_generator(cfg: Config, model: int) -> torch.Generator:
    """CPU generator of model ``model``'s data order and augmentations (same on every device)."""
    return torch.Generator().manual_seed(model_seed(cfg.seed, model) + 1)


def epoch_plan(subset: torch.Tensor, generator: torch.Generator, batch_size: int, steps: int,
               augment: bool, image_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
    """One model's epoch: pool indices ``[steps, B]`` and, with augmentation, its draws."""
    order = subset[torch.randperm(len(subset), generator=generator)[: steps * batch_size]]
    plan = {"idx": order.view(steps, batch_size)}
    if augment:
        flips, dy, dx = draw_flip_crop(steps * batch_size, generator, *image_hw)
        plan.update(flips=flips.view(steps, -1), dy=dy.view(steps, -1), dx=dx.view(steps, -1))
    return plan


# --- gradient probes ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    """Record per-sample gradients during training (``gradients.probe_norms``).

    Every ``every`` steps, for the models with global index below ``models``, each probe sample
    (every canary plus ``typical`` random typical pool samples, drawn with ``seed``) is inserted
    into the model's current batch in place of its last sample, and the norms of its own-loss
    gradient (a) and of its leave-one-out step influence (b) are recorded, at the parameters
    before the step.
    """

    every: int
    typical: int = 20
    models: int = 2
    seed: int = 0

    def __post_init__(self):
        for name in ("every", "models"):
            check_whole(f"probe {name}", getattr(self, name))
        check_whole("probe typical", self.typical, least=0)

    def samples(self, data: Dataset) -> torch.Tensor:
        """Pool indices probed: every canary, then the random typical samples."""
        kinds = data.kinds or ["typical"] * len(data.y_train)
        canaries = [i for i, k in enumerate(kinds) if k != "typical"]
        typical = torch.tensor([i for i, k in enumerate(kinds) if k == "typical"])
        if self.typical > len(typical):
            raise ValueError(f"probe typical={self.typical} is more than the {len(typical)} typical samples")
        generator = torch.Generator().manual_seed(self.seed)
        chosen = typical[torch.randperm(len(typical), generator=generator)[: self.typical]].sort().values
        return torch.tensor(canaries + chosen.tolist(), dtype=torch.long)


# --- results --------------------------------------------------------------------------------------

@dataclasses.dataclass
class EnsembleResult:
    """Trained models (one ordinary state dict each, on the CPU) and their per-epoch histories."""

    models: list[int]
    states: list[dict[str, torch.Tensor]]
    history: pd.DataFrame
    canary_history: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    probe_history: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    # Further per-model tables a trainer records (e.g. DP-SGD's privacy accounting), by name.
    tables: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)


def train_ensemble(cfg: Config, data: Dataset, masks: torch.Tensor, models: list[int] | None = None,
                   *, strategy: str = "batched", progress: bool = False,
                   probe: ProbeSpec | None = None, epoch_curves: bool = True) -> EnsembleResult:
    """Train the models ``models`` (global indices, default all) of a run with inclusion ``masks``.

    ``masks`` is the whole run's ``[N, P]`` mask (P = ``len(data.y_train)``). ``strategy="batched"``
    trains the models as one wide network; ``"loop"`` trains them one at a time, to the same
    result up to float rounding. Every model trains exactly ``cfg.epochs`` epochs. ``probe``
    records per-sample gradient norms during training (:class:`ProbeSpec`). The history measures
    test accuracy after every epoch (a fixed subset, the whole split after the last); with
    ``epoch_curves=False`` only after the last, the other rows reading NaN: the evaluation changes
    nothing in the training, so the models are the same either way.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not allowed; allowed values: {', '.join(STRATEGIES)}")
    check_masks(masks, len(data.y_train), cfg.batch_size)
    models = list(range(masks.shape[0])) if models is None else list(models)
    if not models or min(models) < 0 or max(models) >= masks.shape[0]:
        raise ValueError(f"models {models} must be a non-empty list of indices in [0, {masks.shape[0]})")
    groups = [models] if strategy == "batched" else [[k] for k in models]
    parts = [_Trainer(cfg, data, masks, group, progress, probe, epoch_curves).run() for group in groups]
    return EnsembleResult(models, [s for p in parts for s in p.states],
                          pd.concat([p.history for p in parts], ignore_index=True),
                          pd.concat([p.canary_history for p in parts], ignore_index=True),
                          pd.concat([p.probe_history for p in parts], ignore_index=True))


def build_ensemble(cfg: Config, data: Dataset, states: list[dict[str, torch.Tensor]]) -> nn.Module:
    """The wide network holding the models of ``states`` (one per model), on the data's device."""
    wide = build_model(cfg.arch, cfg.norm, cfg.width, data.input_shape, data.num_classes, len(states))
    wide.load_state_dict(merge_states(states))
    # channels-last on every device: on a CPU, pooling and BatchNorm of a wide NCHW activation
    # were 10-25x slower than in channels-last (BENCHMARKS.md).
    return wide.to(data.x_train.device, memory_format=torch.channels_last)


class _Trainer:
    """Trains a group of models as one wide network (a group of one is an ordinary model)."""

    def __init__(self, cfg: Config, data: Dataset, masks: torch.Tensor, models: list[int], progress: bool,
                 probe: ProbeSpec | None = None, epoch_curves: bool = True):
        self.cfg, self.data, self.models = cfg, data, models
        self.epoch_curves = epoch_curves
        self.masks, self.probe = masks, probe
        self.probe_samples = probe.samples(data) if probe else None
        self.probed = [p for p, k in enumerate(models) if probe and k < probe.models]
        self.device = data.x_train.device
        self.steps = steps_for(masks, cfg.batch_size)
        self.total_steps = self.steps * cfg.epochs
        self.subsets = [masks[k].nonzero().squeeze(1) for k in models]
        self.augment = augmentation_enabled(cfg, data)
        self.progress = progress
        kinds = data.kinds or []
        self.canaries = torch.tensor([i for i, kind in enumerate(kinds) if kind != "typical"],
                                     dtype=torch.long)
        self.eval_subset = epoch_eval_subset(len(data.y_test)).to(data.y_test.device)

    def run(self) -> EnsembleResult:
        cfg, n = self.cfg, len(self.models)
        wide = build_ensemble(cfg, self.data, [init_model(cfg, self.data, k).state_dict() for k in self.models])
        optimizer = make_optimizer(wide.parameters(), cfg)
        generators = [data_generator(cfg, k) for k in self.models]
        rows, canary_rows, probe_rows, step = [], [], [], 0
        bar = self.bar()
        for epoch in range(1, cfg.epochs + 1):
            started = time.perf_counter()
            plans = [self.plan(position, g) for position, g in enumerate(generators)]
            wide.train()
            loss_sum = torch.zeros(n, device=self.device)
            correct = torch.zeros(n, device=self.device)
            for s in range(self.steps):
                x, y = self.batch(plans, s)
                if self.probed and step % self.probe.every == 0:
                    probe_rows.extend(self.probe_gradients(wide, x, y, step, epoch))
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(cfg, step, self.total_steps)
                with autocast(cfg, self.device):
                    logits = ensemble_output(wide(channels_last(ensemble_input(x))), n)
                per_model = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(),
                                            label_smoothing=cfg.label_smoothing,
                                            reduction="none").view(n, -1).mean(1)
                optimizer.zero_grad(set_to_none=True)
                per_model.sum().backward()
                clip_gradients_(wide, cfg, n)
                optimizer.step()
                step += 1
                loss_sum += per_model.detach()
                correct += (logits.detach().argmax(-1) == y).sum(1)
            self.check_finite(loss_sum, epoch)
            test_loss, test_acc, tested = self.evaluate(wide, last=epoch == cfg.epochs)
            canary_rows.extend(self.probe_canaries(wide, epoch))
            lr = cfg.lr * lr_factor(cfg, step, self.total_steps)
            for p in range(n):
                rows.append(dict(model=self.models[p], epoch=epoch, lr=lr,
                                 train_loss=loss_sum[p].item() / self.steps,
                                 train_acc=correct[p].item() / (self.steps * cfg.batch_size),
                                 test_loss=test_loss[p].item(), test_acc=test_acc[p].item(),
                                 test_samples=tested, seconds=time.perf_counter() - started))
            bar.update(1)
            if tested:
                bar.set_postfix(test_acc=f"{test_acc.mean().item():.3f}")
        bar.close()
        return EnsembleResult(self.models, split_state(_cpu_state(wide), n), pd.DataFrame(rows),
                              pd.DataFrame(canary_rows), pd.DataFrame(probe_rows))

    def evaluate(self, wide: nn.Module, last: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Per-model test loss and accuracy after an epoch and the test samples they read; NaN and
        0 after an epoch but the last of a run that keeps no curve."""
        if not (last or self.epoch_curves):
            skipped = torch.full((len(self.models),), float("nan"))
            return skipped, skipped, 0
        x, y = self.test_set(last)
        loss, accuracy = evaluate_ensemble(self.cfg, wide, len(self.models), x, y)
        return loss, accuracy, len(y)

    def test_set(self, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole test split after the last epoch, else the fixed per-epoch subset."""
        x, y = self.data.x_test, self.data.y_test
        if last or len(self.eval_subset) == len(y):
            return x, y
        return x[self.eval_subset], y[self.eval_subset]

    def probe_gradients(self, wide: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int,
                        epoch: int) -> list[dict]:
        """Gradient norms of the probe samples inserted into each probed model's current batch."""
        n, rows = len(self.models), []
        states = split_state(wide.state_dict(), n)
        samples = self.probe_samples.to(self.device)
        for p in self.probed:
            single = build_model(self.cfg.arch, self.cfg.norm, self.cfg.width, self.data.input_shape,
                                 self.data.num_classes).to(self.device)
            single.load_state_dict(states[p])
            single.train()
            own, loo = probe_norms(single, x[p, :-1], y[p, :-1], self.data.x_train[samples],
                                   self.data.y_train[samples])
            k = self.models[p]
            for j, i in enumerate(self.probe_samples.tolist()):
                rows.append(dict(model=k, step=step, epoch=epoch, sample=i, member=bool(self.masks[k, i]),
                                 own=float(own[j]), loo=float(loo[j])))
        return rows

    @torch.no_grad()
    def probe_canaries(self, wide: nn.Module, epoch: int) -> list[dict]:
        """Each model's prediction on every canary after this epoch (eval mode)."""
        if not len(self.canaries):
            return []
        n = len(self.models)
        idx = self.canaries.to(self.device)
        x, y = self.data.x_train[idx], self.data.y_train[idx]
        was_training = wide.training
        wide.eval()
        with autocast(self.cfg, self.device):
            logits = ensemble_output(wide(channels_last(shared_input(x, n))), n).float()
        wide.train(was_training)
        confidence = logits.softmax(-1).gather(-1, y.view(1, -1, 1).expand(n, -1, 1)).squeeze(-1).cpu()
        hits = (logits.argmax(-1) == y).cpu()
        return [dict(model=self.models[p], epoch=epoch, sample=int(i), correct=bool(hits[p, j]),
                     confidence=float(confidence[p, j]))
                for p in range(n) for j, i in enumerate(self.canaries.tolist())]

    def plan(self, position: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        plan = epoch_plan(self.subsets[position], generator, self.cfg.batch_size, self.steps,
                          self.augment, self.data.input_shape[1:])
        return {name: tensor.to(self.device) for name, tensor in plan.items()}

    def batch(self, plans: list[dict], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every model's batch of this step: images ``[N, B, C, H, W]``, labels ``[N, B]``."""
        idx = torch.stack([plan["idx"][step] for plan in plans])
        x, y = self.data.x_train[idx], self.data.y_train[idx]
        if self.augment:
            draws = [torch.cat([plan[key][step] for plan in plans]) for key in ("flips", "dy", "dx")]
            x = apply_flip_crop(x.flatten(0, 1), *draws).view(x.shape)
        return x, y

    def check_finite(self, losses: torch.Tensor, epoch: int) -> None:
        bad = [m for m, value in zip(self.models, losses.tolist()) if not np.isfinite(value)]
        if bad:
            cfg = self.cfg
            raise TrainingDiverged(
                f"training diverged: the loss of model(s) {bad} became non-finite in epoch {epoch} "
                f"(arch={cfg.arch}, norm={cfg.norm}, lr={cfg.lr}); lower the learning rate "
                f"(e.g. lr={cfg.lr / 4:g}) or use a norm layer"
            )

    def bar(self):
        from tqdm.auto import tqdm

        first, last = self.models[0], self.models[-1]
        name = f"model {first}" if first == last else f"models {first}-{last}"
        return tqdm(total=self.cfg.epochs, desc=name, unit="epoch", leave=False,
                    disable=not self.progress)


def epoch_eval_subset(test_size: int) -> torch.Tensor:
    """Sorted test indices measured after every epoch but the last: all of a small split, else a
    fixed random EPOCH_EVAL_SAMPLES of it (the same for every run)."""
    return fixed_test_subset(test_size, EPOCH_EVAL_SAMPLES)


def fixed_test_subset(test_size: int, samples: int) -> torch.Tensor:
    """Sorted indices of ``samples`` test samples drawn at random once (the same for every run and
    every caller), or all of a split that holds no more than ``samples``."""
    if test_size <= samples:
        return torch.arange(test_size)
    order = torch.randperm(test_size, generator=torch.Generator().manual_seed(0))
    return order[:samples].sort().values


@torch.no_grad()
def evaluate_ensemble(cfg: Config, wide: nn.Module, n: int, x: torch.Tensor,
                      y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model mean cross-entropy and accuracy of a wide network in eval mode on ``(x, y)``."""
    was_training = wide.training
    wide.eval()
    loss = torch.zeros(n, device=x.device)
    correct = torch.zeros(n, device=x.device)
    for start in range(0, len(y), EVAL_BATCH):
        xb, yb = x[start:start + EVAL_BATCH], y[start:start + EVAL_BATCH]
        with autocast(cfg, x.device):
            logits = ensemble_output(wide(channels_last(shared_input(xb, n))), n).float()
        loss += F.cross_entropy(logits.flatten(0, 1), yb.repeat(n), reduction="none").view(n, -1).sum(1)
        correct += (logits.argmax(-1) == yb).sum(1)
    wide.train(was_training)
    return loss / len(y), correct / len(y)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """Images in channels-last memory order (other tensors unchanged)."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().clone() for name, tensor in module.state_dict().items()}


# --- one model ------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainResult:
    """A trained model and its per-epoch history (one row per epoch)."""

    model: nn.Module
    history: pd.DataFrame

    @property
    def final(self) -> pd.Series:
        return self.history.iloc[-1]


def train_model(cfg: Config, data: Dataset, *, progress: bool = False) -> TrainResult:
    """Train one model of ``cfg`` on the whole training split of ``data`` and record every epoch.

    This is the shadow-model engine with one model whose mask includes every sample, so a single
    model and a shadow model of the same setting are trained by the same code. Deterministic on a
    CPU for a fixed ``cfg.seed`` (it fixes the initialisation, the data order and the
    augmentation draws). Trains exactly ``cfg.epochs`` epochs, the learning-rate schedule laid over
    them, so the result is a complete training, never a mid-schedule snapshot. Raises
    :class:`TrainingDiverged` on a NaN or infinite loss.
    """
    everything = torch.ones(1, len(data.y_train), dtype=torch.bool)
    result = train_ensemble(cfg, data, everything, progress=progress)
    model = build_ensemble(cfg, data, result.states)
    return TrainResult(model=model, history=result.history.drop(columns="model"))

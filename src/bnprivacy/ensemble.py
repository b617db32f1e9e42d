"""The shadow-model engine: train N models of one Config at once, model k on its own subset.

Model k of a run is defined by the run's Config seed and k alone: its initialisation, its data
order (a fresh permutation of its subset every epoch) and its augmentation draws all come from
generators seeded with ``(seed, k)``. So a run gives the same models whether it is trained in one
piece, in chunks, in shards on several machines, or one model at a time (``strategy="loop"``, the
obvious baseline and the reference of the equivalence test).

The batched strategy (``strategy="vmap"``) stacks the N models' parameters and buffers
(``torch.func.stack_module_state``) and runs forward and backward for all of them as one
computation through ``torch.func.vmap``, which turns each convolution into one grouped convolution.
Each model keeps its own BatchNorm running statistics (the stacked buffers are updated in place,
one slice per model). SGD is elementwise, so one optimizer over the stacked parameters is exactly N
optimizers.

Every epoch each model takes ``steps`` full batches from a fresh permutation of its subset, with
``steps = min_k |subset_k| // batch_size`` over all N models of the run: vmap needs the same number
of steps for every model, and a model whose subset is a little larger sees a different few
samples left out each epoch.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .config import Config
from .data import Dataset, apply_flip_crop, augmentation_enabled, draw_flip_crop
from .models import build_model
from .training import autocast, lr_factor, make_optimizer

STRATEGIES = ("vmap", "loop")
EVAL_BATCH = 1024


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
    if isinstance(n_models, bool) or not isinstance(n_models, int) or n_models < 1:
        raise ValueError(f"n_models={n_models!r} is not allowed; allowed values: an integer >= 1")
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


# --- results --------------------------------------------------------------------------------------

@dataclasses.dataclass
class EnsembleResult:
    """Trained models as one stacked state dict ``{name: [n, ...]}`` and their histories."""

    models: list[int]
    state: dict[str, torch.Tensor]
    history: pd.DataFrame
    reached_target: list[bool]

    def state_dict(self, position: int) -> dict[str, torch.Tensor]:
        """The state dict of the model at ``position`` in this result (not its global index)."""
        return {name: tensor[position] for name, tensor in self.state.items()}


def train_ensemble(cfg: Config, data: Dataset, masks: torch.Tensor, models: list[int] | None = None,
                   *, strategy: str = "vmap", progress: bool = False) -> EnsembleResult:
    """Train the models ``models`` (global indices, default all) of a run with inclusion ``masks``.

    ``masks`` is the whole run's ``[N, P]`` mask (P = ``len(data.y_train)``). ``strategy="vmap"``
    trains the models as one batched computation; ``"loop"`` trains them one at a time, to the
    same result up to float rounding. Stops after ``cfg.epochs`` or, with ``cfg.target_accuracy``,
    each model at its first epoch reaching the target (at most ``cfg.max_epochs``).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not allowed; allowed values: {', '.join(STRATEGIES)}")
    check_masks(masks, len(data.y_train), cfg.batch_size)
    models = list(range(masks.shape[0])) if models is None else list(models)
    if not models or min(models) < 0 or max(models) >= masks.shape[0]:
        raise ValueError(f"models {models} must be a non-empty list of indices in [0, {masks.shape[0]})")
    trainer = _BatchedTrainer if strategy == "vmap" else _LoopTrainer
    return trainer(cfg, data, masks, models, progress).run()


class _Trainer:
    """What both strategies share: plans, schedule, per-epoch evaluation and stopping."""

    def __init__(self, cfg: Config, data: Dataset, masks: torch.Tensor, models: list[int], progress: bool):
        self.cfg, self.data, self.models = cfg, data, models
        self.device = data.x_train.device
        self.steps = steps_for(masks, cfg.batch_size)
        self.total_steps = self.steps * cfg.epoch_budget
        self.subsets = [masks[k].nonzero().squeeze(1) for k in models]
        self.augment = augmentation_enabled(cfg, data)
        self.progress = progress

    def plan(self, position: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        plan = epoch_plan(self.subsets[position], generator, self.cfg.batch_size, self.steps,
                          self.augment, self.data.input_shape[1:])
        return {name: tensor.to(self.device) for name, tensor in plan.items()}

    def batch(self, plan: dict, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = plan["idx"][step]
        x, y = self.data.x_train[idx], self.data.y_train[idx]
        if self.augment:
            x = apply_flip_crop(x, plan["flips"][step], plan["dy"][step], plan["dx"][step])
        return x, y

    def set_lr(self, optimizer, step: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = self.cfg.lr * lr_factor(self.cfg, step, self.total_steps)

    def done(self, epoch: int, test_acc: float) -> bool:
        if self.cfg.matched_accuracy:
            return test_acc >= self.cfg.target_accuracy or epoch >= self.cfg.max_epochs
        return epoch >= self.cfg.epochs

    def bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="epoch", leave=False, disable=not self.progress)


def _row(model: int, epoch: int, lr: float, loss: float, acc: float, test: tuple[float, float],
         seconds: float) -> dict:
    return dict(model=model, epoch=epoch, lr=lr, train_loss=loss, train_acc=acc, test_loss=test[0],
                test_acc=test[1], seconds=seconds)


def _check_losses(losses: torch.Tensor, models: list[int], epoch: int, cfg: Config) -> None:
    from .training import TrainingDiverged

    bad = [m for m, value in zip(models, losses.tolist()) if not np.isfinite(value)]
    if bad:
        raise TrainingDiverged(
            f"training diverged: the loss of model(s) {bad} became non-finite in epoch {epoch} "
            f"(arch={cfg.arch}, norm={cfg.norm}, lr={cfg.lr}); lower the learning rate "
            f"(e.g. lr={cfg.lr / 4:g}) or use a norm layer"
        )


class _LoopTrainer(_Trainer):
    """One model at a time, plain ``nn.Module`` training: the baseline and the reference."""

    def run(self) -> EnsembleResult:
        from .training import evaluate

        cfg, states, rows, reached = self.cfg, [], [], []
        for position, k in enumerate(self.models):
            model = init_model(cfg, self.data, k).to(self.device)
            optimizer = make_optimizer(model.parameters(), cfg)
            generator = data_generator(cfg, k)
            step, bar = 0, self.bar(cfg.epoch_budget, f"model {k}")
            for epoch in range(1, cfg.epoch_budget + 1):
                started = time.perf_counter()
                plan = self.plan(position, generator)
                model.train()
                loss_sum = torch.zeros((), device=self.device)
                correct = torch.zeros((), device=self.device)
                for s in range(self.steps):
                    x, y = self.batch(plan, s)
                    self.set_lr(optimizer, step)
                    with autocast(cfg, self.device):
                        logits = model(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    step += 1
                    loss_sum += loss.detach()
                    correct += (logits.detach().argmax(1) == y).sum()
                _check_losses(loss_sum.view(1), [k], epoch, cfg)
                test = evaluate(model, self.data.x_test, self.data.y_test, cfg, self.device)
                rows.append(_row(k, epoch, cfg.lr * lr_factor(cfg, step, self.total_steps),
                                 loss_sum.item() / self.steps,
                                 correct.item() / (self.steps * cfg.batch_size), test,
                                 time.perf_counter() - started))
                bar.update(1)
                bar.set_postfix(test_acc=f"{test[1]:.3f}")
                if self.done(epoch, test[1]):
                    break
            bar.close()
            reached.append(cfg.matched_accuracy and test[1] >= cfg.target_accuracy)
            states.append({n: t.detach().clone() for n, t in model.state_dict().items()})
        stacked = {name: torch.stack([s[name] for s in states]) for name in states[0]}
        return EnsembleResult(self.models, stacked, pd.DataFrame(rows), reached)


class _BatchedTrainer(_Trainer):
    """All models of the chunk as one vmapped computation over stacked parameters and buffers."""

    def run(self) -> EnsembleResult:
        cfg, n = self.cfg, len(self.models)
        modules = [init_model(cfg, self.data, k).to(self.device) for k in self.models]
        params, buffers = stack_module_state(modules)
        params = {name: p.detach().clone().requires_grad_(True) for name, p in params.items()}
        self.base = copy.deepcopy(modules[0]).to("meta")
        del modules
        ranks = {name: p.ndim for name, p in self.base.named_parameters()}
        optimizer = make_optimizer(params.values(), cfg, [ranks[name] for name in params])
        generators = [data_generator(cfg, k) for k in self.models]
        active = torch.ones(n, dtype=torch.bool)
        final: dict[int, dict[str, torch.Tensor]] = {}
        rows, reached, step = [], [False] * n, 0
        forward = vmap(self._functional, in_dims=(0, 0, 0))
        bar = self.bar(cfg.epoch_budget, f"models {self.models[0]}-{self.models[-1]}")
        for epoch in range(1, cfg.epoch_budget + 1):
            started = time.perf_counter()
            plans = [self.plan(position, g) for position, g in enumerate(generators)]
            self.base.train()
            loss_sum = torch.zeros(n, device=self.device)
            correct = torch.zeros(n, device=self.device)
            for s in range(self.steps):
                batches = [self.batch(plan, s) for plan in plans]
                x = torch.stack([b[0] for b in batches])
                y = torch.stack([b[1] for b in batches])
                self.set_lr(optimizer, step)
                with autocast(cfg, self.device):
                    logits = forward(params, buffers, x)
                losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(),
                                         label_smoothing=cfg.label_smoothing, reduction="none")
                per_model = losses.view(n, -1).mean(1)
                optimizer.zero_grad(set_to_none=True)
                per_model.sum().backward()
                optimizer.step()
                step += 1
                loss_sum += per_model.detach()
                correct += (logits.detach().argmax(-1) == y).sum(1)
            _check_losses(loss_sum[active], [m for m, a in zip(self.models, active) if a], epoch, cfg)
            test_loss, test_acc = self.evaluate(params, buffers)
            lr = cfg.lr * lr_factor(cfg, step, self.total_steps)
            for position in active.nonzero().squeeze(1).tolist():
                rows.append(_row(self.models[position], epoch, lr, loss_sum[position].item() / self.steps,
                                 correct[position].item() / (self.steps * cfg.batch_size),
                                 (test_loss[position].item(), test_acc[position].item()),
                                 time.perf_counter() - started))
                if self.done(epoch, test_acc[position].item()):
                    active[position] = False
                    reached[position] = cfg.matched_accuracy and test_acc[position].item() >= cfg.target_accuracy
                    final[position] = _slice(params, buffers, position)
            bar.update(1)
            bar.set_postfix(test_acc=f"{test_acc.mean().item():.3f}", active=int(active.sum()))
            if not active.any():
                break
        bar.close()
        states = [final[position] for position in range(n)]
        stacked = {name: torch.stack([s[name] for s in states]) for name in states[0]}
        return EnsembleResult(self.models, stacked, pd.DataFrame(rows), reached)

    def _functional(self, params, buffers, x):
        return functional_call(self.base, (params, buffers), (x,))

    @torch.no_grad()
    def evaluate(self, params, buffers) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-model test loss and accuracy in eval mode (running statistics)."""
        self.base.eval()
        forward = vmap(self._functional, in_dims=(0, 0, None))
        x_test, y_test = self.data.x_test, self.data.y_test
        n = len(self.models)
        loss = torch.zeros(n, device=self.device)
        correct = torch.zeros(n, device=self.device)
        for start in range(0, len(y_test), EVAL_BATCH):
            xb, yb = x_test[start:start + EVAL_BATCH], y_test[start:start + EVAL_BATCH]
            with autocast(self.cfg, self.device):
                logits = forward(params, buffers, xb).float()
            loss += F.cross_entropy(logits.flatten(0, 1), yb.repeat(n), reduction="none").view(n, -1).sum(1)
            correct += (logits.argmax(-1) == yb).sum(1)
        self.base.train()
        return loss / len(y_test), correct / len(y_test)


def _slice(params: dict, buffers: dict, position: int) -> dict[str, torch.Tensor]:
    state = {name: p[position].detach().clone() for name, p in params.items()}
    state.update({name: b[position].detach().clone() for name, b in buffers.items()})
    return state

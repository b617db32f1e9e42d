"""Training one model: device and precision, SGD with a schedule, epochs or matched-accuracy stopping.

The pieces (``resolve_device``, ``autocast``, ``make_optimizer``, ``lr_factor``, ``epoch_order``,
``evaluate``) are separate so the multi-model engine reuses them with the same semantics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .data import Dataset, augmentation_enabled, flip_crop
from .models import build_model

EVAL_BATCH = 1024


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message says when and what to change."""


@dataclasses.dataclass
class TrainResult:
    """A trained model and its per-epoch history (one row per epoch)."""

    model: nn.Module
    history: pd.DataFrame
    reached_target: bool

    @property
    def final(self) -> pd.Series:
        return self.history.iloc[-1]


def resolve_device(cfg: Config) -> torch.device:
    """The device ``cfg.device`` names; ``auto`` is CUDA when available, else CPU."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("Config.device='cuda' but no CUDA GPU is visible; use device='auto' or 'cpu'")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def uses_bf16(cfg: Config, device: torch.device) -> bool:
    """bf16 autocast on CUDA (``precision`` auto or bf16); never on a CPU."""
    if cfg.precision == "bf16" and device.type != "cuda":
        raise ValueError("Config.precision='bf16' needs a CUDA device; use precision='auto' or 'fp32' on a CPU")
    return device.type == "cuda" and cfg.precision in ("auto", "bf16")


def autocast(cfg: Config, device: torch.device):
    """The autocast context for a forward pass under ``cfg``'s precision."""
    if uses_bf16(cfg, device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(params, cfg: Config) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; weight decay on weights only, not on norm gains and biases.

    SGD acts elementwise, so on a wide ensemble (``models.build_model(n_models=N)``) one optimizer
    is exactly N optimizers, and a wide tensor has the rank of its per-model pieces.
    """
    params = list(params)
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def lr_factor(cfg: Config, step: int, total_steps: int) -> float:
    """Multiplier of ``cfg.lr`` at ``step`` of ``total_steps`` for the configured schedule.

    ``cosine`` decays from 1 to 0; ``onecycle`` rises linearly for the first 20% of the steps and
    falls linearly to 0; ``constant`` is 1.
    """
    progress = min(step / max(total_steps, 1), 1.0)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "onecycle":
        peak = 0.2
        return progress / peak if progress < peak else (1.0 - progress) / (1.0 - peak)
    return 1.0


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Full batches per epoch: the last partial batch is dropped so BN never sees a batch of one."""
    if n_train < batch_size:
        raise ValueError(
            f"the training set has {n_train} samples, fewer than one batch of {batch_size}; "
            "lower batch_size or use more data"
        )
    return n_train // batch_size


def epoch_order(n_train: int, generator: torch.Generator) -> torch.Tensor:
    """A fresh random permutation of the training indices for one epoch."""
    return torch.randperm(n_train, generator=generator, device=generator.device)


def loss_fn(logits: torch.Tensor, y: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Mean cross-entropy with the configured label smoothing, computed in float32."""
    return F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: Config,
             device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy (no smoothing) and accuracy of ``model`` in eval mode on ``(x, y)``."""
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for start in range(0, len(y), EVAL_BATCH):
        xb, yb = _prepare(x[start:start + EVAL_BATCH], device), y[start:start + EVAL_BATCH]
        with autocast(cfg, device):
            logits = model(xb).float()
        total_loss += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    return total_loss.item() / len(y), correct.item() / len(y)


def _prepare(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda" and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def train_model(cfg: Config, data: Dataset, *, progress: bool = False) -> TrainResult:
    """Train one model of ``cfg`` on ``data`` (already on the device) and record every epoch.

    Deterministic on a CPU for a fixed ``cfg.seed``: the seed fixes the initialisation, the data
    order and the augmentation draws. Stops after ``cfg.epochs`` epochs, or with
    ``cfg.target_accuracy`` set, at the first epoch whose test accuracy reaches it (at most
    ``cfg.max_epochs``). Raises :class:`TrainingDiverged` on a NaN or infinite loss.
    """
    device = data.x_train.device
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, cfg.norm, cfg.width, data.input_shape, data.num_classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), cfg)
    generator = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    augment = augmentation_enabled(cfg, data)
    n_train = len(data.y_train)
    per_epoch = steps_per_epoch(n_train, cfg.batch_size)
    total_steps = per_epoch * cfg.epoch_budget
    rows, step, reached = [], 0, False
    bar = _epoch_bar(cfg, progress)
    for epoch in range(1, cfg.epoch_budget + 1):
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        order = epoch_order(n_train, generator)
        for batch in range(per_epoch):
            idx = order[batch * cfg.batch_size:(batch + 1) * cfg.batch_size]
            xb, yb = data.x_train[idx], data.y_train[idx]
            if augment:
                xb = flip_crop(xb, generator)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(cfg, step, total_steps)
            with autocast(cfg, device):
                logits = model(_prepare(xb, device))
            loss = loss_fn(logits, yb, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(1) == yb).sum()
        train_loss = loss_sum.item() / per_epoch
        _check_finite(train_loss, epoch, cfg)
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test, cfg, device)
        rows.append(dict(epoch=epoch, lr=cfg.lr * lr_factor(cfg, step, total_steps),
                         train_loss=train_loss, train_acc=correct.item() / (per_epoch * cfg.batch_size),
                         test_loss=test_loss, test_acc=test_acc,
                         seconds=time.perf_counter() - started))
        bar.update(1)
        bar.set_postfix(test_acc=f"{test_acc:.3f}")
        if cfg.matched_accuracy and test_acc >= cfg.target_accuracy:
            reached = True
            break
        if not cfg.matched_accuracy and epoch >= cfg.epochs:
            break
    bar.close()
    return TrainResult(model=model, history=pd.DataFrame(rows), reached_target=reached)


def _epoch_bar(cfg: Config, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.epoch_budget, desc=f"{cfg.arch}/{cfg.norm} seed {cfg.seed}",
                unit="epoch", leave=False, disable=not enabled)


def _check_finite(train_loss: float, epoch: int, cfg: Config) -> None:
    if not math.isfinite(train_loss):
        raise TrainingDiverged(
            f"training diverged: the loss became {train_loss} in epoch {epoch} "
            f"(dataset={cfg.dataset}, arch={cfg.arch}, norm={cfg.norm}, lr={cfg.lr}). "
            f"Lower the learning rate (e.g. lr={cfg.lr / 4:g}) or use a norm layer."
        )


def describe_hardware(device: torch.device) -> str:
    """One line naming the device a chapter ran on (GPU model, or CPU cores and torch threads)."""
    import os
    import platform

    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cores = os.cpu_count() or 1
    return (f"CPU {platform.machine()} ({cores} cores, {torch.get_num_threads()} torch threads), "
            f"torch {torch.__version__}")

"""Training recipe: device and precision, SGD with a schedule.

The recipe's pieces (``resolve_device``, ``autocast``, ``make_optimizer``, ``clip_gradients_``,
``lr_factor``) are
used by the shadow-model engine (``ensemble.py``), which also trains single models
(``ensemble.train_model``): one training loop serves both, and this module imports nothing of the
engine.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .config import Config
from .models import classifier

class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message says when and what to change."""


def resolve_device(cfg: Config) -> torch.device:
    """The device ``cfg.device`` names; ``auto`` is CUDA when available, else CPU."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("Config.device='cuda' but no CUDA GPU is visible; use device='auto' or 'cpu'")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (oneDNN; e.g. AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def uses_bf16(cfg: Config, device: torch.device) -> bool:
    """bf16 autocast: on CUDA with ``precision`` auto or bf16; on a CPU only when asked for
    (``precision="bf16"``) and the CPU supports it. ``auto`` keeps a CPU in float32, so CPU results
    stay exactly comparable with the equivalence tests."""
    if cfg.precision == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        raise ValueError("Config.precision='bf16' needs a CUDA device or a CPU with native bf16 (oneDNN "
                         "reports none here); use precision='auto' or 'fp32'")
    if device.type == "cuda":
        return cfg.precision in ("auto", "bf16")
    return cfg.precision == "bf16"


def autocast(cfg: Config, device: torch.device):
    """The autocast context for a forward pass under ``cfg``'s precision."""
    if uses_bf16(cfg, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
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


AGC_EPS = 1e-3  # Brock et al.'s floor on a unit's weight norm, so zero-initialised gains can move


def unitwise_norms(tensor: torch.Tensor, n_models: int) -> torch.Tensor:
    """The norm of each unit of ``tensor``, broadcastable to it: a row (one output channel or unit)
    of a matrix or convolution, and, for a vector or scalar, each model's whole slice (Brock et al.
    take a gain or bias vector as one unit; in a wide network it is N models' vectors side by side)."""
    if tensor.ndim > 1:
        return tensor.flatten(1).norm(dim=1).view(-1, *([1] * (tensor.ndim - 1)))
    if tensor.ndim == 0:
        return tensor.abs()
    return tensor.view(n_models, -1).norm(dim=1).repeat_interleave(tensor.numel() // n_models)


def adaptive_clip_(model: nn.Module, clip: float, n_models: int = 1) -> None:
    """Adaptive Gradient Clipping (Brock et al. 2021), in place on ``model``'s gradients: each unit's
    gradient ``G`` is scaled down to ``clip * max(|W|, 1e-3) / |G|`` of itself where ``|G| / max(|W|, 1e-3)``
    exceeds ``clip``. The classifier (last linear layer) is left unclipped, as in NFNets. Every unit
    belongs to one model (:func:`unitwise_norms`), so on a wide network of ``n_models`` this is
    exactly each model's own AGC."""
    exempt = {id(p) for p in classifier(model).parameters()}
    for p in model.parameters():
        if p.grad is None or id(p) in exempt:
            continue
        weight = unitwise_norms(p.detach(), n_models).clamp_min(AGC_EPS)
        grad = unitwise_norms(p.grad, n_models)
        limit = weight * clip
        # torch.where, not a division by |G|: a unit with a zero gradient stays untouched, never NaN
        scale = torch.where(grad > limit, limit / grad.clamp_min(1e-6), torch.ones_like(grad))
        p.grad.mul_(scale)


def clip_gradients_(model: nn.Module, cfg: Config, n_models: int = 1) -> None:
    """The gradient clipping ``cfg``'s recipe asks for: AGC at ``cfg.agc_clip`` under ``norm='nf'``,
    nothing otherwise."""
    if cfg.norm == "nf":
        adaptive_clip_(model, cfg.agc_clip, n_models)


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


def describe_hardware(device: torch.device) -> str:
    """One line naming the device a chapter ran on (GPU model, or CPU cores and torch threads)."""
    import os
    import platform

    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cores = os.cpu_count() or 1
    return (f"CPU {platform.machine()} ({cores} cores, {torch.get_num_threads()} torch threads), "
            f"torch {torch.__version__}")

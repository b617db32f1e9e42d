"""What a family of shadow runs costs before it runs: image passes from the protocol, FLOPs from
the network, minutes from an assumed throughput.

Profiles that cannot be timed where they are written (the ``gpu`` profile, cut on a CPU) state
their cost from :func:`family_cost`; ``benchmarks/gpu_profile.py`` prints it.
"""

from __future__ import annotations

import dataclasses

import torch

from .config import Config
from .models import build_model
from .protocol.family import Protocol
from .protocol.learning_rates import VALIDATION_MODELS

# Queries per sample when the signals are computed: the image and its mirror (natural images).
QUERIES = 2


@dataclasses.dataclass(frozen=True)
class FamilyCost:
    """Image passes and FLOPs of one family (chapters 01-04 share it)."""

    lr_grid_image_epochs: int
    shadow_image_epochs: int
    signal_forwards: int
    train_flops_per_image: float
    forward_flops_per_image: float
    # The runs off the ladder (Protocol.width_points), training and signals, at their own widths.
    width_point_flops: float = 0.0

    @property
    def total_flops(self) -> float:
        training = (self.lr_grid_image_epochs + self.shadow_image_epochs) * self.train_flops_per_image
        return training + self.signal_forwards * self.forward_flops_per_image + self.width_point_flops

    def minutes_at(self, tflops: float) -> float:
        """Wall time at ``tflops`` TFLOP/s achieved."""
        return self.total_flops / (tflops * 1e12) / 60


def image_passes(p: Protocol, pool: int, test: int, references: int) -> tuple[int, int, int]:
    """``(lr_grid, shadow, signals)``: image-epochs of the learning-rate candidates
    (:data:`VALIDATION_MODELS` models per norm and multiplier on the pool less its
    validation split, at the first budget), image-epochs of the shadow runs (every model trains on
    half of the pool for its budget) and forward passes of their signals (every model queries the
    pool, the test split and the canaries' references, :data:`QUERIES` times each)."""
    held_out = int(round(pool * p.validation_fraction))
    candidates = sum(len(p.agc_candidates(norm)) for norm in p.norms) * len(p.lr_grid)  # nf: x its AGC grid
    lr_grid = candidates * VALIDATION_MODELS * (pool - held_out) * p.budgets[0]
    shadow = len(p.norms) * p.seeds * p.n_models * (pool // 2) * sum(p.budgets)
    signals = len(p.norms) * p.seeds * len(p.budgets) * p.n_models * (pool + test + references) * QUERIES
    return lr_grid, shadow, signals


def width_point_passes(p: Protocol, pool: int, test: int, references: int) -> dict[float, tuple[int, int]]:
    """``{width multiplier: (shadow, signals)}`` of the runs off the ladder, counted as
    :func:`image_passes` counts the ladder's."""
    runs = len(p.norms) * p.seeds * p.n_models
    return {m: (runs * (pool // 2) * budget, runs * (pool + test + references) * QUERIES) for m, budget in p.width_points}


def flops_per_image(cfg: Config, input_shape: tuple[int, int, int], num_classes: int) -> tuple[float, float]:
    """``(train, forward)`` FLOPs of one image through one model of ``cfg`` (torch.utils.flop_counter).
    One model, not the wide N-model network: the counter over-counts the backward pass of grouped
    convolutions, and the wide network does the same arithmetic for each of its models."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(cfg.arch, cfg.norm, cfg.width, input_shape, num_classes)
    x = torch.randn(2, *input_shape)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    train = counter.get_total_flops() / 2
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return train, counter.get_total_flops() / 2


def family_cost(p: Protocol, pool: int, test: int, references: int, input_shape: tuple[int, int, int],
                num_classes: int) -> FamilyCost:
    """The cost of the family of ``p`` on a pool of ``pool`` images (canaries included), a test split
    of ``test`` and ``references`` never-trained canary references."""
    lr_grid, shadow, signals = image_passes(p, pool, test, references)
    # BN's model: the other norms' layers cost the same to within a fraction of a percent.
    train, forward = flops_per_image(p.base.replace(norm="batch"), input_shape, num_classes)
    widths = 0.0
    for m, (point_shadow, point_signals) in width_point_passes(p, pool, test, references).items():
        cfg = p.base.replace(norm="batch", width=p.scaled_width(m))
        point_train, point_forward = flops_per_image(cfg, input_shape, num_classes)
        widths += point_shadow * point_train + point_signals * point_forward
    return FamilyCost(lr_grid, shadow, signals, train, forward, widths)

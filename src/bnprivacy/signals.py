"""Per-model, per-sample signals: logits of every shadow model on every pool and test sample.

Queries are the image itself and, optionally, augmented copies: ``queries=2`` adds the mirror image
(LiRA's "mirrored queries"); more queries add mirrored crops shifted by one pixel at a time.

BN query mode: ``eval`` uses each model's running statistics (a sample's output does not depend on
the rest of its query batch); ``train`` normalises with the statistics of the query batch itself,
as the LiRA reference code does, without updating the stored running statistics. In ``train``
mode the output depends on which samples share the batch: queries are made in batches of
``query_batch`` consecutive samples of the pool (or the test set), fixed across models.
"""

from __future__ import annotations

import torch

from .checks import check_whole
from .config import Config
from .data import apply_flip_crop
from .ensemble import build_ensemble, channels_last
from .models import ensemble_output, shared_input
from .training import autocast

QUERY_MODES = ("eval", "train")
QUERY_BATCH = 512


def query_views(x: torch.Tensor, queries: int) -> list[torch.Tensor]:
    """The ``queries`` views of a batch: identity, mirror, then mirrored/plain one-pixel shifts."""
    check_whole("queries", queries)
    views = [x, x.flip(3)][:queries]
    n, _, h, w = x.shape
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    for i in range(queries - len(views)):
        dy, dx = shifts[(i // 2) % len(shifts)]
        flips = torch.full((n,), i % 2 == 1, device=x.device)
        offsets = (torch.full((n,), 1 + dy, device=x.device), torch.full((n,), 1 + dx, device=x.device))
        views.append(apply_flip_crop(x, flips, *offsets, padding=1))
    return views


@torch.no_grad()
def collect_logits(cfg: Config, data, states: list[dict[str, torch.Tensor]], x: torch.Tensor, *,
                   queries: int = 2, mode: str = "eval", query_batch: int = QUERY_BATCH) -> torch.Tensor:
    """Logits ``[n_models, queries, len(x), classes]`` (float32, on the CPU) of the given models.

    ``states`` holds one state dict per model. The models run together as one wide network on
    ``x``'s device, ``query_batch`` samples at a time.
    """
    if mode not in QUERY_MODES:
        raise ValueError(f"mode={mode!r} is not allowed; allowed values: {', '.join(QUERY_MODES)}")
    wide = build_ensemble(cfg, data, states)
    wide.train(mode == "train")
    for module in wide.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0  # train-mode queries must leave the running statistics as trained
    n = len(states)
    out = torch.empty(n, queries, len(x), data.num_classes)
    for start in range(0, len(x), query_batch):
        chunk = x[start:start + query_batch]
        for q, view in enumerate(query_views(chunk, queries)):
            with autocast(cfg, x.device):
                logits = wide(channels_last(shared_input(view, n)))
            out[:, q, start:start + len(chunk)] = ensemble_output(logits.float(), n).cpu()
    return out

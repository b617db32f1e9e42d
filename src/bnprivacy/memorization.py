"""Memorization estimators on a shadow run: Feldman-Zhang scores, exposure, canary learning curves.

- **Memorization** of pool sample i (Feldman & Zhang 2020): ``P(correct | i IN) - P(correct | i OUT)``,
  the two probabilities estimated over the shadow models that did and did not train on i. Its
  uncertainty comes from the finite set of models: bootstrap intervals resample the models.
- **Exposure** of a canary (Carlini et al., The Secret Sharer, 2019):
  ``log2 |R| - log2 rank``, where R is the canary together with its never-trained reference
  candidates and ``rank`` is the position of the canary's loss among them (1 = lowest loss). A
  canary the model has not learnt sits at a random rank (expected exposure about 1.44 bits); a
  memorized one has the lowest loss of all (exposure ``log2 |R|``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from .stats import paired_difference  # noqa: F401  (re-exported: chapters and tests import it here)


def memorization_scores(correct: torch.Tensor, masks: torch.Tensor, *, n_boot: int = 200,
                        level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per-sample memorization with bootstrap intervals over models.

    ``correct`` and ``masks`` are ``[N models, P samples]`` bool. Returns one row per sample:
    ``p_in``, ``p_out``, ``mem`` and the interval ``mem_lo``/``mem_hi`` (``level``, percentile
    bootstrap over models, ``n_boot`` resamples), ``n_in``, ``n_out``. A sample without IN or OUT
    models gets NaN.
    """
    correct, masks = _check_pair(correct, masks)
    p_in, p_out = _in_out_rates(correct, masks, torch.ones(1, correct.shape[0], dtype=torch.float64))
    mem = (p_in - p_out)[0]
    if n_boot:
        boot = bootstrap_memorization(correct, masks, n_boot=n_boot, seed=seed)
        lo, hi = np.nanquantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=0)
    else:
        lo = hi = np.full(mem.shape, np.nan)
    return pd.DataFrame({
        "p_in": p_in[0].numpy(), "p_out": p_out[0].numpy(), "mem": mem.numpy(),
        "mem_lo": lo, "mem_hi": hi,
        "n_in": masks.sum(0).numpy(), "n_out": (~masks).sum(0).numpy(),
    })


def bootstrap_memorization(correct: torch.Tensor, masks: torch.Tensor, *, n_boot: int = 200,
                           seed: int = 0) -> np.ndarray:
    """``[n_boot, P]`` memorization scores, each from a resample (with replacement) of the models."""
    correct, masks = _check_pair(correct, masks)
    n = correct.shape[0]
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n, (n_boot, n), generator=generator)
    weights = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(n_boot, n, dtype=torch.float64))
    p_in, p_out = _in_out_rates(correct, masks, weights)
    return (p_in - p_out).numpy()


def group_memorization(correct: torch.Tensor, masks: torch.Tensor, kinds: list[str], *,
                       n_boot: int = 200, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Mean memorization per kind of sample (``typical``, ``noise``, ...) with bootstrap intervals.

    The interval resamples the models (the source of estimation noise for a fixed pool).
    """
    scores = memorization_scores(correct, masks, n_boot=0)
    boot = bootstrap_memorization(correct, masks, n_boot=n_boot, seed=seed)
    kinds_ = np.asarray(kinds)
    rows = []
    for kind in dict.fromkeys(kinds):
        members = kinds_ == kind
        if n_boot:
            lo, hi = np.nanquantile(np.nanmean(boot[:, members], axis=1), [(1 - level) / 2, (1 + level) / 2])
        else:
            lo = hi = float("nan")
        rows.append({"kind": kind, "samples": int(members.sum()),
                     "mem": float(np.nanmean(scores["mem"].to_numpy()[members])), "lo": lo, "hi": hi})
    return pd.DataFrame(rows).set_index("kind")


def _check_pair(correct: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    correct, masks = torch.as_tensor(correct).bool(), torch.as_tensor(masks)
    if masks.dtype != torch.bool or masks.shape != correct.shape or masks.ndim != 2:
        raise ValueError(f"correct {tuple(correct.shape)} and masks {tuple(masks.shape)} must both be "
                         "[models, samples], masks of dtype bool")
    return correct, masks


def _in_out_rates(correct: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor):
    """Weighted P(correct | IN) and P(correct | OUT): ``weights [B, N]`` -> two ``[B, P]``."""
    hit, inside = correct.double(), masks.double()
    with np.errstate(invalid="ignore", divide="ignore"):
        p_in = (weights @ (hit * inside)) / (weights @ inside)
        p_out = (weights @ (hit * (1 - inside))) / (weights @ (1 - inside))
    return p_in, p_out


def exposure(canary_losses: torch.Tensor, reference_losses: torch.Tensor,
             resolution_bits: float | None = None) -> torch.Tensor:
    """Exposure of each canary: ``log2 |R| - log2 rank`` with ``|R| = references + 1``.

    ``canary_losses [..., C]`` and ``reference_losses [..., R]`` share their leading dimensions
    (e.g. one row per model). ``rank = 1 + #(references with a lower loss)``. With
    ``resolution_bits``, raises ``ValueError`` unless the reference set resolves that many bits
    (``|R| >= 2**resolution_bits``).
    """
    size = reference_losses.shape[-1] + 1
    if resolution_bits is not None:
        check_exposure_resolution(size - 1, resolution_bits)
    lower = (reference_losses.unsqueeze(-2) < canary_losses.unsqueeze(-1)).sum(-1)
    return math.log2(size) - torch.log2((1 + lower).double())


def check_exposure_resolution(references: int, resolution_bits: float) -> None:
    """Raise ``ValueError`` unless ``references`` candidates resolve ``resolution_bits`` of exposure."""
    size = references + 1
    if size < 2 ** resolution_bits:
        raise ValueError(
            f"{references} reference candidates resolve exposure up to log2({size}) = "
            f"{math.log2(size):.2f} bits, fewer than the {resolution_bits} bits asked; use at least "
            f"{math.ceil(2 ** resolution_bits) - 1} references (Config.canary_references)"
        )


def canary_curves(canary_history: pd.DataFrame, masks: torch.Tensor, kinds: list[str]) -> pd.DataFrame:
    """Per-epoch accuracy and true-class confidence on canaries, by kind and IN/OUT.

    ``canary_history`` is ``ShadowRun.canary_history`` (model, epoch, sample, correct, confidence).
    """
    if canary_history.empty:
        return pd.DataFrame(columns=["kind", "membership", "epoch", "accuracy", "confidence"])
    frame = canary_history.copy()
    frame["kind"] = [kinds[s] for s in frame["sample"]]
    inside = masks.numpy()[frame["model"].to_numpy(), frame["sample"].to_numpy()]
    frame["membership"] = np.where(inside, "IN", "OUT")
    return (frame.groupby(["kind", "membership", "epoch"])
            .agg(accuracy=("correct", "mean"), confidence=("confidence", "mean")).reset_index())


def run_memorization(run, *, n_boot: int = 200, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Memorization of every pool sample of a ShadowRun (identity query) and its per-kind means.

    Returns ``(scores, groups)``: ``scores`` has one row per pool sample (with ``kind`` and
    ``label``), ``groups`` one row per kind with its bootstrap interval over models.
    """
    correct = (run.logits_pool[:, 0].argmax(-1) == run.y_pool)
    scores = memorization_scores(correct, run.masks, n_boot=n_boot, seed=seed)
    scores["kind"] = run.kinds
    scores["label"] = run.y_pool.numpy()
    groups = group_memorization(correct, run.masks, run.kinds, n_boot=n_boot, seed=seed)
    return scores, groups


def run_exposure(run, resolution_bits: float | None = None) -> pd.DataFrame:
    """Exposure of every canary of a ShadowRun, averaged over its IN and over its OUT models.

    Each canary is ranked against the reference candidates of its own kind (identity query).
    """
    from .scores import losses

    if run.logits_ref is None or not run.ref_kinds:
        raise ValueError("this run has no reference candidates; set Config.canary_references > 0")
    pool_losses = losses(run.logits_pool[:, 0], run.y_pool)
    ref_losses = losses(run.logits_ref[:, 0], run.y_ref)
    ref_kinds = np.asarray(run.ref_kinds)
    rows = []
    for i, kind in enumerate(run.kinds):
        if kind == "typical":
            continue
        refs = ref_losses[:, torch.from_numpy(ref_kinds == kind)]
        bits = exposure(pool_losses[:, i:i + 1], refs, resolution_bits)[:, 0]
        inside = run.masks[:, i]
        rows.append({"sample": i, "kind": kind, "exposure_in": float(bits[inside].mean()),
                     "exposure_out": float(bits[~inside].mean()),
                     "max_bits": math.log2(refs.shape[1] + 1)})
    return pd.DataFrame(rows)

"""Memorization estimators on a shadow run: Feldman-Zhang scores, exposure, canary learning curves.

- **Memorization** of pool sample i (Feldman & Zhang 2020): ``P(correct | i IN) - P(correct | i OUT)``,
  the two probabilities estimated over the shadow models that did and did not train on i. Its
  uncertainty comes from the finite set of models: bootstrap intervals resample the models.
- **Exposure** of a canary (Carlini et al., The Secret Sharer, 2019):
  ``log2 |R| - log2 rank``, where R is the canary together with its never-trained reference
  candidates and ``rank`` is the position of the canary's loss among them (1 = lowest loss). A
  canary the model has not learnt sits at a random rank (expected exposure about 1.44 bits); a
  memorized one has the lowest loss of all (exposure ``log2 |R|``).
- **Epochs to memorize** a canary (:func:`epochs_to_memorize`): in each model that trained on it,
  the first epoch from which the model predicts the canary's training label at every later epoch,
  as a fraction of the run's budget. Memorization at the end of training saturates once every
  norm fits its pool; how early in its schedule a model memorizes does not.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from .scores import losses


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


def epochs_to_memorize(canary_history: pd.DataFrame, masks: torch.Tensor, *, budget: int | None = None,
                       kinds: list[str] | None = None) -> pd.DataFrame:
    """Per canary and IN model: when the model memorized the canary for good, as a fraction of the budget.

    ``canary_history`` is ``ShadowRun.canary_history``: one row per (``model``, ``epoch``,
    ``sample``) with ``correct`` (the model predicts the canary's training label after that epoch,
    epochs numbered 1..budget); ``masks [N models, P pool]`` says which models trained on which pool
    sample. Only the models that trained on a canary (IN) count. ``budget`` defaults to the last
    epoch of the history; every (IN model, canary) must have every epoch 1..budget. With ``kinds``
    (the pool's sample kinds), samples of kind ``"typical"`` are left out.

    For one model and canary, ``epoch`` is the first epoch e such that the model is correct after e
    and after every later epoch (a canary that flips back is memorized only from its last flip);
    ``fraction = epoch / budget``. A canary the model is wrong on after the last epoch was never
    memorized: ``memorized`` is False and ``fraction`` is censored at 1, the value of a canary
    memorized only in the last epoch (whether one epoch of being right would last is not observed
    either). ``fraction`` lies in (0, 1]; lower = memorized earlier in the schedule.

    Returns one row per (sample, IN model): ``sample``, ``model``, ``epoch`` (NaN when never),
    ``fraction``, ``memorized``. Raises ``ValueError`` for an empty history, no canaries, no IN
    model of any canary, or a history with missing or repeated epochs.
    """
    needed = {"model", "epoch", "sample", "correct"}
    if canary_history is None or canary_history.empty:
        raise ValueError("the canary history is empty: the run has no canaries (Config.canaries) "
                         "or recorded no per-epoch predictions on them")
    if not needed <= set(canary_history.columns):
        raise ValueError(f"the canary history needs the columns {sorted(needed)}, "
                         f"got {sorted(canary_history.columns)}")
    masks = torch.as_tensor(masks)
    if masks.dtype != torch.bool or masks.ndim != 2:
        raise ValueError(f"masks must be [models, pool] of dtype bool, got {tuple(masks.shape)} {masks.dtype}")
    frame = canary_history[list(needed)]
    if kinds is not None:
        frame = frame[[kinds[s] != "typical" for s in frame["sample"]]]
        if frame.empty:
            raise ValueError("the canary history holds no canaries (every sample in it is typical)")
    last = int(frame["epoch"].max())
    budget = last if budget is None else int(budget)
    if budget < 1 or last > budget or int(frame["epoch"].min()) < 1:
        raise ValueError(f"epochs must lie in 1..budget={budget}, got {int(frame['epoch'].min())}.."
                         f"{last}")
    model, sample = frame["model"].to_numpy(), frame["sample"].to_numpy()
    if model.max() >= masks.shape[0] or sample.max() >= masks.shape[1]:
        raise ValueError(f"the history names models or samples outside masks {tuple(masks.shape)}")
    frame = frame[masks.numpy()[model, sample]]  # IN models only
    if frame.empty:
        raise ValueError("no canary of the history has a model that trained on it (IN)")
    if frame.duplicated(["model", "sample", "epoch"]).any():
        raise ValueError("the canary history repeats an epoch of some (model, canary)")
    grid = frame.pivot(index=["sample", "model"], columns="epoch", values="correct")
    grid = grid.reindex(columns=range(1, budget + 1))
    if grid.isna().any().any():
        missing = grid.columns[grid.isna().any()].tolist()
        raise ValueError(f"the canary history lacks epochs {missing} for some (IN model, canary); "
                         f"every epoch 1..{budget} is needed")
    correct = grid.to_numpy(dtype=bool)                                  # [pairs, budget]
    wrong = ~correct
    # last epoch at which the model was wrong (0 if never): memorized for good from the next one
    last_wrong = np.where(wrong.any(1), budget - np.argmax(wrong[:, ::-1], axis=1), 0)
    memorized = correct[:, -1]
    epoch = np.where(memorized, last_wrong + 1, np.nan)
    out = grid.index.to_frame(index=False)
    out["epoch"] = epoch
    out["fraction"] = np.where(memorized, epoch / budget, 1.0)
    out["memorized"] = memorized
    return out


def mean_epochs_to_memorize(canary_history: pd.DataFrame, masks: torch.Tensor, *, budget: int | None = None,
                            kinds: list[str] | None = None) -> float:
    """A run's epochs to memorize its canaries: the mean over canaries of the mean over each
    canary's IN models of :func:`epochs_to_memorize`'s ``fraction`` of the budget (censored at 1)."""
    per_pair = epochs_to_memorize(canary_history, masks, budget=budget, kinds=kinds)
    return float(per_pair.groupby("sample")["fraction"].mean().mean())

"""Recipe search for a recorded setting: each candidate recipe trained on the recording pool and
read on a validation split of that pool (never on the test split), with its cost.

A candidate is a map of :class:`~bnprivacy.config.Config` fields (``arch``, ``width``, ``norm``,
``epochs``, ``lr``, ``weight_decay``, ``label_smoothing``, ``augment``, ``batch_size``,
``precision``, ...) plus ``pool`` (the pool size). Each trial trains ``models`` models the way a
shadow model trains: on a random half of the pool's size, drawn from the pool less its validation
split. ``benchmarks/recipes.py`` runs a list of candidates and prints the accuracy-cost table.
"""

from __future__ import annotations

import time

import torch

from .config import Config
from .ensemble import build_ensemble, evaluate_ensemble, train_ensemble
from .protocol.learning_rates import validation_split
from .training import TrainingDiverged

# The setting a trial's cost is projected to: models per run, seeds, and the epoch ladder as
# multiples of the candidate's epochs (a ladder of two budgets, E and 2E).
PROJECTED_MODELS = 16
PROJECTED_SEEDS = 3
PROJECTED_LADDER = (1, 2)


def check_candidates(candidates, base: dict) -> list[Config]:
    """Every candidate as a validated Config (``base`` first, then the candidate's fields; ``pool``
    becomes ``train_size``), before anything trains. Raises ``ValueError`` naming the candidate."""
    if not isinstance(candidates, list) or not candidates:
        raise ValueError("the candidates must be a non-empty list of maps of Config fields plus pool")
    configs = []
    for number, candidate in enumerate(candidates, 1):
        if not isinstance(candidate, dict):
            raise ValueError(f"candidate {number} is {candidate!r}, not a map of Config fields")
        fields = {**base, **{("train_size" if k == "pool" else k): v for k, v in candidate.items()}}
        try:
            configs.append(Config.from_dict(fields))
        except ValueError as error:
            raise ValueError(f"candidate {number} ({candidate}): {error}") from None
    return configs


def trial_masks(pool: int, held_out: torch.Tensor, models: int, seed: int = 0) -> torch.Tensor:
    """``[models, pool]`` masks: each model IN on ``pool // 2`` samples drawn from outside
    ``held_out``, as a shadow model trains on half of the pool."""
    allowed = torch.ones(pool, dtype=torch.bool)
    allowed[held_out] = False
    candidates = torch.nonzero(allowed).flatten()
    size = min(pool // 2, len(candidates))
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(models, pool, dtype=torch.bool)
    for m in range(models):
        masks[m, candidates[torch.randperm(len(candidates), generator=generator)[:size]]] = True
    return masks


def trial(cfg: Config, data, *, models: int = 2, validation_fraction: float = 0.2, seed: int = 0) -> dict:
    """Train ``models`` models of ``cfg`` (:func:`trial_masks`) and read them: mean accuracy on the
    validation split (``val_acc``), on their own IN samples (``in_acc``, what the fit rule reads), their
    clean loss (eval mode, no label smoothing) on their IN samples and on the pool's other samples
    (``in_loss``, ``out_loss``: the state a membership attack reads), the training time and images/s (IN images x epochs / seconds), and the projected hours of a setting
    of :data:`PROJECTED_SEEDS` seeds x :data:`PROJECTED_MODELS` models x the ladder
    :data:`PROJECTED_LADDER` at this rate, per norm. A diverged training reads accuracy 0."""
    pool = len(data.y_train)
    held_out = validation_split(data, validation_fraction, seed)
    masks = trial_masks(pool, held_out, models, seed)
    started = time.perf_counter()
    try:
        result = train_ensemble(cfg, data, masks)
    except TrainingDiverged:
        nan = float("nan")
        return {"val_acc": 0.0, "in_acc": 0.0, "in_loss": nan, "out_loss": nan, "seconds": time.perf_counter() - started,
                "images_per_s": nan, "projected_hours": nan}
    seconds = time.perf_counter() - started
    wide = build_ensemble(cfg, data, result.states)
    x, y = data.x_train, data.y_train
    idx = held_out.to(x.device)
    _, val = evaluate_ensemble(cfg, wide, models, x[idx], y[idx])
    in_acc, in_loss, out_loss = [], [], []
    for m in range(models):
        inside = torch.nonzero(masks[m]).flatten().to(x.device)
        outside = torch.nonzero(~masks[m]).flatten().to(x.device)
        loss, acc = evaluate_ensemble(cfg, wide, models, x[inside], y[inside])
        in_acc.append(float(acc[m]))
        in_loss.append(float(loss[m]))
        out_loss.append(float(evaluate_ensemble(cfg, wide, models, x[outside], y[outside])[0][m]))
    images_per_s = float(masks.sum()) * cfg.epochs / seconds
    return {"val_acc": float(val.mean()), "in_acc": sum(in_acc) / models, "in_loss": sum(in_loss) / models,
            "out_loss": sum(out_loss) / models, "seconds": seconds,
            "images_per_s": images_per_s, "projected_hours": projected_hours(images_per_s, pool, cfg.epochs)}


def projected_hours(images_per_s: float, pool: int, epochs: int) -> float:
    """Hours to train one norm's side of a setting at ``images_per_s``: :data:`PROJECTED_SEEDS` x
    :data:`PROJECTED_MODELS` models x half the pool x every budget of the ladder."""
    image_epochs = PROJECTED_SEEDS * PROJECTED_MODELS * (pool // 2) * sum(k * epochs for k in PROJECTED_LADDER)
    return image_epochs / images_per_s / 3600

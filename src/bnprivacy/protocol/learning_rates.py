"""Step 2 of the protocol: each norm's learning rate (and nf's AGC threshold), chosen on a validation
split of the pool's typical samples, cached in the store."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import Config
from ..ensemble import build_ensemble, evaluate_ensemble, train_ensemble
from ..progress import PlannedRun, TrainingClock
from ..runs.disk import results_folder, save_json
from ..training import TrainingDiverged
from .family import Protocol

VALIDATION_MODELS = 2
# The family parameters that make its training smaller, named when an estimate exceeds an hour.
LR_GRID_SHRINK = "lr_grid (fewer multipliers), the first of the budgets or train_size"


def validation_split(data, fraction: float, seed: int = 0) -> torch.Tensor:
    """Pool indices held out for choosing the learning rate: a random ``fraction`` of the typical
    samples (canaries always stay in training, where the question is)."""
    kinds = data.kinds or ["typical"] * len(data.y_train)
    typical = torch.tensor([i for i, k in enumerate(kinds) if k == "typical"])
    generator = torch.Generator().manual_seed(seed)
    size = max(1, round(fraction * len(typical)))
    return typical[torch.randperm(len(typical), generator=generator)[:size]].sort().values


def validation_accuracy(cfg: Config, data, held_out: torch.Tensor, models: int = VALIDATION_MODELS) -> float:
    """Mean accuracy on ``held_out`` pool samples of ``models`` models of ``cfg`` trained on the rest
    of the pool; 0 when training diverges (a learning rate that diverges is not chosen)."""
    masks = torch.ones(models, len(data.y_train), dtype=torch.bool)
    masks[:, held_out] = False
    try:
        result = train_ensemble(cfg, data, masks)
    except TrainingDiverged:
        return 0.0
    wide = build_ensemble(cfg, data, result.states)
    idx = held_out.to(data.x_train.device)
    _, accuracy = evaluate_ensemble(cfg, wide, models, data.x_train[idx], data.y_train[idx])
    return float(accuracy.mean()) if torch.isfinite(accuracy).all() else 0.0


def choose_learning_rates(protocol: Protocol, data, *, progress: bool = False) -> pd.DataFrame:
    """Validation accuracy of every (norm, lr multiplier) at the first budget; one row each with
    ``chosen`` marking the best lr per norm (ties go to the multiplier closest to 1).

    Each candidate's accuracy is cached in the store (``results/validation/``) by its Config's key,
    so every chapter and every shard sees the same choice.
    """
    from tqdm.auto import tqdm

    held_out = validation_split(data, protocol.validation_fraction)
    rows = []
    grid = [(n, m, a) for n in protocol.norms for m in protocol.lr_grid for a in protocol.agc_candidates(n)]
    configs = {key: protocol.config(key[0], protocol.budgets[0], protocol.base.lr * key[1], 0, key[2]) for key in grid}
    images = float(len(data.y_train) - len(held_out))
    planned = {key: PlannedRun(candidate_name(*key), VALIDATION_MODELS, images, protocol.budgets[0])
               for key, cfg in configs.items()
               if not _validation_path(cfg, protocol.validation_fraction).is_file()}
    clock = TrainingClock("learning-rate candidates", list(planned.values()), loaded=len(grid) - len(planned),
                          shrink=LR_GRID_SHRINK)
    clock.start()
    for key in tqdm(grid, desc="learning-rate grid", disable=not progress):
        norm, multiplier, agc = key
        cfg = configs[key]
        started = time.perf_counter()
        accuracy = _cached_validation(cfg, data, held_out, protocol.validation_fraction)
        if key in planned:
            clock.run_trained(planned[key], time.perf_counter() - started)
        rows.append({"norm": norm, "multiplier": float(multiplier), "lr": cfg.lr,
                     "agc_clip": math.nan if agc is None else float(agc), "val_acc": accuracy})
    table = pd.DataFrame(rows)
    table["chosen"] = False
    for norm, group in table.groupby("norm", sort=False):
        ranked = group.assign(distance=np.abs(np.log(group.multiplier)))
        best = ranked.sort_values(["val_acc", "distance"], ascending=[False, True]).index[0]
        table.loc[best, "chosen"] = True
    return table


def candidate_name(norm: str, multiplier: float, agc: float | None = None) -> str:
    """A learning-rate candidate in words: ``"nf, lr x4, AGC 0.02"``."""
    return f"{norm}, lr x{multiplier:g}" + ("" if agc is None else f", AGC {agc:g}")


def chosen_agc(lr_table: pd.DataFrame) -> dict[str, float | None]:
    """``{norm: AGC threshold}`` of the rows marked ``chosen`` (None for a norm that does not clip)."""
    chosen = lr_table[lr_table.chosen]
    return {norm: (None if math.isnan(agc) else float(agc)) for norm, agc in zip(chosen.norm, chosen.agc_clip)}


def lr_table_shown(lr_table: pd.DataFrame) -> pd.DataFrame:
    """The validation accuracy (%) of every candidate, a row per norm (per norm and AGC threshold
    for nf) and a column per learning rate, for a chapter's table."""
    label = [norm if math.isnan(agc) else f"{norm}, AGC {agc:g}" for norm, agc in zip(lr_table.norm, lr_table.agc_clip)]
    return (lr_table.assign(candidate=label, lr=lr_table.lr.map("{:g}".format), val_acc=100 * lr_table.val_acc)
            .pivot_table(index="candidate", columns="lr", values="val_acc", sort=False)
            .rename_axis(index="norm", columns="validation accuracy (%) at learning rate"))


def _validation_path(cfg: Config, fraction: float) -> Path:
    return results_folder("validation") / f"{cfg.key()}-{fraction:g}-{VALIDATION_MODELS}.json"


def _cached_validation(cfg: Config, data, held_out: torch.Tensor, fraction: float) -> float:
    import json

    path = _validation_path(cfg, fraction)
    if path.is_file():
        try:
            return float(json.loads(path.read_text())["val_acc"])
        except (ValueError, KeyError):
            pass
    value = validation_accuracy(cfg, data, held_out)
    save_json(path, {"val_acc": value, "config": cfg.to_dict()})
    return value


def grid_edge_lines(lr_table: pd.DataFrame) -> list[str]:
    """One line per norm whose chosen learning rate is the lowest or the highest of a grid of two or
    more rates: its best rate may lie outside the grid, so its models (and the comparisons that use
    them) may be under-tuned. Empty when every choice lies inside its grid."""
    lines = []
    for norm, group in lr_table.groupby("norm", sort=False):
        if len(group) < 2:
            continue
        chosen = group[group.chosen].iloc[0]
        lowest, highest = group.lr.min(), group.lr.max()
        if chosen.lr not in (lowest, highest):
            continue
        side, multiplier = ("lowest", "smaller") if chosen.lr == lowest else ("highest", "larger")
        lines.append(f"{norm} chose lr {chosen.lr:g}, the {side} of its grid ({lowest:g} to {highest:g}): its best "
                     f"rate may lie outside the grid, so its models may be under-tuned; add a {multiplier} "
                     "multiplier to lr_grid")
    return lines


def chosen_lr(lr_table: pd.DataFrame) -> dict[str, float]:
    """``{norm: learning rate}`` of the rows marked ``chosen``."""
    chosen = lr_table[lr_table.chosen]
    return dict(zip(chosen.norm, chosen.lr))

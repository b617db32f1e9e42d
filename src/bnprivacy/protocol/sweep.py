"""Steps 1 and 3 of the protocol: the budget sweep of every (norm, budget, seed) run, and what a run's
summary says about its fit."""

from __future__ import annotations

import dataclasses
import math
import time

import pandas as pd
import torch

from ..progress import TrainingClock
from ..runs.shadow import ShadowRun, planned_run, shadow_run
from .family import Protocol
from .learning_rates import choose_learning_rates, chosen_agc, chosen_lr

FAMILY_SHRINK = ("n_models, seeds, budgets (fewer or smaller), widths, train_size or width "
                 "(e.g. -p n_models 8 -p seeds 2)")
# What a run's models are on the pool, in eval mode on the identity query: mean clean cross-entropy
# (no label smoothing, no augmentation) and mean logit margin (true logit minus the largest other)
# on their IN samples and on their OUT samples. The state LiRA reads; matched by the loss frontier.
STATE = ("in_loss", "out_loss", "in_margin", "out_margin")
# The ladder's width multiplier; every other point of the width grid is off the ladder.
LADDER_WIDTH = 1.0


def run_summary(run: ShadowRun) -> dict:
    """Mean final test accuracy of a run's models, their accuracy on their own IN samples (identity
    query, eval mode; what the fit rule reads), mean and worst model, and their :data:`STATE`."""
    hits = (run.logits_pool[:, 0].argmax(-1) == run.y_pool).float()
    inside = run.masks.float()
    train_acc = (hits * inside).sum(1) / inside.sum(1)
    last = run.history.sort_values("epoch").groupby("model").tail(1)
    return {"test_acc": float(last.test_acc.mean()), "train_acc": float(train_acc.mean()),
            "train_acc_min": float(train_acc.min()), "epochs_run": int(last.epoch.max()), **run_state(run)}


def run_state(run: ShadowRun) -> dict:
    """:data:`STATE` of a run: each model's mean over its IN (and OUT) pool samples, averaged over
    models."""
    logits = run.logits_pool[:, 0].float()
    labels = run.y_pool.to(logits.device).long().expand(logits.shape[0], -1)
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    true = logits.gather(-1, labels[..., None])[..., 0]
    other = logits.scatter(-1, labels[..., None], float("-inf")).amax(-1)
    inside = run.masks.to(logits.device).float()
    outside = 1 - inside

    def mean(values, where):
        return float(((values * where).sum(1) / where.sum(1).clamp(min=1)).mean())

    return {"in_loss": mean(loss, inside), "out_loss": mean(loss, outside),
            "in_margin": mean(true - other, inside), "out_margin": mean(true - other, outside)}


def widths_of(table: pd.DataFrame) -> pd.Series:
    """A table's width multipliers; a table without the column (recorded before the width grid, or
    built by hand) is all on the ladder."""
    return table["width"] if "width" in table else pd.Series(LADDER_WIDTH, index=table.index)


def ladder(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a per-run table (``Sweep.table``, ``measures.measure_table``) on the ladder (width
    x1): what per-budget curves, pairs of budgets and the detail sections read."""
    return table[widths_of(table) == LADDER_WIDTH]


@dataclasses.dataclass
class Sweep:
    """Every run of the family, with one summary row per (norm, width, budget, seed) in ``table``.
    ``runs`` holds the ladder's runs by (norm, budget, seed); ``width_runs`` the runs off the ladder
    by (norm, width multiplier, budget, seed)."""

    protocol: Protocol
    lr_table: pd.DataFrame
    runs: dict
    table: pd.DataFrame
    num_classes: int
    width_runs: dict = dataclasses.field(default_factory=dict)

    def run(self, norm: str, budget: int, seed: int) -> ShadowRun:
        return self.runs[norm, budget, seed]

    def every_run(self):
        """``((norm, width, budget, seed), run)`` of every run, the ladder's (width 1) first."""
        yield from (((n, LADDER_WIDTH, b, s), run) for (n, b, s), run in self.runs.items())
        yield from self.width_runs.items()

    def sides(self) -> pd.DataFrame:
        """Per (norm, budget) of the ladder: lr, mean train (IN) and test accuracy and :data:`STATE`
        over seeds, and whether it fits."""
        return self._aggregate(ladder(self.table), ["norm", "budget"])

    def points(self) -> pd.DataFrame:
        """:meth:`sides` per (norm, width, budget): every point of the frontiers, on the ladder or off it."""
        return self._aggregate(self.table.assign(width=widths_of(self.table)), ["norm", "width", "budget"])

    def _aggregate(self, table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
        p = self.protocol
        state = {name: (name, "mean") for name in STATE if name in table}
        sides = (table.groupby(keys, sort=False)
                 .agg(lr=("lr", "first"), train_acc=("train_acc", "mean"), test_acc=("test_acc", "mean"),
                      test_acc_sd=("test_acc", "std"), seeds=("seed", "count"), **state).reset_index())
        sides["fit"] = sides.train_acc >= p.fit_threshold
        sides["trained"] = sides.test_acc >= p.chance_factor / self.num_classes
        return sides


def run_sweep(protocol: Protocol, data, *, lr_table: pd.DataFrame | None = None, query_mode: str = "eval",
              progress: bool = True) -> Sweep:
    """Train (or load) every (norm, budget, seed) run of the family at each norm's chosen learning
    rate, and every point off the ladder (``Protocol.width_points``); a run found in the store is
    loaded, not retrained."""
    if lr_table is None:
        lr_table = choose_learning_rates(protocol, data, progress=progress)
    lrs, agcs = chosen_lr(lr_table), chosen_agc(lr_table)
    specs = {(norm, width, budget, seed): protocol.spec(norm, budget, lrs[norm], seed, len(data.y_train),
                                                        agcs[norm], width)
             for norm in protocol.norms for width, budget in protocol.points for seed in range(protocol.seeds)}
    planned = {key: planned_run(_run_name(*key), spec, len(data.y_train)) for key, spec in specs.items()}
    planned = {key: run for key, run in planned.items() if run.models}
    clock = TrainingClock("shadow runs of the family", list(planned.values()), loaded=len(specs) - len(planned),
                          shrink=FAMILY_SHRINK)
    clock.start()
    runs, width_runs, rows = {}, {}, []
    for key, spec in specs.items():
        started = time.perf_counter()
        run = shadow_run(spec, data, query_mode=query_mode, progress=progress)
        if key in planned:
            clock.run_trained(planned[key], time.perf_counter() - started)
        norm, width, budget, seed = key
        if width == LADDER_WIDTH:
            runs[norm, budget, seed] = run
        else:
            width_runs[key] = run
        rows.append({"norm": norm, "width": width, "budget": budget, "seed": seed, "lr": lrs[norm],
                     "agc_clip": math.nan if agcs[norm] is None else agcs[norm], **run_summary(run)})
    return Sweep(protocol, lr_table, runs, pd.DataFrame(rows), data.num_classes, width_runs)


def _run_name(norm: str, width: float, budget: int, seed: int) -> str:
    at = "" if width == LADDER_WIDTH else f", width x{width:g}"
    return f"{norm}, {budget} epochs{at}, seed {seed}"

"""Steps 1 and 3 of the protocol: the budget sweep of every (norm, budget, seed) run, and what a run's
summary says about its fit."""

from __future__ import annotations

import dataclasses
import math
import time

import pandas as pd

from ..progress import TrainingClock
from ..runs.shadow import ShadowRun, planned_run, shadow_run
from .family import Protocol
from .learning_rates import choose_learning_rates, chosen_agc, chosen_lr

FAMILY_SHRINK = "n_models, seeds, budgets (fewer or smaller), train_size or width (e.g. -p n_models 8 -p seeds 2)"


def run_summary(run: ShadowRun) -> dict:
    """Mean final test accuracy of a run's models, and their accuracy on their own IN samples
    (identity query, eval mode; what the fit rule reads): mean and worst model."""
    hits = (run.logits_pool[:, 0].argmax(-1) == run.y_pool).float()
    inside = run.masks.float()
    train_acc = (hits * inside).sum(1) / inside.sum(1)
    last = run.history.sort_values("epoch").groupby("model").tail(1)
    return {"test_acc": float(last.test_acc.mean()), "train_acc": float(train_acc.mean()),
            "train_acc_min": float(train_acc.min()), "epochs_run": int(last.epoch.max())}


@dataclasses.dataclass
class Sweep:
    """Every run of the family, with one summary row per (norm, budget, seed) in ``table``."""

    protocol: Protocol
    lr_table: pd.DataFrame
    runs: dict
    table: pd.DataFrame
    num_classes: int

    def run(self, norm: str, budget: int, seed: int) -> ShadowRun:
        return self.runs[norm, budget, seed]

    def sides(self) -> pd.DataFrame:
        """Per (norm, budget): lr, mean train (IN) and test accuracy over seeds, and whether it fits."""
        p = self.protocol
        sides = (self.table.groupby(["norm", "budget"], sort=False)
                 .agg(lr=("lr", "first"), train_acc=("train_acc", "mean"), test_acc=("test_acc", "mean"),
                      test_acc_sd=("test_acc", "std"), seeds=("seed", "count")).reset_index())
        sides["fit"] = sides.train_acc >= p.fit_threshold
        sides["trained"] = sides.test_acc >= p.chance_factor / self.num_classes
        return sides


def run_sweep(protocol: Protocol, data, *, lr_table: pd.DataFrame | None = None, query_mode: str = "eval",
              progress: bool = True) -> Sweep:
    """Train (or load) every (norm, budget, seed) run of the family at each norm's chosen learning
    rate; a run found in the store is loaded, not retrained."""
    if lr_table is None:
        lr_table = choose_learning_rates(protocol, data, progress=progress)
    lrs, agcs = chosen_lr(lr_table), chosen_agc(lr_table)
    specs = {(norm, budget, seed): protocol.spec(norm, budget, lrs[norm], seed, len(data.y_train), agcs[norm])
             for norm in protocol.norms for budget in protocol.budgets for seed in range(protocol.seeds)}
    planned = {key: planned_run(f"{key[0]}, {key[1]} epochs, seed {key[2]}", spec, len(data.y_train))
               for key, spec in specs.items()}
    planned = {key: run for key, run in planned.items() if run.models}
    clock = TrainingClock("shadow runs of the family", list(planned.values()), loaded=len(specs) - len(planned),
                          shrink=FAMILY_SHRINK)
    clock.start()
    runs, rows = {}, []
    for key, spec in specs.items():
        started = time.perf_counter()
        run = shadow_run(spec, data, query_mode=query_mode, progress=progress)
        if key in planned:
            clock.run_trained(planned[key], time.perf_counter() - started)
        runs[key] = run
        norm, budget, seed = key
        rows.append({"norm": norm, "budget": budget, "seed": seed, "lr": lrs[norm],
                     "agc_clip": math.nan if agcs[norm] is None else agcs[norm], **run_summary(run)})
    return Sweep(protocol, lr_table, runs, pd.DataFrame(rows), data.num_classes)

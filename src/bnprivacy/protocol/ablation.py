"""The learning-rate ablation: how much of a BN − reference difference stays when both train at one rate.

Each norm trains at the rate its own validation split chose, and BN's is often far from a
reference's (16x apart on CIFAR-10). So a BN − reference difference may come from the rate rather
than from the normalisation. The ablation trains, at the ladder's first budget and with the
family's seeds and masks, BN at each reference's chosen rate and each reference at BN's, and pairs
them as the family pairs its runs:

- *chosen rates*: BN at its rate against the reference at its rate (the family's own runs);
- *both at BN's rate* and *both at ref's rate* (the reference's): one of the two sides moved.

A side that diverges, or does not fit or train, makes its row "not comparable" through the guard,
as everywhere in the protocol.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ..progress import TrainingClock
from ..runs.shadow import ShadowRun, planned_run, shadow_run
from ..stats import paired_difference
from ..training import TrainingDiverged
from .comparisons import Comparison, guard, side
from .learning_rates import chosen_agc, chosen_lr
from .sweep import Sweep

SHRINK = "lr_ablation false, seeds or n_models"
ARMS = ("chosen rates", "both at BN's rate", "both at ref's rate")


@dataclasses.dataclass
class RateAblation:
    """The runs of the ablation: ``runs[(norm, lr)]`` is one run per seed of ``norm`` at learning
    rate ``lr`` at ``budget`` epochs (None where it diverged); ``chosen`` each norm's chosen rate."""

    budget: int
    chosen: dict[str, float]
    runs: dict
    num_classes: int
    fit_threshold: float
    chance_factor: float

    def arms(self, reference: str) -> list[tuple[str, float, float]]:
        """``(arm, BN's rate, the reference's rate)`` of each row for ``reference``: one row
        when both norms chose the same rate (no ablation to run)."""
        bn, ref = self.chosen["batch"], self.chosen[reference]
        if bn == ref:
            return [(ARMS[0], bn, ref)]
        return [(ARMS[0], bn, ref), (ARMS[1], bn, bn), (ARMS[2], ref, ref)]

    def comparison(self, reference: str, lr_bn: float, lr_ref: float) -> Comparison:
        """The guarded comparison of BN at ``lr_bn`` with ``reference`` at ``lr_ref``."""
        bn, ref = self.runs["batch", lr_bn], self.runs[reference, lr_ref]
        diverged = [f"{norm} diverged at lr {lr:g}" for norm, lr, runs in (("batch", lr_bn, bn), (reference, lr_ref, ref))
                    if runs is None]
        if diverged:
            return Comparison("lr ablation", reference, self.budget, self.budget, lr_bn, lr_ref, np.nan, np.nan,
                              np.nan, np.nan, False, False, False, "; ".join(diverged))
        return guard("lr ablation", side("batch", bn), side(reference, ref), num_classes=self.num_classes,
                     fit_threshold=self.fit_threshold, chance_factor=self.chance_factor)

    def difference(self, reference: str, lr_bn: float, lr_ref: float, measure) -> dict:
        """``measure(run)`` of BN at ``lr_bn`` minus ``reference`` at ``lr_ref``, paired by seed:
        ``{batch, ref, diff, lo, hi, n}`` (NaN where a side diverged)."""
        bn, ref = self.runs["batch", lr_bn], self.runs[reference, lr_ref]
        if bn is None or ref is None:
            nan = float("nan")
            return {"batch": nan, "ref": nan, "diff": nan, "lo": nan, "hi": nan, "n": 0}
        a = np.array([measure(run) for run in bn])
        b = np.array([measure(run) for run in ref])
        return {"batch": float(a.mean()), "ref": float(b.mean()), **paired_difference(a, b)}


def ablation_rates(sweep: Sweep) -> list[tuple[str, float]]:
    """The (norm, rate) arms the ablation needs: every norm at its chosen rate, BN at each
    reference's and each reference at BN's."""
    lrs = chosen_lr(sweep.lr_table)
    arms = [(norm, lrs[norm]) for norm in sweep.protocol.norms]
    for reference in sweep.protocol.references:
        arms += [("batch", lrs[reference]), (reference, lrs["batch"])]
    return list(dict.fromkeys(arms))


def train_rate_ablation(sweep: Sweep, data, *, query_mode: str = "eval", progress: bool = False) -> RateAblation:
    """Train (or load from the store) every arm of :func:`ablation_rates` at the ladder's first
    budget, one run per seed with the family's masks; the family's own runs are loaded, not
    retrained. A run that diverges is kept as None (its rows read "not comparable")."""
    p = sweep.protocol
    budget = p.budgets[0]
    agcs = chosen_agc(sweep.lr_table)
    specs = {(norm, lr, seed): p.spec(norm, budget, lr, seed, len(data.y_train), agcs[norm])
             for norm, lr in ablation_rates(sweep) for seed in range(p.seeds)}
    planned = {key: planned_run(f"{key[0]} at lr {key[1]:g}, seed {key[2]}", spec, len(data.y_train))
               for key, spec in specs.items()}
    planned = {key: run for key, run in planned.items() if run.models}
    clock = TrainingClock("learning-rate ablation", list(planned.values()), loaded=len(specs) - len(planned),
                          shrink=SHRINK)
    clock.start()
    trained: dict = {}
    for key, spec in specs.items():
        started = time.perf_counter()
        trained[key] = _run_or_none(spec, data, query_mode, progress)
        if key in planned:
            clock.run_trained(planned[key], time.perf_counter() - started)
    runs = {}
    for norm, lr in ablation_rates(sweep):
        seeds = [trained[norm, lr, seed] for seed in range(p.seeds)]
        runs[norm, lr] = None if any(run is None for run in seeds) else seeds
    return RateAblation(budget, chosen_lr(sweep.lr_table), runs, sweep.num_classes, p.fit_threshold, p.chance_factor)


def _run_or_none(spec, data, query_mode: str, progress: bool) -> ShadowRun | None:
    try:
        return shadow_run(spec, data, query_mode=query_mode, progress=progress)
    except TrainingDiverged:
        return None

"""The comparison protocol: what makes a BN-vs-reference comparison evidence.

A comparison is evidence only when both sides trained to a comparable state. So, for one setting
(dataset, architecture, width, pool, canaries) and the norms to compare:

1. **Budget sweep.** Each norm is trained at a ladder of epoch budgets; every budget is a complete
   training whose learning-rate schedule anneals to its own end (no mid-schedule snapshots).
2. **Per-norm learning rate**, chosen from a small grid of multiples of the base rate by accuracy
   on a validation split carved from the pool's typical samples (never the test set), at the
   first budget of the ladder; for ``nf``, jointly with its AGC threshold from ``agc_grid``.
3. **Fit.** A model has *fit* when its accuracy on its own IN samples (identity query, eval mode)
   reaches ``fit_threshold`` at the end of its budget; a side fits when its models' mean does.
4. **Comparisons**, BN against the reference, paired by seed (same masks and canaries):
   *equal epochs* (the paper's setting, at ``equal_epochs``); *equal epochs, both fit* (every
   budget at which both sides fit, the per-seed differences averaged over those budgets); *matched
   fit* (each norm at its smallest budget that fits); *matched accuracy, interpolated* (BN minus
   the reference at equal test accuracy, read off each norm's curve of the measure against test
   accuracy over its fitting budgets, across the accuracy range both reach, never extrapolated);
   and the *curves* of every measure against budget and test accuracy. Two settings that select
   the same runs are one comparison, named by both (``"equal epochs = equal epochs, both fit"``).
5. **Guard.** A comparison where a side did not fit, or trained to below ``chance_factor`` times
   chance test accuracy, is "not comparable" and is never read as evidence either way.
6. **Shared runs.** One shadow run per (norm, budget, seed) serves chapters 02, 03 and 04: the
   runs are keyed by their spec in the store, so a chapter that needs them loads what another
   chapter trained.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .checks import check_whole
from .config import NORMS, Config
from .ensemble import build_ensemble, evaluate_ensemble, train_ensemble
from .progress import PlannedRun, TrainingClock
from .reading import NOT_AVAILABLE, decide, fmt_interval, fmt_signed, judge, not_comparable
from .runs.disk import results_folder, save_json
from .runs.shadow import ShadowRun, planned_run, shadow_run
from .runs.spec import RunSpec
from .stats import difference_p, equivalence_p, paired_difference, standard_error, t_interval
from .training import TrainingDiverged

SETTINGS = ("equal epochs", "equal epochs, both fit", "matched fit", "matched accuracy, interpolated")
FAIR_SETTINGS = ("equal epochs, both fit", "matched fit", "matched accuracy, interpolated")
INTERPOLATED = "matched accuracy, interpolated"
# A merged comparison's setting names every setting that selected its runs, joined by this.
SAME_RUNS = " = "
# Test accuracies at which the interpolated comparison reads both curves, across the common range.
FRONTIER_POINTS = 5
# Comparability fields of every headline row that compares trained models.
FIELDS = ("epochs_bn", "epochs_ref", "lr_bn", "lr_ref", "train_acc_bn", "train_acc_ref", "test_acc_bn",
          "test_acc_ref", "fit_bn", "fit_ref", "comparable", "reason")
VALIDATION_MODELS = 2
# The family parameters that make its training smaller, named when an estimate exceeds an hour.
LR_GRID_SHRINK = "lr_grid (fewer multipliers), the first of the budgets or train_size"
FAMILY_SHRINK = "n_models, seeds, budgets (fewer or smaller), train_size or width (e.g. -p n_models 8 -p seeds 2)"


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The shared family of shadow runs and the rules that read them (see the module docstring).

    ``base`` fixes everything but the norm, epochs, learning rate and seed. ``budgets`` is the
    increasing epoch ladder, ``lr_grid`` multiplies ``base.lr``, ``seeds`` runs per (norm, budget)
    with their own masks, ``n_models`` shadow models per run, ``equal_epochs`` the budget of the
    paper's equal-epochs setting (default: the first). ``probe_points`` gradient probes per run on
    ``probe_models`` models (0: no probes). ``agc_grid`` lists the AGC thresholds tried for
    ``norm='nf'`` beside each learning rate (empty: ``base.agc_clip`` only).
    """

    base: Config
    norms: tuple[str, ...] = ("batch", "none")
    budgets: tuple[int, ...] = (20, 28, 40, 56)
    lr_grid: tuple[float, ...] = (0.25, 1.0, 4.0)
    fit_threshold: float = 0.99
    chance_factor: float = 1.5
    seeds: int = 3
    n_models: int = 16
    equal_epochs: int = 0
    validation_fraction: float = 0.2
    probe_points: int = 0
    probe_typical: int = 20
    probe_models: int = 2
    agc_grid: tuple[float, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "norms", tuple(self.norms))
        object.__setattr__(self, "agc_grid", tuple(self.agc_grid))
        object.__setattr__(self, "budgets", tuple(self.budgets))
        object.__setattr__(self, "lr_grid", tuple(self.lr_grid))
        if not self.equal_epochs and self.budgets:
            object.__setattr__(self, "equal_epochs", self.budgets[0])
        check_protocol(self)

    @property
    def reference(self) -> str:
        """The norm a chapter's detail sections set BN against: the first norm of ``norms`` that is
        not ``batch`` (in the book's order, so a batch-independent reference that trains as well as
        BN, ``gn_ws`` or ``nf``, comes before ``none``)."""
        return self.references[0]

    @property
    def references(self) -> tuple[str, ...]:
        """Every norm BN is compared with: the norms of ``norms`` but ``batch``, in order."""
        return tuple(n for n in self.norms if n != "batch")

    def agc_candidates(self, norm: str) -> tuple[float | None, ...]:
        """The AGC thresholds tried for ``norm``: ``agc_grid`` (or ``base.agc_clip``) for ``nf``, which
        clips; ``(None,)`` (the base Config's, unused) for every other norm."""
        if norm != "nf":
            return (None,)
        return self.agc_grid or (float(self.base.agc_clip),)

    def config(self, norm: str, budget: int, lr: float, seed: int, agc: float | None = None) -> Config:
        """The Config of one run of the family (``agc``: nf's AGC threshold, the base's when None)."""
        changes = {} if agc is None else {"agc_clip": agc}
        return self.base.replace(norm=norm, epochs=budget, lr=lr, seed=seed, **changes)

    def spec(self, norm: str, budget: int, lr: float, seed: int, pool_size: int, agc: float | None = None) -> RunSpec:
        """The shadow run of (norm, budget, seed) at learning rate ``lr`` (masks seeded by ``seed``)
        and, for nf, AGC threshold ``agc``."""
        every = 0
        if self.probe_points:
            steps = (pool_size // 2) // self.base.batch_size
            every = max(1, steps * budget // self.probe_points)
        # Chapter 01 draws the per-epoch curves of seed 0 only. The other seeds' per-epoch evaluation
        # (16 models x 1,024 test images of a CIFAR run) took 8.5 of an epoch's 27 s on the CPU
        # (BENCHMARKS.md), read by nothing; their last epoch still measures the whole test split.
        return RunSpec(self.config(norm, budget, lr, seed, agc), self.n_models, mask_seed=seed, probe_every=every,
                       probe_typical=self.probe_typical, probe_models=self.probe_models,
                       epoch_curves=seed == CURVE_SEED)


# The seed whose runs keep per-epoch test curves (chapter 01's "Complete schedules").
CURVE_SEED = 0


def check_protocol(p: Protocol) -> None:
    """Raise ``ValueError`` naming the bad field of a protocol, before anything trains."""
    if not isinstance(p.base, Config):
        raise ValueError(f"base must be a Config, got {type(p.base).__name__}")
    if not p.budgets or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in p.budgets):
        raise ValueError(f"budgets={list(p.budgets)!r} is not allowed; allowed values: a non-empty list of "
                         "epoch counts >= 1, e.g. [10, 20, 40]")
    if any(b >= c for b, c in zip(p.budgets, p.budgets[1:])):
        raise ValueError(f"budgets={list(p.budgets)!r} must be strictly increasing, e.g. [10, 20, 40]")
    if not p.lr_grid or any(isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m)
                            or m <= 0 for m in p.lr_grid):
        raise ValueError(f"lr_grid={list(p.lr_grid)!r} is not allowed; allowed values: a non-empty list of "
                         "finite multipliers > 0 of the base learning rate, e.g. [0.25, 1, 4]")
    if isinstance(p.fit_threshold, bool) or not isinstance(p.fit_threshold, (int, float)) \
            or not 0 < p.fit_threshold <= 1:
        raise ValueError(f"fit_threshold={p.fit_threshold!r} is not allowed; allowed values: a number in "
                         "(0, 1], e.g. 0.99")
    unknown = [n for n in p.norms if n not in NORMS]
    if unknown:
        raise ValueError(f"norms {unknown} are not allowed; allowed values: {', '.join(NORMS)}")
    if "batch" not in p.norms or len(set(p.norms)) < 2:
        raise ValueError(f"norms={list(p.norms)!r} must hold 'batch' and at least one reference to compare "
                         "it with, e.g. ['batch', 'none']")
    check_whole("seeds", p.seeds)
    check_whole("n_models", p.n_models)
    if p.n_models % 2:
        raise ValueError(f"n_models={p.n_models} must be even (every sample IN for exactly half the models)")
    if p.equal_epochs not in p.budgets:
        raise ValueError(f"equal_epochs={p.equal_epochs!r} must be one of the budgets {list(p.budgets)}")
    if not 0 < p.validation_fraction < 1:
        raise ValueError(f"validation_fraction={p.validation_fraction!r} is not allowed; allowed values: "
                         "a number in (0, 1)")
    if not p.chance_factor >= 1:
        raise ValueError(f"chance_factor={p.chance_factor!r} is not allowed; allowed values: a number >= 1")
    for name in ("probe_points", "probe_typical"):
        check_whole(name, getattr(p, name), least=0)
    check_whole("probe_models", p.probe_models)
    if p.probe_models > p.n_models:
        raise ValueError(f"probe_models={p.probe_models} is more than the n_models={p.n_models} models of a run; "
                         "allowed values: 1 ... n_models")
    if any(isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a <= 0
           for a in p.agc_grid):
        raise ValueError(f"agc_grid={list(p.agc_grid)!r} is not allowed; allowed values: a list of finite AGC "
                         "thresholds > 0 (the largest ratio of a unit's gradient norm to its weight norm), e.g. "
                         "[0.02, 0.04], or [] for the base Config's agc_clip")
    for norm in p.norms:  # every Config of the family is valid before anything trains
        for budget in p.budgets:
            for agc in p.agc_candidates(norm):
                p.config(norm, budget, p.base.lr * max(p.lr_grid), 0, agc)


# --- 2. learning rates ----------------------------------------------------------------------------

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


# --- 1 and 3. the budget sweep and fit ------------------------------------------------------------

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


# --- 4 and 5. comparisons and the guard -----------------------------------------------------------

@dataclasses.dataclass
class Comparison:
    """One BN-vs-reference comparison: the budget of each side, their state, and whether it is
    evidence (``comparable``; ``reason`` says why not). ``note`` says how well it is matched."""

    setting: str
    reference: str
    epochs_bn: int
    epochs_ref: int
    lr_bn: float
    lr_ref: float
    train_acc_bn: float
    train_acc_ref: float
    test_acc_bn: float
    test_acc_ref: float
    fit_bn: bool
    fit_ref: bool
    comparable: bool
    reason: str
    note: str = ""
    # The (BN budget, reference budget) pairs whose runs it compares, paired by seed; empty for
    # the interpolated comparison, which reads each norm's curve over ``frontier_bn``/``frontier_ref``
    # at test accuracies spanning ``accuracy_range``.
    pairs: tuple = ()
    frontier_bn: tuple = ()
    frontier_ref: tuple = ()
    accuracy_range: tuple = ()

    @property
    def measurable(self) -> bool:
        """Whether it reads any runs: false for a frontier refused before reading (too few fitting
        budgets, no common test accuracy), whose values are NaN."""
        return bool(self.pairs or self.accuracy_range)

    def fields(self) -> dict:
        """The comparability fields a headline row carries."""
        return {name: getattr(self, name) for name in FIELDS}

    @property
    def settings(self) -> list[str]:
        """The settings this comparison stands for (two when both selected the same runs)."""
        return self.setting.split(SAME_RUNS)

    @property
    def runs(self) -> str:
        """Which runs it reads, in words: ``"batch@10 vs none@40"``, ``"batch@20,40 vs none@20,40"``
        (averaged over budgets), or ``"frontier batch@10,20 vs none@20,40"``."""
        if not self.pairs:
            return (f"frontier batch@{_budgets(self.frontier_bn)} vs "
                    f"{self.reference}@{_budgets(self.frontier_ref)}")
        return (f"batch@{_budgets(b for b, _ in self.pairs)} vs "
                f"{self.reference}@{_budgets(r for _, r in self.pairs)}")


    def where(self) -> str:
        """Where the comparison reads the two norms, for a sentence: "BN at 10 epochs, none at 40"."""
        if not self.pairs:
            along = f"along BN's budgets {_budgets(self.frontier_bn)} and {self.reference}'s {_budgets(self.frontier_ref)}"
            if not self.accuracy_range:
                return f"{along}, no common test accuracy to read"
            lo, hi = self.accuracy_range
            return f"at equal test accuracy from {lo:.3f} to {hi:.3f}, {along}"
        bn = sorted({b for b, _ in self.pairs})
        ref = sorted({r for _, r in self.pairs})
        averaged = " (averaged over them)" if len(self.pairs) > 1 else ""
        return f"BN at {_budgets(bn)} epochs, {self.reference} at {_budgets(ref)}{averaged}"


def _budgets(budgets) -> str:
    return ",".join(str(int(b)) for b in budgets) or "-"


def guard(setting: str, bn: pd.Series, ref: pd.Series, *, num_classes: int, fit_threshold: float = 0.99,
          chance_factor: float = 1.5, note: str = "", ref_must_fit: bool = True) -> Comparison:
    """A :class:`Comparison` of two sides (each with ``norm``, ``budget``, ``lr``, ``train_acc``,
    ``test_acc``: a row of ``Sweep.sides()`` or :func:`side`). Not comparable when a side trained
    to below ``chance_factor`` times chance test accuracy, or did not fit (IN accuracy below
    ``fit_threshold``). ``ref_must_fit=False`` exempts the reference from the fit rule, for a
    reference that must not fit by design (DP-SGD); it must still train."""
    reasons = []
    chance = chance_factor / num_classes
    for side, must_fit in ((bn, True), (ref, ref_must_fit)):
        if side.test_acc < chance:
            reasons.append(f"{side.norm} did not train (test accuracy {side.test_acc:.3f} < "
                           f"{chance_factor:g}x chance = {chance:.3f}, at {int(side.budget)} epochs)")
        elif must_fit and side.train_acc < fit_threshold:
            reasons.append(f"{side.norm} did not fit (IN accuracy {side.train_acc:.3f} < "
                           f"{fit_threshold:g}, at {int(side.budget)} epochs)")
    return Comparison(setting, str(ref.norm), int(bn.budget), int(ref.budget), float(bn.lr), float(ref.lr),
                      float(bn.train_acc), float(ref.train_acc), float(bn.test_acc), float(ref.test_acc),
                      bool(bn.train_acc >= fit_threshold), bool(ref.train_acc >= fit_threshold),
                      not reasons, "; ".join(reasons), note, pairs=((int(bn.budget), int(ref.budget)),))


def side(norm: str, runs: list[ShadowRun]) -> pd.Series:
    """One side of a comparison from its runs (one per seed): norm, budget, lr, and the mean IN
    (train) and test accuracy of their models, as :func:`guard` reads it."""
    summaries = [run_summary(run) for run in runs]
    cfg = runs[0].spec.config
    return pd.Series({"norm": norm, "budget": int(cfg.epochs), "lr": float(cfg.lr),
                      "train_acc": float(np.mean([s["train_acc"] for s in summaries])),
                      "test_acc": float(np.mean([s["test_acc"] for s in summaries]))})


def _protocol_guard(setting: str, bn: pd.Series, ref: pd.Series, p: Protocol, num_classes: int,
                    note: str = "") -> Comparison:
    """:func:`guard` at the protocol's fit threshold and chance factor."""
    return guard(setting, bn, ref, num_classes=num_classes, fit_threshold=p.fit_threshold,
                 chance_factor=p.chance_factor, note=note)


def compare(sweep: Sweep, reference: str | None = None) -> list[Comparison]:
    """BN against ``reference`` in every setting of ``SETTINGS`` (equal epochs; equal epochs, both
    fit; matched fit; matched accuracy, interpolated), settings that select the same runs merged
    into one comparison (:func:`merge_same_runs`)."""
    p = sweep.protocol
    reference = reference or p.reference
    sides = sweep.sides()
    bn, ref = sides[sides.norm == "batch"].set_index("budget"), sides[sides.norm == reference].set_index("budget")
    if bn.empty or ref.empty:
        raise ValueError(f"the sweep has no runs of 'batch' and {reference!r}; norms: {list(p.norms)}")
    return merge_same_runs([
        _protocol_guard("equal epochs", _side_at(bn, p.equal_epochs), _side_at(ref, p.equal_epochs), p,
                        sweep.num_classes),
        _equal_epochs_both_fit(bn, ref, p, sweep.num_classes), _matched_fit(bn, ref, p, sweep.num_classes),
        _interpolated(bn, ref, p, sweep.num_classes)])


def compare_each(sweep: Sweep) -> list[Comparison]:
    """:func:`compare` for every reference of the protocol (``Protocol.references``), the primary
    reference's comparisons first: every measure is then read as BN against each reference."""
    return [c for reference in sweep.protocol.references for c in compare(sweep, reference)]


def comparison_label(c: Comparison, comparisons: list[Comparison]) -> str:
    """``c``'s setting, with ``vs REFERENCE`` when ``comparisons`` set BN against several norms
    (so a table's rows stay distinct)."""
    return c.setting if len({d.reference for d in comparisons}) < 2 else f"{c.setting}, vs {c.reference}"


def merge_same_runs(comparisons: list[Comparison]) -> list[Comparison]:
    """One comparison per set of runs: comparisons that pair the same budgets of the same norms
    become one, whose setting names all of them (``"equal epochs = equal epochs, both fit"``), so
    no measure gets two rows (and two tests) for one comparison."""
    merged: dict = {}
    for c in comparisons:
        key = (c.reference, c.pairs) if c.pairs else (c.reference, c.setting)
        if key in merged:
            first = merged[key]
            notes = "; ".join(n for n in (first.note, c.note) if n)
            merged[key] = dataclasses.replace(first, setting=first.setting + SAME_RUNS + c.setting, note=notes)
        else:
            merged[key] = c
    return list(merged.values())


def _usable(table: pd.DataFrame) -> pd.DataFrame:
    """The budgets of one norm's sides at which it fits and trained."""
    return table[table.fit & table.trained]


def _mean_side(table: pd.DataFrame, budgets: list[int]) -> pd.Series:
    """One side averaged over ``budgets`` (at the first of them, for the guard's messages)."""
    means = table.loc[budgets, ["lr", "train_acc", "test_acc"]].mean()
    return pd.Series({"norm": table.norm.iloc[0], "budget": int(budgets[0]), **means.to_dict()})


def _equal_epochs_both_fit(bn, ref, p: Protocol, num_classes: int) -> Comparison:
    setting = "equal epochs, both fit"
    common = [b for b in p.budgets if b in _usable(bn).index and b in _usable(ref).index]
    if not common:
        c = _protocol_guard(setting, _side_at(bn, p.budgets[-1]), _side_at(ref, p.budgets[-1]), p, num_classes,
                            "no budget of the ladder at which both sides fit; shown at the largest budget")
        return dataclasses.replace(c, comparable=False, reason=c.reason or "no budget at which both sides fit")
    c = _protocol_guard(setting, _mean_side(bn, common), _mean_side(ref, common), p, num_classes)
    return dataclasses.replace(c, pairs=tuple((b, b) for b in common))


def _interpolated(bn, ref, p: Protocol, num_classes: int) -> Comparison:
    """BN minus the reference at equal test accuracy, along both norms' curves over their fitting
    budgets (at least two each), across the accuracy range both reach; not comparable otherwise."""
    usable = {"batch": _usable(bn), str(ref.norm.iloc[0]): _usable(ref)}
    largest = _protocol_guard(INTERPOLATED, _side_at(bn, p.budgets[-1]), _side_at(ref, p.budgets[-1]), p,
                              num_classes)
    short = [f"{norm} fits at {len(t)} ({_budgets(t.index) if len(t) else 'none'})" for norm, t in usable.items()
             if len(t) < 2]
    frontiers = dict(pairs=(), frontier_bn=tuple(int(b) for b in usable["batch"].index),
                     frontier_ref=tuple(int(b) for b in list(usable.values())[1].index))
    if short:
        return dataclasses.replace(largest, comparable=False, reason=(
            "a frontier needs at least 2 fitting budgets per norm; of the ladder "
            f"{_budgets(p.budgets)}, " + " and ".join(short)), note="no frontier to read", **frontiers)
    (name_bn, t_bn), (name_ref, t_ref) = usable.items()
    lo = max(t_bn.test_acc.min(), t_ref.test_acc.min())
    hi = min(t_bn.test_acc.max(), t_ref.test_acc.max())
    if lo > hi:
        ranges = ", ".join(f"{n} {t.test_acc.min():.3f}-{t.test_acc.max():.3f}" for n, t in usable.items())
        return dataclasses.replace(largest, comparable=False, reason=(
            f"the test-accuracy ranges of the fitting budgets do not overlap ({ranges}); not extrapolated"),
            note="no common accuracy to read", **frontiers)
    c = _protocol_guard(INTERPOLATED, _mean_side(bn, list(t_bn.index)), _mean_side(ref, list(t_ref.index)), p,
                        num_classes, f"read at {FRONTIER_POINTS} test accuracies from {lo:.3f} to {hi:.3f}, "
                        f"along BN's budgets {_budgets(t_bn.index)} and {name_ref}'s {_budgets(t_ref.index)}")
    middle = float((lo + hi) / 2)
    return dataclasses.replace(c, pairs=(), frontier_bn=tuple(int(b) for b in t_bn.index),
                               frontier_ref=tuple(int(b) for b in t_ref.index), accuracy_range=(float(lo), float(hi)),
                               test_acc_bn=middle, test_acc_ref=middle)


def _side_at(table: pd.DataFrame, budget: int) -> pd.Series:
    """The row of one budget of a norm's sides (indexed by budget), with the budget in it."""
    side = table.loc[budget].copy()
    side["budget"] = int(budget)
    return side


def _smallest_fitting(table: pd.DataFrame):
    fitting = table.index[table.fit]
    return int(fitting.min()) if len(fitting) else None


def _matched_fit(bn, ref, p: Protocol, num_classes: int) -> Comparison:
    budgets = {name: _smallest_fitting(t) for name, t in (("bn", bn), ("ref", ref))}
    missing = [name for name, b in budgets.items() if b is None]
    note = ""
    if missing:
        note = "no budget of the ladder fits for " + " and ".join(
            (bn if m == "bn" else ref).norm.iloc[0] for m in missing) + "; shown at the largest budget"
    pick = {name: (b if b is not None else p.budgets[-1]) for name, b in budgets.items()}
    return _protocol_guard("matched fit", _side_at(bn, pick["bn"]), _side_at(ref, pick["ref"]), p, num_classes,
                           note)


# --- measures: comparisons, curves and headline rows ----------------------------------------------

def measure_table(sweep: Sweep, measure) -> pd.DataFrame:
    """``measure(run) -> float`` of every run: one row per (norm, budget, seed) with the run's
    test accuracy beside the value."""
    rows = [dict(norm=norm, budget=budget, seed=seed, value=float(measure(run)))
            for (norm, budget, seed), run in sweep.runs.items()]
    return pd.DataFrame(rows).merge(sweep.table[["norm", "budget", "seed", "test_acc", "train_acc"]],
                                    on=["norm", "budget", "seed"])


def curves(values: pd.DataFrame) -> pd.DataFrame:
    """Per (norm, budget): mean of the measure over seeds with its 95% t-interval, and the mean
    test accuracy (the data of the protocol's curve figures)."""
    rows = []
    for (norm, budget), group in values.groupby(["norm", "budget"], sort=False):
        t = t_interval(group.value)
        rows.append({"norm": norm, "budget": int(budget), "mean": t["mean"], "lo": t["lo"], "hi": t["hi"],
                     "seeds": t["n"], "test_acc": float(group.test_acc.mean()),
                     "train_acc": float(group.train_acc.mean())})
    return pd.DataFrame(rows)


def difference(values: pd.DataFrame, comparison: Comparison) -> dict:
    """BN minus reference of the measure, paired by seed: at the comparison's pairs of budgets
    (averaged over them when there are several), or, for the interpolated comparison, along both
    norms' curves at equal test accuracy (:func:`frontier_values`). ``{batch, ref, diff, lo, hi,
    n, df}``: both sides' means, the mean difference and its 95% t-interval over ``n`` seeds with
    ``df`` degrees of freedom."""
    if comparison.pairs:
        a = _seed_means(values, "batch", [b for b, _ in comparison.pairs])
        b = _seed_means(values, comparison.reference, [r for _, r in comparison.pairs])
    elif not comparison.accuracy_range:  # a frontier that could not be read: no values, no test
        nan = float("nan")
        return {"batch": nan, "ref": nan, "diff": nan, "lo": nan, "hi": nan, "n": 0, "df": 0}
    else:
        grid = np.linspace(*comparison.accuracy_range, FRONTIER_POINTS)
        a = frontier_values(values, "batch", comparison.frontier_bn, grid).mean(axis=1)
        b = frontier_values(values, comparison.reference, comparison.frontier_ref, grid).mean(axis=1)
    d = paired_difference(a, b)
    return {"batch": float(np.mean(a)), "ref": float(np.mean(b)), **d, "df": max(d["n"] - 1, 0)}


def _seed_means(values: pd.DataFrame, norm: str, budgets: list[int]) -> np.ndarray:
    """Per seed (in seed order), the measure of ``norm`` averaged over the pairs' ``budgets``."""
    rows = [values[(values.norm == norm) & (values.budget == b)].sort_values("seed").value.to_numpy()
            for b in budgets]
    return np.mean(rows, axis=0)


def frontier_values(values: pd.DataFrame, norm: str, budgets, grid) -> np.ndarray:
    """``[seeds, len(grid)]``: each seed's measure of ``norm``, linearly interpolated along the
    norm's curve (its ``budgets`` placed at their mean test accuracy over seeds) at the test
    accuracies ``grid``. Points outside the curve's range are refused, never extrapolated."""
    rows = values[(values.norm == norm) & values.budget.isin(list(budgets))]
    accuracy = rows.groupby("budget").test_acc.mean()
    grid = np.asarray(grid, dtype=float)
    if grid.min() < accuracy.min() - 1e-12 or grid.max() > accuracy.max() + 1e-12:
        raise ValueError(f"test accuracies {grid.min():.3f}-{grid.max():.3f} are outside {norm}'s curve "
                         f"({accuracy.min():.3f}-{accuracy.max():.3f}); a frontier is never extrapolated")
    order = accuracy.sort_values(kind="stable")
    table = rows.pivot(index="seed", columns="budget", values="value")[order.index]
    return np.stack([np.interp(grid, order.to_numpy(), seed_values) for seed_values in table.to_numpy()])


def tests(d: dict, margin: float) -> dict:
    """The two tests of a difference ``d`` (from :func:`difference`) at equivalence ``margin``:
    ``{p, p_equivalence}``, the t-test of "no difference" and the TOST of "within ±margin", both
    unadjusted (the verdict adjusts them across its rows with Holm's method)."""
    se = standard_error(d["lo"], d["hi"], d["df"]) if d["df"] > 0 else float("nan")
    return {"p": difference_p(d["diff"], se, d["df"]), "p_equivalence": equivalence_p(d["diff"], se, d["df"], margin)}


def reading(comparison: Comparison, d: dict, margin: float, higher: str = "BN higher", lower: str = "BN lower",
            resolution: str = "", scale: float = 1.0, unit: str = "") -> str:
    """The words for one comparison of a measure in its chapter: "not comparable: ..." when the
    guard failed, else ``resolution`` when the measure cannot resolve it ("not resolvable ...",
    "not resolved ..."), else :func:`reading.decide` on the unadjusted tests at ``margin`` (the
    verdict reads the same tests adjusted for all its rows)."""
    if not comparison.comparable:
        return not_comparable(comparison.reason)
    if resolution:
        return resolution
    t = tests(d, margin)
    return decide(d["diff"], t["p"], t["p_equivalence"], margin, higher=higher, lower=lower, scale=scale, unit=unit)


def fitting_pairings(sweep: Sweep, values: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """BN − reference of a measure at every pair of budgets (BN's, the reference's) at which both
    sides fit and trained: how much a comparison's answer depends on which fitting budgets it
    takes. One row per pairing with both values, the paired difference, its interval and reading."""
    p = sweep.protocol
    reference = reference or p.reference
    sides = sweep.sides()
    usable = sides[sides.fit & sides.trained].set_index(["norm", "budget"])
    rows = []
    for bn_budget in [b for n, b in usable.index if n == "batch"]:
        for ref_budget in [b for n, b in usable.index if n == reference]:
            bn_side = _side_at(sides[sides.norm == "batch"].set_index("budget"), bn_budget)
            ref_side = _side_at(sides[sides.norm == reference].set_index("budget"), ref_budget)
            c = _protocol_guard("pairing", bn_side, ref_side, p, sweep.num_classes)
            d = difference(values, c)
            rows.append({"epochs_bn": bn_budget, "epochs_ref": ref_budget, "batch": d["batch"], "ref": d["ref"],
                         "diff": d["diff"], "lo": d["lo"], "hi": d["hi"], "reading": judge(d["lo"], d["hi"])})
    return pd.DataFrame(rows, columns=["epochs_bn", "epochs_ref", "batch", "ref", "diff", "lo", "hi", "reading"])


def pairings_shown(pairings: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """:func:`fitting_pairings` for a chapter page: column names in words, the difference as
    "value [lo, hi]"."""
    return pd.DataFrame({
        "BN epochs": pairings["epochs_bn"], "reference epochs": pairings["epochs_ref"],
        "BN": pairings["batch"].map(lambda v: fmt_interval(v, math.nan, math.nan, digits=digits, signed=False)),
        "reference": pairings["ref"].map(lambda v: fmt_interval(v, math.nan, math.nan, digits=digits, signed=False)),
        "BN − reference [95% CI]": [fmt_interval(d, lo, hi, digits=digits)
                                    for d, lo, hi in zip(pairings["diff"], pairings["lo"], pairings["hi"])],
        "reading": pairings["reading"]})


def robustness(pairings: pd.DataFrame) -> str:
    """One line on whether the sign of BN − reference holds at every pair of fitting budgets, with
    the range of the differences (a sign that holds from +0.01 to +0.08 is not one effect)."""
    if pairings.empty:
        return "no pair of budgets at which both sides fit"
    counts = pairings.reading.value_counts()
    total = len(pairings)
    sizes = f"differences {fmt_signed(pairings['diff'].min())} to {fmt_signed(pairings['diff'].max())}"
    if len(counts) == 1:
        return f"{counts.index[0]} at all {total} pairs of budgets at which both sides fit ({sizes})"
    parts = ", ".join(f"{counts[k]} {k}" for k in ("BN higher", "BN lower", "inconclusive", "no interval")
                      if counts.get(k, 0))
    return f"depends on the budgets: {parts} of {total} pairs of budgets at which both sides fit ({sizes})"


def interval_words(d: dict) -> str:
    """What an interval of :func:`difference` is: method, replicates and degrees of freedom."""
    return f"95% Student-t interval over {d['n']} seeds paired by masks ({d['df']} df)"


def comparison_table(values: pd.DataFrame, comparisons: list[Comparison], *, margin: float, digits: int = 3,
                     scale: float = 1.0, unit: str = "", resolution=None) -> pd.DataFrame:
    """The comparisons of one measure as a table for a chapter: the runs each reads and their
    state, the measure for BN and the reference, BN − reference with its interval, and the reading
    at ``margin`` (unadjusted; the verdict adjusts across its rows). ``scale`` and ``unit`` print a
    rate in percent (100, "%"), so that a TPR of 0.0007 reads 0.07%, not 0.000."""
    rows = []
    for c in comparisons:
        d = difference(values, c)
        both = [fmt_interval(d[side], math.nan, math.nan, digits=digits, scale=scale, signed=False, unit=unit)
                for side in ("batch", "ref")]
        rows.append({"setting": comparison_label(c, comparisons), "runs": c.runs.replace(",", ", "),  # wraps
                     "test accuracy % (BN / ref)": percent_pair(c.test_acc_bn, c.test_acc_ref),
                     "IN accuracy % (BN / ref)": percent_pair(c.train_acc_bn, c.train_acc_ref),
                     "BN / ref": NOT_AVAILABLE if NOT_AVAILABLE in both else " / ".join(both),
                     "BN − ref [95% CI]": fmt_interval(d["diff"], d["lo"], d["hi"], digits=digits, scale=scale,
                                                       unit=unit),
                     "reading": reading(c, d, margin, resolution=resolution(c, d) if resolution else "",
                                        scale=scale)})
    return pd.DataFrame(rows).set_index("setting")


def percent_pair(a: float, b: float) -> str:
    """Two accuracies as a reader compares them: ``"99.8 / 58.2"`` (percent, one decimal)."""
    return f"{100 * a:.1f} / {100 * b:.1f}"


def comparisons_overview(comparisons: list[Comparison]) -> pd.DataFrame:
    """The comparisons for a chapter page, in words and percent: the runs each reads, their
    learning rates, IN and test accuracy (BN / reference), and whether it is evidence."""
    return pd.DataFrame([{
        "setting": comparison_label(c, comparisons), "runs (BN vs reference)": c.runs,
        "learning rate (BN / ref)": f"{c.lr_bn:g} / {c.lr_ref:g}",
        "IN accuracy % (BN / ref)": percent_pair(c.train_acc_bn, c.train_acc_ref),
        "test accuracy % (BN / ref)": percent_pair(c.test_acc_bn, c.test_acc_ref),
        "comparable": "yes" if c.comparable else "no"} for c in comparisons])

"""The comparison protocol: what makes a BN-vs-reference comparison evidence.

A comparison is evidence only when both sides trained to a comparable state. So, for one setting
(dataset, architecture, width, pool, canaries) and the norms to compare:

1. **Budget sweep.** Each norm is trained at a ladder of epoch budgets; every budget is a complete
   training whose learning-rate schedule anneals to its own end (no mid-schedule snapshots).
2. **Per-norm learning rate**, chosen from a small grid of multiples of the base rate by accuracy
   on a validation split carved from the pool's typical samples (never the test set), at the
   first budget of the ladder.
3. **Fit.** A model has *fit* when its accuracy on its own IN samples (identity query, eval mode)
   reaches ``fit_threshold`` at the end of its budget; a side fits when its models' mean does.
4. **Comparisons**, BN against the reference, paired by seed (same masks and canaries):
   *equal epochs* (the paper's setting, at ``equal_epochs``), *matched fit* (each norm at its
   smallest budget that fits), *matched accuracy* (each norm at the budget whose test accuracy is
   closest to the highest accuracy that every norm reaches), and the *curves* of every measure
   against budget and test accuracy.
5. **Guard.** A comparison where a side did not fit, or trained to below ``chance_factor`` times
   chance test accuracy, is "not comparable" and is never read as evidence either way.
6. **Shared runs.** One shadow run per (norm, budget, seed) serves chapters 02, 03 and 04: the
   runs are keyed by their spec in the store, so a chapter that needs them loads what another
   chapter trained.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import torch

from .config import Config
from .reading import judge, not_comparable
from .stats import paired_difference, t_interval
from .store import RunSpec, ShadowRun, results_dir, save_json, shadow_run

SETTINGS = ("equal epochs", "matched fit", "matched accuracy")
FAIR_SETTINGS = ("matched fit", "matched accuracy")
# Comparability fields of every headline row that compares trained models.
FIELDS = ("epochs_bn", "epochs_ref", "lr_bn", "lr_ref", "train_acc_bn", "train_acc_ref", "test_acc_bn",
          "test_acc_ref", "fit_bn", "fit_ref", "comparable", "reason")
VALIDATION_MODELS = 2


def _positive_int(name, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not allowed; allowed values: an integer >= 1")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The shared family of shadow runs and the rules that read them (see the module docstring).

    ``base`` fixes everything but the norm, epochs, learning rate and seed. ``budgets`` is the
    increasing epoch ladder, ``lr_grid`` multiplies ``base.lr``, ``seeds`` runs per (norm, budget)
    with their own masks, ``n_models`` shadow models per run, ``equal_epochs`` the budget of the
    paper's equal-epochs setting (default: the first). ``probe_points`` gradient probes per run on
    ``probe_models`` models (0: no probes).
    """

    base: Config
    norms: tuple[str, ...] = ("batch", "none")
    budgets: tuple[int, ...] = (10, 20, 40)
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

    def __post_init__(self):
        object.__setattr__(self, "norms", tuple(self.norms))
        object.__setattr__(self, "budgets", tuple(self.budgets))
        object.__setattr__(self, "lr_grid", tuple(self.lr_grid))
        if not self.equal_epochs and self.budgets:
            object.__setattr__(self, "equal_epochs", self.budgets[0])
        check_protocol(self)

    @property
    def reference(self) -> str:
        """The norm BN is compared with: the first norm of ``norms`` that is not ``batch``."""
        return next(n for n in self.norms if n != "batch")

    def config(self, norm: str, budget: int, lr: float, seed: int) -> Config:
        """The Config of one run of the family."""
        return self.base.replace(norm=norm, epochs=budget, lr=lr, seed=seed)

    def spec(self, norm: str, budget: int, lr: float, seed: int, pool_size: int) -> RunSpec:
        """The shadow run of (norm, budget, seed) at learning rate ``lr`` (masks seeded by ``seed``)."""
        every = 0
        if self.probe_points:
            steps = (pool_size // 2) // self.base.batch_size
            every = max(1, steps * budget // self.probe_points)
        return RunSpec(self.config(norm, budget, lr, seed), self.n_models, mask_seed=seed, probe_every=every,
                       probe_typical=self.probe_typical, probe_models=self.probe_models)


def check_protocol(p: Protocol) -> None:
    """Raise ``ValueError`` naming the bad field of a protocol, before anything trains."""
    from .config import NORMS

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
    _positive_int("seeds", p.seeds)
    _positive_int("n_models", p.n_models)
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
        value = getattr(p, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} is not allowed; allowed values: an integer >= 0")
    _positive_int("probe_models", p.probe_models)
    if p.probe_models > p.n_models:
        raise ValueError(f"probe_models={p.probe_models} is more than the n_models={p.n_models} models of a run; "
                         "allowed values: 1 ... n_models")
    for norm in p.norms:  # every Config of the family is valid before anything trains
        for budget in p.budgets:
            p.config(norm, budget, p.base.lr * max(p.lr_grid), 0)


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
    from .ensemble import build_ensemble, evaluate_ensemble, train_ensemble
    from .training import TrainingDiverged

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
    grid = [(n, m) for n in protocol.norms for m in protocol.lr_grid]
    for norm, multiplier in tqdm(grid, desc="learning-rate grid", disable=not progress):
        cfg = protocol.config(norm, protocol.budgets[0], protocol.base.lr * multiplier, 0)
        rows.append({"norm": norm, "multiplier": float(multiplier), "lr": cfg.lr,
                     "val_acc": _cached_validation(cfg, data, held_out, protocol.validation_fraction)})
    table = pd.DataFrame(rows)
    table["chosen"] = False
    for norm, group in table.groupby("norm", sort=False):
        ranked = group.assign(distance=np.abs(np.log(group.multiplier)))
        best = ranked.sort_values(["val_acc", "distance"], ascending=[False, True]).index[0]
        table.loc[best, "chosen"] = True
    return table


def _cached_validation(cfg: Config, data, held_out: torch.Tensor, fraction: float) -> float:
    import json

    path = results_dir() / "validation" / f"{cfg.key()}-{fraction:g}-{VALIDATION_MODELS}.json"
    if path.is_file():
        try:
            return float(json.loads(path.read_text())["val_acc"])
        except (ValueError, KeyError):
            pass
    value = validation_accuracy(cfg, data, held_out)
    save_json(path, {"val_acc": value, "config": cfg.to_dict()})
    return value


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
    lrs = chosen_lr(lr_table)
    runs, rows = {}, []
    for norm in protocol.norms:
        for budget in protocol.budgets:
            for seed in range(protocol.seeds):
                spec = protocol.spec(norm, budget, lrs[norm], seed, len(data.y_train))
                run = shadow_run(spec, data, query_mode=query_mode, progress=progress)
                runs[norm, budget, seed] = run
                rows.append({"norm": norm, "budget": budget, "seed": seed, "lr": lrs[norm], **run_summary(run)})
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

    def fields(self) -> dict:
        """The comparability fields a headline row carries."""
        return {name: getattr(self, name) for name in FIELDS}


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
                      not reasons, "; ".join(reasons), note)


def side(norm: str, runs: list[ShadowRun]) -> pd.Series:
    """One side of a comparison from its runs (one per seed): norm, budget, lr, and the mean IN
    (train) and test accuracy of their models, as :func:`guard` reads it."""
    summaries = [run_summary(run) for run in runs]
    cfg = runs[0].spec.config
    return pd.Series({"norm": norm, "budget": int(cfg.epochs), "lr": float(cfg.lr),
                      "train_acc": float(np.mean([s["train_acc"] for s in summaries])),
                      "test_acc": float(np.mean([s["test_acc"] for s in summaries]))})


def _guard(setting: str, bn: pd.Series, ref: pd.Series, p: Protocol, num_classes: int, note: str = "") -> Comparison:
    return guard(setting, bn, ref, num_classes=num_classes, fit_threshold=p.fit_threshold,
                 chance_factor=p.chance_factor, note=note)


def compare(sweep: Sweep, reference: str | None = None) -> list[Comparison]:
    """The equal-epochs, matched-fit and matched-accuracy comparisons of BN with ``reference``."""
    p = sweep.protocol
    reference = reference or p.reference
    sides = sweep.sides()
    bn, ref = sides[sides.norm == "batch"].set_index("budget"), sides[sides.norm == reference].set_index("budget")
    if bn.empty or ref.empty:
        raise ValueError(f"the sweep has no runs of 'batch' and {reference!r}; norms: {list(p.norms)}")
    return [_guard("equal epochs", _side(bn, p.equal_epochs), _side(ref, p.equal_epochs), p, sweep.num_classes),
            _matched_fit(bn, ref, p, sweep.num_classes), _matched_accuracy(bn, ref, p, sweep.num_classes)]


def _side(table: pd.DataFrame, budget: int) -> pd.Series:
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
    return _guard("matched fit", _side(bn, pick["bn"]), _side(ref, pick["ref"]), p, num_classes, note)


def _matched_accuracy(bn, ref, p: Protocol, num_classes: int) -> Comparison:
    target = min(bn.test_acc.max(), ref.test_acc.max())
    pick = {name: int((t.test_acc - target).abs().idxmin()) for name, t in (("bn", bn), ("ref", ref))}
    weaker = "batch" if bn.test_acc.max() < ref.test_acc.max() else ref.norm.iloc[0]
    stronger = ref.norm.iloc[0] if weaker == "batch" else "batch"
    gap = bn.loc[pick["bn"], "test_acc"] - ref.loc[pick["ref"], "test_acc"]
    note = (f"target = the highest test accuracy every norm reaches, {target:.3f}; the sides differ by "
            f"{gap * 100:+.2f} points (BN minus {ref.norm.iloc[0]})")
    best = {"batch": bn.test_acc.max(), ref.norm.iloc[0]: ref.test_acc.max()}
    if best[weaker] < best[stronger]:
        note += (f"; {weaker} never reaches {stronger}'s best ({best[weaker]:.3f} at most against "
                 f"{best[stronger]:.3f}), so {stronger} is matched downwards")
    return _guard("matched accuracy", _side(bn, pick["bn"]), _side(ref, pick["ref"]), p, num_classes, note)


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
    """BN minus reference of the measure, paired by seed, at the two budgets of ``comparison``:
    ``{batch, ref, diff, lo, hi, n}``."""
    a = values[(values.norm == "batch") & (values.budget == comparison.epochs_bn)].sort_values("seed")
    b = values[(values.norm == comparison.reference) & (values.budget == comparison.epochs_ref)].sort_values("seed")
    d = paired_difference(a.value.to_numpy(), b.value.to_numpy())
    return {"batch": float(a.value.mean()), "ref": float(b.value.mean()), **d}


def reading(comparison: Comparison, lo: float, hi: float, higher: str = "BN higher", lower: str = "BN lower",
            resolution: str = "") -> str:
    """The words for a comparison: "not comparable: ..." when the guard failed, else ``resolution``
    when the measure cannot resolve it ("not resolvable ...", "not resolved ..."), else the
    interval's."""
    if not comparison.comparable:
        return not_comparable(comparison.reason)
    return resolution or judge(lo, hi, higher, lower)


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
            c = _guard("pairing", _side(sides[sides.norm == "batch"].set_index("budget"), bn_budget),
                       _side(sides[sides.norm == reference].set_index("budget"), ref_budget), p, sweep.num_classes)
            d = difference(values, c)
            rows.append({"epochs_bn": bn_budget, "epochs_ref": ref_budget, "batch": d["batch"], "ref": d["ref"],
                         "diff": d["diff"], "lo": d["lo"], "hi": d["hi"], "reading": judge(d["lo"], d["hi"])})
    return pd.DataFrame(rows, columns=["epochs_bn", "epochs_ref", "batch", "ref", "diff", "lo", "hi", "reading"])


def robustness(pairings: pd.DataFrame) -> str:
    """One line on whether the sign of BN − reference holds at every pair of fitting budgets."""
    if pairings.empty:
        return "no pair of budgets at which both sides fit"
    counts = pairings.reading.value_counts()
    total = len(pairings)
    if len(counts) == 1:
        return f"{counts.index[0]} at all {total} pairs of budgets at which both sides fit"
    parts = ", ".join(f"{counts[k]} {k}" for k in ("BN higher", "BN lower", "no clear difference", "no interval")
                      if counts.get(k, 0))
    return f"depends on the budgets: {parts} of {total} pairs of budgets at which both sides fit"


def headline_rows(values: pd.DataFrame, comparisons: list[Comparison], measure: str, higher_means: str,
                  robust: str = "", resolution=None) -> list[dict]:
    """One headline row per comparison of a measure (``headlines.headline_row`` with the
    comparability fields and the ``robust`` line of :func:`robustness`), for the verdict.
    ``resolution(comparison, difference) -> str`` says when the measure cannot resolve a
    comparison (empty when it can)."""
    from .headlines import headline_row

    rows = []
    for c in comparisons:
        d = difference(values, c)
        rows.append(headline_row(measure, c.setting, d["batch"], d["ref"], d["diff"], d["lo"], d["hi"],
                                 f"95% t-interval over {d['n']} seeds (paired by masks)", higher_means,
                                 reference=c.reference, comparison=c, robustness=robust,
                                 resolution=resolution(c, d) if resolution else ""))
    return rows


def comparison_table(values: pd.DataFrame, comparisons: list[Comparison], digits: int = 3,
                     scale: float = 1.0, resolution=None) -> pd.DataFrame:
    """The comparisons of one measure as a table for a chapter: the two sides' budgets and state,
    BN, reference, BN − reference with its interval, and the reading."""
    from .reading import fmt_interval

    rows = []
    for c in comparisons:
        d = difference(values, c)
        rows.append({"setting": c.setting, "epochs (BN / ref)": f"{c.epochs_bn} / {c.epochs_ref}",
                     "test acc (BN / ref)": f"{c.test_acc_bn:.3f} / {c.test_acc_ref:.3f}",
                     "IN acc (BN / ref)": f"{c.train_acc_bn:.3f} / {c.train_acc_ref:.3f}",
                     "BN": f"{d['batch'] * scale:.{digits}f}", c.reference: f"{d['ref'] * scale:.{digits}f}",
                     "BN − ref [95% CI]": fmt_interval(d["diff"], d["lo"], d["hi"], digits=digits, scale=scale),
                     "reading": reading(c, d["lo"], d["hi"], resolution=resolution(c, d) if resolution else "")})
    return pd.DataFrame(rows).set_index("setting")


def comparisons_frame(comparisons: list[Comparison]) -> pd.DataFrame:
    """The comparisons' sides as a table (one row per setting), with the guard's verdict and note."""
    return pd.DataFrame([{**c.fields(), "setting": c.setting, "note": c.note} for c in comparisons]).set_index("setting")

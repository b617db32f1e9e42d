"""Steps 4 and 5 of the protocol: BN against each reference in every setting, and the guard that
makes a comparison evidence or "not comparable"."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from ..runs.shadow import ShadowRun
from .family import Protocol
from .sweep import LADDER_WIDTH, STATE, Sweep, run_summary

INTERPOLATED = "matched accuracy, interpolated"
MATCHED_LOSS = "matched training loss, interpolated"
SETTINGS = ("equal epochs", "equal epochs, both fit", "matched fit", INTERPOLATED, MATCHED_LOSS)
FAIR_SETTINGS = ("equal epochs, both fit", "matched fit", INTERPOLATED, MATCHED_LOSS)
# The frontier settings: the column of a point they match the two norms on, and its name in words.
FRONTIERS = {INTERPOLATED: ("test_acc", "test accuracy"), MATCHED_LOSS: ("in_loss", "clean IN loss")}
FRONTIER_NAMES = {"test_acc": "test-accuracy", "in_loss": "IN-loss"}
# A merged comparison's setting names every setting that selected its runs, joined by this.
SAME_RUNS = " = "
# Test accuracies at which the interpolated comparison reads both curves, across the common range.
FRONTIER_POINTS = 5
# Comparability fields of every headline row that compares trained models.
STATE_FIELDS = tuple(f"{name}_{side}" for name in STATE for side in ("bn", "ref"))
FIELDS = ("epochs_bn", "epochs_ref", "lr_bn", "lr_ref", "train_acc_bn", "train_acc_ref", "test_acc_bn",
          "test_acc_ref", *STATE_FIELDS, "fit_bn", "fit_ref", "comparable", "reason")


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
    # a frontier comparison, which reads each norm's curve over its (width, budget) points
    # ``frontier_bn``/``frontier_ref`` at values of ``frontier_axis`` (a column of Sweep.points:
    # test_acc, in_loss) spanning ``frontier_range``.
    pairs: tuple = ()
    frontier_bn: tuple = ()
    frontier_ref: tuple = ()
    frontier_range: tuple = ()
    frontier_axis: str = ""
    # Both sides' STATE (clean loss and logit margin on IN and OUT samples), means over their runs.
    in_loss_bn: float = math.nan
    in_loss_ref: float = math.nan
    out_loss_bn: float = math.nan
    out_loss_ref: float = math.nan
    in_margin_bn: float = math.nan
    in_margin_ref: float = math.nan
    out_margin_bn: float = math.nan
    out_margin_ref: float = math.nan

    @property
    def measurable(self) -> bool:
        """Whether it reads any runs: false for a frontier refused before reading (too few fitting
        budgets, no common test accuracy), whose values are NaN."""
        return bool(self.pairs or self.frontier_range)

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
        (averaged over budgets), or ``"test-accuracy frontier batch@10,20,10@x0.5 vs none@20,40"`` (a
        point off the ladder is ``budget@xWIDTH``; the two frontiers read the same runs along
        different axes, so the axis is part of the name)."""
        if not self.pairs:
            return (f"{FRONTIER_NAMES.get(self.frontier_axis, 'test-accuracy')} frontier "
                    f"batch@{points_words(self.frontier_bn)} vs {self.reference}@{points_words(self.frontier_ref)}")
        return (f"batch@{_budgets(b for b, _ in self.pairs)} vs "
                f"{self.reference}@{_budgets(r for _, r in self.pairs)}")


    def where(self) -> str:
        """Where the comparison reads the two norms, for a sentence: "BN at 10 epochs, none at 40"."""
        if not self.pairs:
            words = FRONTIERS.get(self.setting.split(SAME_RUNS)[0], ("", "test accuracy"))[1]
            along = (f"along BN's points {points_words(self.frontier_bn)} and {self.reference}'s "
                     f"{points_words(self.frontier_ref)}")
            if not self.frontier_range:
                return f"{along}, no common {words} to read"
            lo, hi = self.frontier_range
            return f"at equal {words} from {lo:.3f} to {hi:.3f}, {along}"
        bn = sorted({b for b, _ in self.pairs})
        ref = sorted({r for _, r in self.pairs})
        averaged = " (averaged over them)" if len(self.pairs) > 1 else ""
        return f"BN at {_budgets(bn)} epochs, {self.reference} at {_budgets(ref)}{averaged}"


def _budgets(budgets) -> str:
    return ",".join(str(int(b)) for b in budgets) or "-"


def points_words(points) -> str:
    """Frontier points ``((width, budget), ...)`` in words: a ladder point (width 1) is its budget,
    another ``budget@xWIDTH`` (``"20,28,20@x0.5"``)."""
    return ",".join(str(int(b)) if w == LADDER_WIDTH else f"{int(b)}@x{w:g}" for w, b in points) or "-"


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
    state = {f"{name}_{key}": float(s.get(name, math.nan)) for name in STATE for key, s in (("bn", bn), ("ref", ref))}
    return Comparison(setting, str(ref.norm), int(bn.budget), int(ref.budget), float(bn.lr), float(ref.lr),
                      float(bn.train_acc), float(ref.train_acc), float(bn.test_acc), float(ref.test_acc),
                      bool(bn.train_acc >= fit_threshold), bool(ref.train_acc >= fit_threshold),
                      not reasons, "; ".join(reasons), note, pairs=((int(bn.budget), int(ref.budget)),), **state)


def side(norm: str, runs: list[ShadowRun]) -> pd.Series:
    """One side of a comparison from its runs (one per seed): norm, budget, lr, and the mean IN
    (train) and test accuracy of their models, as :func:`guard` reads it."""
    summaries = [run_summary(run) for run in runs]
    cfg = runs[0].spec.config
    means = {name: float(np.mean([s[name] for s in summaries])) for name in ("train_acc", "test_acc", *STATE)}
    return pd.Series({"norm": norm, "budget": int(cfg.epochs), "lr": float(cfg.lr), **means})


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
        *(_frontier(setting, sweep, reference) for setting in FRONTIERS)])


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


def _mean_side(table: pd.DataFrame, index: list) -> pd.Series:
    """One side averaged over the rows ``index`` of its table (budgets, or (width, budget) points),
    at the first of their budgets for the guard's messages."""
    columns = ["lr", "train_acc", "test_acc", *(name for name in STATE if name in table)]
    means = table.loc[index, columns].mean()
    first = index[0][-1] if isinstance(index[0], tuple) else index[0]
    return pd.Series({"norm": table.norm.iloc[0], "budget": int(first), **means.to_dict()})


def _equal_epochs_both_fit(bn, ref, p: Protocol, num_classes: int) -> Comparison:
    setting = "equal epochs, both fit"
    common = [b for b in p.budgets if b in _usable(bn).index and b in _usable(ref).index]
    if not common:
        c = _protocol_guard(setting, _side_at(bn, p.budgets[-1]), _side_at(ref, p.budgets[-1]), p, num_classes,
                            "no budget of the ladder at which both sides fit; shown at the largest budget")
        return dataclasses.replace(c, comparable=False, reason=c.reason or "no budget at which both sides fit")
    c = _protocol_guard(setting, _mean_side(bn, common), _mean_side(ref, common), p, num_classes)
    return dataclasses.replace(c, pairs=tuple((b, b) for b in common))


def _frontier(setting: str, sweep: Sweep, reference: str) -> Comparison:
    """BN minus the reference at equal values of the setting's axis (:data:`FRONTIERS`: test
    accuracy, or clean IN loss), along both norms' curves over their fitting (width, budget) points
    (at least two each), across the range both reach; never extrapolated, not comparable otherwise."""
    p, axis, words = sweep.protocol, *FRONTIERS[setting]
    points = sweep.points().set_index(["width", "budget"])
    tables = {norm: points[points.norm == norm] for norm in ("batch", reference)}
    usable = {norm: _usable(t) for norm, t in tables.items()}
    largest = _protocol_guard(setting, *(_side_at(t, (LADDER_WIDTH, p.budgets[-1])) for t in tables.values()), p,
                              sweep.num_classes)
    frontiers = dict(pairs=(), frontier_axis=axis, frontier_bn=_points(usable["batch"]),
                     frontier_ref=_points(usable[reference]))
    short = [f"{norm} fits at {len(t)} ({points_words(_points(t)) if len(t) else 'none'})" for norm, t in usable.items()
             if len(t) < 2]
    if short:
        return dataclasses.replace(largest, comparable=False, reason=(
            "a frontier needs at least 2 fitting points (width, budget) per norm; of "
            f"{points_words(_points(tables['batch']))}, " + " and ".join(short)), note="no frontier to read",
            **frontiers)
    if any(t[axis].isna().any() for t in usable.values()):
        return dataclasses.replace(largest, comparable=False, reason=f"the runs do not record {words}",
                                   note="no frontier to read", **frontiers)
    lo = max(t[axis].min() for t in usable.values())
    hi = min(t[axis].max() for t in usable.values())
    if lo > hi:
        ranges = ", ".join(f"{n} {t[axis].min():.3f}-{t[axis].max():.3f}" for n, t in usable.items())
        return dataclasses.replace(largest, comparable=False, reason=(
            f"the {words} ranges of the fitting points do not overlap ({ranges}); not extrapolated"),
            note=f"no common {words} to read", **frontiers)
    c = _protocol_guard(setting, *(_mean_side(t, list(t.index)) for t in usable.values()), p, sweep.num_classes,
                        f"read at {FRONTIER_POINTS} values of {words} from {lo:.3f} to {hi:.3f}, along BN's points "
                        f"{points_words(frontiers['frontier_bn'])} and {reference}'s "
                        f"{points_words(frontiers['frontier_ref'])}")
    middle = float((lo + hi) / 2)
    matched = {f"{axis}_bn": middle, f"{axis}_ref": middle}
    return dataclasses.replace(c, frontier_range=(float(lo), float(hi)), **frontiers, **matched)


def _points(table: pd.DataFrame) -> tuple:
    """The (width, budget) points of a table indexed by them, ladder first, then by width."""
    return tuple(sorted(((float(w), int(b)) for w, b in table.index), key=lambda wb: (wb[0] != LADDER_WIDTH, wb)))


def _side_at(table: pd.DataFrame, at) -> pd.Series:
    """The row of one budget of a norm's sides (indexed by budget), or of one (width, budget) point
    of its points (indexed by both), with the budget in it."""
    side = table.loc[at].copy()
    side["budget"] = int(at[-1] if isinstance(at, tuple) else at)
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

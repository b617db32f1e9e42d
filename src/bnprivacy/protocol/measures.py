"""A measure read through the protocol: its value per run, curves, BN − reference differences at each
comparison (paired or along a frontier), their tests and readings, and the chapter tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..reading import NOT_AVAILABLE, decide, fmt_interval, fmt_signed, judge, not_comparable
from ..stats import difference_p, equivalence_p, paired_difference, standard_error, t_interval
from .comparisons import FRONTIER_POINTS, Comparison, _protocol_guard, _side_at, comparison_label
from .sweep import LADDER_WIDTH, STATE, Sweep, ladder, widths_of

def measure_table(sweep: Sweep, measure) -> pd.DataFrame:
    """``measure(run) -> float`` of every run: one row per (norm, width, budget, seed), the ladder's
    (width 1) first, with the run's test and IN accuracy and :data:`sweep.STATE` beside the value.
    Per-budget readers take :func:`sweep.ladder` of it."""
    rows = [dict(norm=norm, width=width, budget=budget, seed=seed, value=float(measure(run)))
            for (norm, width, budget, seed), run in sweep.every_run()]
    keys = ["norm", "width", "budget", "seed"]
    table = sweep.table.assign(width=widths_of(sweep.table))
    state = [name for name in STATE if name in table]
    return pd.DataFrame(rows, columns=[*keys, "value"]).merge(table[[*keys, "test_acc", "train_acc", *state]], on=keys)


def curves(values: pd.DataFrame) -> pd.DataFrame:
    """Per (norm, budget): mean of the measure over seeds with its 95% t-interval, and the mean
    test accuracy (the data of the protocol's curve figures)."""
    rows = []
    for (norm, budget), group in ladder(values).groupby(["norm", "budget"], sort=False):
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
    elif not comparison.frontier_range:  # a frontier that could not be read: no values, no test
        nan = float("nan")
        return {"batch": nan, "ref": nan, "diff": nan, "lo": nan, "hi": nan, "n": 0, "df": 0}
    else:
        grid = np.linspace(*comparison.frontier_range, FRONTIER_POINTS)
        axis = comparison.frontier_axis
        a = frontier_values(values, "batch", comparison.frontier_bn, grid, axis).mean(axis=1)
        b = frontier_values(values, comparison.reference, comparison.frontier_ref, grid, axis).mean(axis=1)
    d = paired_difference(a, b)
    return {"batch": float(np.mean(a)), "ref": float(np.mean(b)), **d, "df": max(d["n"] - 1, 0)}


def _seed_means(values: pd.DataFrame, norm: str, budgets: list[int]) -> np.ndarray:
    """Per seed (in seed order), the measure of ``norm`` averaged over the pairs' ``budgets``."""
    values = ladder(values)
    rows = [values[(values.norm == norm) & (values.budget == b)].sort_values("seed").value.to_numpy()
            for b in budgets]
    return np.mean(rows, axis=0)


def frontier_values(values: pd.DataFrame, norm: str, points, grid, axis: str = "test_acc") -> np.ndarray:
    """``[seeds, len(grid)]``: each seed's measure of ``norm``, linearly interpolated along the
    norm's curve (its ``points``, (width, budget) pairs or ladder budgets, placed at their mean
    ``axis`` over seeds: test accuracy, or clean IN loss) at the values ``grid``. Values outside the
    curve's range are refused, never extrapolated."""
    points = [(LADDER_WIDTH, p) if not isinstance(p, tuple) else p for p in points]
    table = values.assign(width=widths_of(values))
    keyed = table.set_index(["width", "budget"]).index
    rows = table[(table.norm == norm) & keyed.isin(points)]
    position = rows.groupby(["width", "budget"])[axis].mean()
    grid = np.asarray(grid, dtype=float)
    if grid.min() < position.min() - 1e-12 or grid.max() > position.max() + 1e-12:
        raise ValueError(f"{axis} {grid.min():.3f}-{grid.max():.3f} is outside {norm}'s curve "
                         f"({position.min():.3f}-{position.max():.3f}); a frontier is never extrapolated")
    order = position.sort_values(kind="stable")
    per_seed = rows.pivot_table(index="seed", columns=["width", "budget"], values="value")[order.index]
    return np.stack([np.interp(grid, order.to_numpy(), seed_values) for seed_values in per_seed.to_numpy()])


def tests(d: dict, margin: float) -> dict:
    """The two tests of a difference ``d`` (from :func:`difference`) at equivalence ``margin``:
    ``{p, p_equivalence}``, the t-test of "no difference" and the TOST of "within ±margin", both
    unadjusted (the verdict adjusts them across its rows with Holm's method)."""
    se = standard_error(d["lo"], d["hi"], d["df"]) if d["df"] > 0 else float("nan")
    return {"p": difference_p(d["diff"], se, d["df"]), "p_equivalence": equivalence_p(d["diff"], se, d["df"], margin)}


def read_comparison(comparison: Comparison, d: dict, margin: float, higher: str = "BN higher", lower: str = "BN lower",
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
                     "reading": read_comparison(c, d, margin, resolution=resolution(c, d) if resolution else "",
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

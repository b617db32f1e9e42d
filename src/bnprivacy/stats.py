"""Intervals the book reports: Student-t over replicates, paired differences, percentile bootstrap,
bootstrap ratios and Clopper-Pearson bounds. One implementation of each, used by every chapter.

Every function returns NaN bounds where an interval is undefined (a single replicate), so that a
reading of it says "no interval" instead of pretending.
"""

from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95


def _check_level(level: float) -> None:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level={level!r} is not allowed; allowed values: a number in (0, 1), e.g. 0.95")


def t_interval(values, level: float = LEVEL) -> dict:
    """Mean of ``values`` (replicates, e.g. seeds) with a Student-t interval: ``{mean, lo, hi, n}``.

    NaN values are dropped; fewer than two left gives NaN bounds.
    """
    from scipy import stats

    _check_level(level)
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    mean = float(values.mean())
    if len(values) < 2:
        return {"mean": mean, "lo": float("nan"), "hi": float("nan"), "n": len(values)}
    half = stats.t.ppf((1 + level) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": len(values)}


def paired_difference(a, b, level: float = LEVEL) -> dict:
    """Mean of ``a - b`` over paired replicates (seeds) with a Student-t interval:
    ``{diff, lo, hi, n}``. With one replicate the interval is NaN."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need one per replicate on both sides; got {a.shape} and {b.shape}")
    t = t_interval(a - b, level)
    return {"diff": t["mean"], "lo": t["lo"], "hi": t["hi"], "n": t["n"]}


def percentile_interval(draws, level: float = LEVEL, axis: int = 0) -> tuple:
    """``(lo, hi)`` percentile interval of bootstrap ``draws`` along ``axis`` (NaNs ignored)."""
    _check_level(level)
    lo, hi = np.nanquantile(np.asarray(draws, dtype=float), [(1 - level) / 2, (1 + level) / 2], axis=axis)
    return lo, hi


def bootstrap_mean_ratio(a, b, *, n_boot: int = 1000, level: float = LEVEL, seed: int = 0) -> dict:
    """Ratio of means ``mean(a) / mean(b)`` of two independent samples with a percentile bootstrap
    interval (each side resampled on its own): ``{ratio, lo, hi, n_a, n_b}``."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("a ratio of means needs at least one value on each side")
    rng = np.random.default_rng(seed)
    draws = (rng.choice(a, (n_boot, len(a))).mean(1) / rng.choice(b, (n_boot, len(b))).mean(1))
    lo, hi = percentile_interval(draws, level)
    return {"ratio": float(a.mean() / b.mean()), "lo": float(lo), "hi": float(hi), "n_a": len(a), "n_b": len(b)}


def clopper_pearson(successes, trials, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson bounds ``(lower, upper)`` of a binomial rate, each holding with
    probability ``1 - alpha``."""
    from scipy import stats

    k, n = np.asarray(successes, dtype=float), np.asarray(trials, dtype=float)
    with np.errstate(invalid="ignore"):
        lower = np.where(k > 0, stats.beta.ppf(alpha, k, n - k + 1), 0.0)
        upper = np.where(k < n, stats.beta.ppf(1 - alpha, k + 1, n - k), 1.0)
    return lower, upper


# --- tests of a difference: is it non-zero, is it within a margin, and many rows at once ------------

def standard_error(lo: float, hi: float, df: float, level: float = LEVEL) -> float:
    """The standard error behind a symmetric interval ``[lo, hi]`` at ``level`` with ``df`` degrees
    of freedom (Student-t; ``df=inf`` for a normal interval, as used for a bootstrap percentile
    interval, where it is an approximation)."""
    from scipy import stats

    _check_level(level)
    return (hi - lo) / (2 * stats.t.ppf((1 + level) / 2, df))


def difference_p(diff: float, se: float, df: float) -> float:
    """Two-sided p-value of "the difference is zero" (t-test with ``df`` degrees of freedom); NaN
    when the standard error is missing or not positive."""
    from scipy import stats

    if not (math.isfinite(diff) and math.isfinite(se) and se > 0):
        return float("nan")
    return float(2 * stats.t.sf(abs(diff) / se, df))


def equivalence_p(diff: float, se: float, df: float, margin: float) -> float:
    """TOST p-value (two one-sided t-tests) of "the difference lies within ±``margin``": the larger
    of the p-values against ``diff <= -margin`` and ``diff >= +margin``; small p means equivalent.
    NaN when the standard error is missing or not positive."""
    from scipy import stats

    check_margin("margin", margin)
    if not (math.isfinite(diff) and math.isfinite(se) and se > 0):
        return float("nan")
    below = stats.t.sf((diff + margin) / se, df)   # H0: diff <= -margin
    above = stats.t.cdf((diff - margin) / se, df)  # H0: diff >= +margin
    return float(max(below, above))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN entries are not tests: they stay
    NaN and do not count towards the family's size). Controls the family-wise error rate."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    if not len(tested):
        return adjusted
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def check_margin(name: str, margin) -> None:
    """Refuse an equivalence margin that is not a finite number > 0, naming the parameter."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin <= 0:
        raise ValueError(f"{name}={margin!r} is not allowed; allowed values: a finite number > 0 (the largest "
                         "difference that counts as no difference, in the measure's units), e.g. 0.01")

"""The privacy accountant's epsilon, the noise a budget needs, and an empirical epsilon lower bound.

The noise multiplier for a budget is the one Opacus's ``make_private_with_epsilon`` picks, found
by a reproduction of its search that always ends (:func:`noise_multiplier`).

**Empirical epsilon.** Any test that tells "x was in the training set" from "it was not" on the
output of an (epsilon, delta)-DP mechanism satisfies ``TPR <= e^eps FPR + delta`` and
``1 - FPR <= e^eps (1 - TPR) + delta`` (Kairouz et al. 2015). A membership attack's TPR and FPR
therefore bound epsilon from below (Jagielski et al. 2020, Nasr et al. 2021):
``eps >= max(log((TPR - delta) / FPR), log((1 - FPR - delta) / (1 - TPR)))``, here with one-sided
Clopper-Pearson bounds (TPR from below, FPR from above) so that the bound holds at a stated
confidence. The threshold is chosen on one half of the (target, sample) pairs and the bound is
evaluated on the other half: maximising over thresholds on the same pairs would be optimistic.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np

from ..checks import check_real, check_whole
from ..stats import clopper_pearson

ACCOUNTANTS = ("rdp", "prv")


DEFAULT_DELTA = 1e-5


# The largest finite budget: e^100 bounds a likelihood ratio by about 1e43, which says nothing, and
# the noise such budgets need is so small that the PRV accountant takes tens of seconds per
# evaluation (measured: 20 s at a noise multiplier of 0.1). epsilon = inf trains without noise.
MAX_EPSILON = 100.0


# The noise search of Opacus's get_noise_multiplier (opacus.accountants.utils), reproduced by
# noise_multiplier: its largest noise multiplier and its tolerance on epsilon.
MAX_SIGMA = 1e6


EPSILON_TOLERANCE = 0.01


# Halvings of the noise interval before the search gives up: a search that converges needs about
# 30 (float64 cannot halve an interval of at most 2e6 more than about 75 times).
MAX_BISECTIONS = 100


def check_epsilon(epsilon) -> None:
    """Raise ``ValueError`` unless ``epsilon`` is a number in ``(0, MAX_EPSILON]`` or ``math.inf``
    (no noise, no privacy)."""
    check_real("epsilon", epsilon, f"a number > 0 and <= {MAX_EPSILON:g} (larger budgets guarantee nothing), "
                "or math.inf for clipping without noise",
                not isinstance(epsilon, bool) and isinstance(epsilon, (int, float))
                and (0 < epsilon <= MAX_EPSILON or epsilon == math.inf))


def check_max_grad_norm(max_grad_norm) -> None:
    """Raise ``ValueError`` unless the clipping norm is a finite number > 0 (an infinite one clips
    nothing, and the noise scaled by it is infinite)."""
    check_real("max_grad_norm", max_grad_norm, "a finite number > 0 (the per-sample clipping norm), e.g. 1.0",
                isinstance(max_grad_norm, (int, float)) and 0 < max_grad_norm < math.inf)


def resolve_delta(delta: float, n: int) -> float:
    """``delta`` checked against a training set of ``n`` samples; 0 -> ``min(1e-5, 1/(10 n))``.

    A delta of ``1/n`` or more allows a mechanism that publishes one random training sample in
    the clear, so it is refused.
    """
    if delta == 0:
        return min(DEFAULT_DELTA, 1 / (10 * n))
    if delta >= 1 / n:
        raise ValueError(f"delta={delta:g} is not below 1/n = {1 / n:.3g} for a training set of "
                         f"n={n} samples: such a delta allows publishing a training sample in the "
                         f"clear. Use delta < 1/n, e.g. delta={min(DEFAULT_DELTA, 1 / (10 * n)):.1g}, "
                         "or 0 for that default")
    return float(delta)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Logical batches per epoch of a model with ``n`` training samples: ``len`` of its
    ``DataLoader(batch_size=batch_size)``, which ``training._make_private`` turns into the Poisson rate
    ``1 / steps_per_epoch`` and the ``steps_per_epoch * epochs`` steps the noise is searched for."""
    return -(-int(n) // int(batch_size))


@functools.lru_cache(maxsize=256)
def noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int,
                     accountant: str = "rdp") -> float:
    """The noise multiplier Opacus's ``make_private_with_epsilon`` picks for ``(epsilon, delta)``
    after ``steps`` steps at sampling rate ``sample_rate``.

    Opacus's ``get_noise_multiplier`` search, step for step (the same accountant evaluations, so
    the same sigma): double ``sigma`` from 10 until the accountant's epsilon is at most ``epsilon``
    (refusing noise above ``MAX_SIGMA``), then bisect until it lies within ``EPSILON_TOLERANCE``
    below. Unlike Opacus's, it always ends: a non-finite epsilon of the accountant counts as too
    large, and a bisection that does not converge within ``MAX_BISECTIONS`` halvings raises (Opacus
    loops forever, e.g. for a target of 1e30, which its absolute tolerance cannot resolve). An
    epsilon above ``MAX_EPSILON`` is refused up front, and so is one below the accountant's
    :func:`epsilon_floor`, which Opacus refuses only after doubling the noise to its limit.
    Raises ``ValueError`` saying what to change when no noise multiplier reaches ``epsilon``.
    """
    _check_search(epsilon, delta, sample_rate, steps, accountant)
    where = (f"with the {accountant} accountant at delta={delta:g}, {steps} steps at sampling rate "
             f"{sample_rate:.4g}")
    floor = epsilon_floor(delta, accountant)
    if epsilon < floor:  # Opacus would double the noise up to MAX_SIGMA first, a minute at some rates
        raise ValueError(
            f"epsilon={epsilon:g} is out of reach {where}: this accountant certifies no epsilon below {floor:.3g} "
            "at this delta, however much noise. Raise epsilon above that, allow a larger delta, or use the prv "
            "accountant")
    epsilon_at = _epsilon_of_noise(accountant, delta, sample_rate, steps)
    sigma_high, eps_high = _noise_below(epsilon, epsilon_at, where)
    return _bisect_noise(epsilon, epsilon_at, sigma_high, eps_high, where)


def _epsilon_of_noise(accountant: str, delta: float, sample_rate: float, steps: int):
    """``sigma -> epsilon`` of the accountant, evaluated as Opacus's search does (one accountant,
    its history replaced)."""
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)

    def epsilon_at(sigma) -> float:
        acc.history = [(sigma, sample_rate, steps)]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order")  # the search probes extremes
            return float(acc.get_epsilon(delta=delta))

    return epsilon_at


def _noise_below(epsilon: float, epsilon_at, where: str):
    """Opacus's first phase: double sigma from 10 until its epsilon is at most ``epsilon``; at most
    17 evaluations, since it raises once sigma passes ``MAX_SIGMA``."""
    sigma_high, eps_high = 10, math.inf
    while not eps_high <= epsilon:  # a NaN epsilon counts as too large (Opacus stops at it)
        sigma_high = 2 * sigma_high
        eps_high = epsilon_at(sigma_high)
        if sigma_high > MAX_SIGMA:
            raise ValueError(
                f"epsilon={epsilon:g} is out of reach {where}: even a noise multiplier of {sigma_high:.3g} gives "
                f"epsilon {eps_high:.3g} (the search stops above {MAX_SIGMA:g}, as Opacus's does). Raise epsilon "
                "above that, or take fewer steps (fewer epochs), sample less (a smaller batch) or allow a larger delta")
    return sigma_high, eps_high


def _bisect_noise(epsilon: float, epsilon_at, sigma_high, eps_high: float, where: str) -> float:
    """Opacus's second phase: bisect ``[0, sigma_high]`` until the epsilon of ``sigma_high`` lies
    within ``EPSILON_TOLERANCE`` below ``epsilon``, in at most ``MAX_BISECTIONS`` evaluations."""
    sigma_low = 0
    for _ in range(MAX_BISECTIONS):
        if epsilon - eps_high <= EPSILON_TOLERANCE:
            return float(sigma_high)
        sigma = (sigma_low + sigma_high) / 2
        eps = epsilon_at(sigma)
        if eps < epsilon:
            sigma_high, eps_high = sigma, eps
        else:
            sigma_low = sigma
    raise ValueError(
        f"the noise search for epsilon={epsilon:g} {where} did not come within {EPSILON_TOLERANCE:g} of it in "
        f"{MAX_BISECTIONS} halvings (closest from below: epsilon {eps_high:.6g} at noise multiplier "
        f"{sigma_high:.6g}): the accountant's epsilon jumps over the target. Choose another epsilon or accountant")


def epsilon_floor(delta: float, accountant: str = "rdp") -> float:
    """The least epsilon ``accountant`` can certify at ``delta`` with any noise: the RDP accountant
    converts to (epsilon, delta) at orders up to 63, which costs epsilon even at zero Renyi
    divergence (about 0.10 at delta = 1e-5); the PRV accountant has no such floor (0)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import get_privacy_spent

    if accountant != "rdp":
        return 0.0
    orders = RDPAccountant.DEFAULT_ALPHAS
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order")  # the largest order, as expected
        eps, _ = get_privacy_spent(orders=orders, rdp=np.zeros(len(orders)), delta=delta)
    return float(eps)


def _check_search(epsilon, delta, sample_rate, steps, accountant) -> None:
    """Refuse what would make the noise search meaningless or endless (NaN compares False everywhere)."""
    check_epsilon(epsilon)
    if math.isinf(epsilon):
        raise ValueError("epsilon=inf needs no noise search: it trains with noise multiplier 0")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant={accountant!r} is not allowed; allowed values: {', '.join(ACCOUNTANTS)}")
    check_real("delta", delta, "a number in (0, 1)", isinstance(delta, (int, float)) and 0 < delta < 1)
    check_real("sample_rate", sample_rate, "a number in (0, 1]",
                isinstance(sample_rate, (int, float)) and 0 < sample_rate <= 1)
    check_whole("steps", steps)


def accountant_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                       accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of ``steps`` Poisson-subsampled Gaussian steps (noise multiplier
    ``sigma``, sampling rate ``q``), by Opacus's ``accountant`` (``rdp`` or ``prv``)."""
    from opacus.accountants import create_accountant

    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant={accountant!r} is not allowed; allowed values: {', '.join(ACCOUNTANTS)}")
    finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (noise_multiplier, sample_rate, steps, delta))
    # A NaN passes every comparison below as False, and the accountant then searches forever.
    if not finite or noise_multiplier <= 0 or not 0 < sample_rate <= 1 or steps < 1 or not 0 < delta < 1:
        raise ValueError(f"accountant_epsilon needs noise_multiplier > 0, 0 < sample_rate <= 1, "
                         f"steps >= 1 and 0 < delta < 1; got {noise_multiplier}, {sample_rate}, "
                         f"{steps}, {delta}")
    acc = create_accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, int(steps))]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order")
        return float(acc.get_epsilon(delta))


def epsilon_lower_bound(tp, fp, fn, tn, delta: float = 0.0, confidence: float = 0.95):
    """Lower bound on epsilon implied by an attack's confusion counts, at ``confidence``.

    With ``TPR_lo`` and ``FPR_hi`` one-sided Clopper-Pearson bounds (each at level
    ``(1 - confidence) / 2``, so both hold together with probability ``confidence``):
    ``max(0, log((TPR_lo - delta) / FPR_hi), log((1 - FPR_hi - delta) / (1 - TPR_lo)))``.
    Arrays of counts give an array of bounds.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} is not allowed; allowed values: a number in (0, 1)")
    alpha = (1 - confidence) / 2
    tpr_lo, _ = clopper_pearson(tp, np.asarray(tp) + np.asarray(fn), alpha)
    _, fpr_hi = clopper_pearson(fp, np.asarray(fp) + np.asarray(tn), alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.log(np.clip(tpr_lo - delta, 0, None) / fpr_hi)
        second = np.log(np.clip(1 - fpr_hi - delta, 0, None) / (1 - tpr_lo))
    bound = np.fmax(np.fmax(np.nan_to_num(first, nan=0.0, neginf=0.0),
                            np.nan_to_num(second, nan=0.0, neginf=0.0)), 0.0)
    return float(bound) if bound.ndim == 0 else bound


def empirical_epsilon(scores, masks, *, delta: float = 0.0, confidence: float = 0.95, seed: int = 0,
                      select=None) -> dict:
    """Empirical epsilon lower bound of an attack's scores ``[targets, P]`` against ``masks``.

    The (target, sample) pairs are split at random into two halves: the threshold ("member" when
    score >= threshold) that maximises the bound on the first half is evaluated on the second,
    so the reported bound is not inflated by the choice of threshold. ``select`` (bool ``[P]``)
    restricts the pairs to some samples (e.g. canaries). The Clopper-Pearson intervals treat the
    pairs as independent trials; pairs of one target model are not, so the stated confidence is
    nominal. Returns the bound and its counts.
    """
    check_real("delta", delta, "a number in [0, 1)", isinstance(delta, (int, float)) and 0 <= delta < 1)
    check_real("confidence", confidence, "a number in (0, 1), e.g. 0.95",
                isinstance(confidence, (int, float)) and 0 < confidence < 1)
    scores, members = np.asarray(scores, dtype=np.float64), np.asarray(masks, dtype=bool)
    if select is not None:
        scores, members = scores[:, np.asarray(select)], members[:, np.asarray(select)]
    keep = np.isfinite(scores.ravel())
    scores, members = scores.ravel()[keep], members.ravel()[keep]
    if members.all() or not members.any():
        raise ValueError("an empirical epsilon needs both members and non-members among the pairs")
    half = np.random.default_rng(seed).permutation(len(scores)) % 2 == 0
    candidates = np.unique(scores[half])
    tp, fp, fn, tn = _counts(scores[half], members[half], candidates)
    best = candidates[int(np.argmax(epsilon_lower_bound(tp, fp, fn, tn, delta, confidence)))]
    tp, fp, fn, tn = (int(c[0]) for c in _counts(scores[~half], members[~half], np.array([best])))
    return {"epsilon_lb": epsilon_lower_bound(tp, fp, fn, tn, delta, confidence), "threshold": float(best),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn, "tpr": tp / max(tp + fn, 1), "fpr": fp / max(fp + tn, 1),
            "confidence": confidence}


def _counts(scores: np.ndarray, members: np.ndarray, thresholds: np.ndarray):
    """Confusion counts of "member iff score >= t" for every threshold t."""
    order = np.sort(scores[members]), np.sort(scores[~members])
    positives = len(order[0]) - np.searchsorted(order[0], thresholds, side="left")
    false_pos = len(order[1]) - np.searchsorted(order[1], thresholds, side="left")
    return positives, false_pos, len(order[0]) - positives, len(order[1]) - false_pos

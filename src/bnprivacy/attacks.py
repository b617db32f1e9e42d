"""Membership-inference attacks on a shadow run, evaluated leave-one-model-out, and their metrics.

Every attack scores pool sample i against a *target* model t, using the other models of the run as
reference (shadow) models, whose inclusion masks are known. Higher score = "member". Evaluated
over several targets, the scores of all (target, sample) pairs are pooled into one ROC curve, as in
Carlini et al. (2022).

- ``loss``: the negative loss of the target on the sample (Yeom et al. 2018), no reference models.
- ``lira_online`` / ``lira_offline``: LiRA (Carlini et al. 2022). The statistic is the logit-scaled
  confidence ``phi = log p_y - log sum_{j != y} p_j`` per query view (identity, mirror). Online:
  Gaussians fitted to phi of the reference models that trained on the sample (IN) and that did not
  (OUT); score = log N(phi_t; IN) - log N(phi_t; OUT). Offline: OUT only; score = the one-sided
  p-value ``log Phi((phi_t - mu_out) / sigma_out)`` (larger phi = more member-like). Per-example
  variance, or ``fixed_variance`` (one variance for all examples). Views are averaged after the
  per-view log-likelihood ratio, as the reference code does. Location: the mean of the reference
  scores (the Gaussian maximum-likelihood fit; the reference code uses the median).
- ``rmia``: RMIA (Zarifzadeh et al. 2024). ``p(x|theta)`` is the target's probability of the true
  label (mean over views); ``p(x)`` its mean over reference models (offline: OUT models only,
  corrected by ``p(x) = ((1 + a) p_out(x) + (1 - a)) / 2``). The score of x is the fraction of
  population samples z (the test split, never trained on) with
  ``[p(x|theta) / p(x)] / [p(z|theta) / p(z)] > gamma``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from .scores import lira_score, losses

ATTACKS = ("loss", "lira_online", "lira_offline", "lira_online_fixed", "lira_offline_fixed", "rmia")
# The names the book prints, for the attacks its chapters show.
ATTACK_NAMES = {"lira_online": "LiRA online", "lira_offline": "LiRA offline",
                "lira_online_fixed": "LiRA online, fixed variance", "lira_offline_fixed": "LiRA offline, fixed variance",
                "rmia": "RMIA", "loss": "LOSS"}


@dataclasses.dataclass
class AttackInput:
    """What every attack reads: signals of N models on P pool samples and T population samples.

    ``logits [N, Q, P, K]``, ``labels [P]``, ``masks [N, P]`` bool; ``population_logits
    [N, Q, T, K]`` and ``population_labels [T]`` (for RMIA).
    """

    logits: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    population_logits: torch.Tensor | None = None
    population_labels: torch.Tensor | None = None

    @classmethod
    def from_run(cls, run) -> "AttackInput":
        """The pool and test-split signals of a ShadowRun."""
        return cls(run.logits_pool, run.y_pool, run.masks, run.logits_test, run.y_test)

    @property
    def n_models(self) -> int:
        return self.masks.shape[0]


# --- per-sample statistics ------------------------------------------------------------------------

def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """LiRA's ``log p_y - log sum_{j != y} p_j`` in float64, ``[..., S, K] -> [..., S]``."""
    return lira_score(logits.double(), labels)


def true_class_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the label, averaged over query views: ``[N, Q, S, K] -> [N, S]``."""
    probs = logits.double().softmax(-1)
    index = labels.view(1, 1, -1, 1).expand(*probs.shape[:-1], 1)
    return probs.gather(-1, index).squeeze(-1).mean(1)


def negative_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``-cross-entropy`` of the identity view: ``[N, Q, S, K] -> [N, S]``."""
    return -losses(logits[:, 0].double(), labels)


# --- attacks --------------------------------------------------------------------------------------

def attack_scores(data: AttackInput, attack: str, targets, *, rmia_a: float = 0.3,
                  rmia_gamma: float = 1.0, references=None, strict: bool = True) -> torch.Tensor:
    """Membership scores ``[len(targets), P]`` of ``attack`` for each target model.

    ``references`` restricts the reference models (default: every model but the target).
    Raises ``ValueError`` for an unknown attack, a target outside the run, or (with ``strict``)
    too few IN/OUT reference models for a sample; ``strict=False`` scores such samples NaN
    instead, and ``evaluate`` leaves them out.
    """
    targets = _check_targets(targets, data.n_models)
    if attack not in ATTACKS:
        raise ValueError(f"attack={attack!r} is not allowed; allowed values: {', '.join(ATTACKS)}")
    if attack == "loss":
        return negative_loss(data.logits[targets], data.labels)
    if attack.startswith("lira"):
        phi = logit_confidence(data.logits, data.labels)  # [N, Q, P]
        return _lira(phi, data.masks, targets, online="online" in attack, fixed="fixed" in attack,
                     references=references, strict=strict)
    return _rmia(data, targets, rmia_a, rmia_gamma, references)


def _check_targets(targets, n_models: int) -> list[int]:
    targets = [int(t) for t in (targets if hasattr(targets, "__iter__") else [targets])]
    bad = [t for t in targets if not 0 <= t < n_models]
    if not targets or bad:
        raise ValueError(f"target model(s) {bad or targets} outside the run; allowed values: "
                         f"indices in [0, {n_models})")
    return targets


def _reference_weights(n_models: int, target: int, references) -> torch.Tensor:
    weights = torch.zeros(n_models, dtype=torch.float64)
    chosen = range(n_models) if references is None else references
    weights[[r for r in chosen if r != target]] = 1.0
    return weights


def _lira(phi: torch.Tensor, masks: torch.Tensor, targets: list[int], *, online: bool, fixed: bool,
          references=None, strict: bool = True) -> torch.Tensor:
    """Gaussian likelihood-ratio scores from per-view statistics ``phi [N, Q, P]``.

    The IN and OUT moments over all reference models are summed once; each target's own
    contribution is then subtracted (leave-one-model-out in O(N) rather than O(N^2)).
    """
    base = _reference_weights(phi.shape[0], -1, references).view(-1, 1, 1)
    inside = masks.double().unsqueeze(1)  # [N, 1, P]
    sums = {side: _moment_sums(phi, base * weight) for side, weight in (("in", inside), ("out", 1 - inside))}
    out = []
    for target in targets:
        x = phi[target]
        own = {"in": inside[target], "out": 1 - inside[target]}
        moments = {}
        for side in ("in", "out") if online else ("out",):
            drop = own[side] * base[target]
            count, total, squares = (v - d for v, d in zip(sums[side], (drop, drop * x, drop * x * x)))
            if strict:
                _require(count[0], 2, side.upper(), target)
            count = torch.where(count >= 2, count, torch.nan)
            mean = total / count
            var = ((squares - count * mean ** 2) / (count - 1)).clamp_min(1e-12)
            moments[side] = (mean, _pooled(var) if fixed else var)
        if online:
            score = _normal_logpdf(x, *moments["in"]) - _normal_logpdf(x, *moments["out"])
        else:
            mean, var = moments["out"]
            score = torch.special.log_ndtr((x - mean) / var.sqrt())
        out.append(score.mean(0))
    return torch.stack(out)


def _moment_sums(values: torch.Tensor, weights: torch.Tensor):
    """Count, sum and sum of squares of ``values [N, Q, P]`` over models under 0/1 ``weights``."""
    weights = weights.expand_as(values)
    return weights.sum(0), (weights * values).sum(0), (weights * values * values).sum(0)


def _pooled(var: torch.Tensor) -> torch.Tensor:
    """One variance per query view, pooled over all examples (LiRA's fixed variance)."""
    return var.nanmean(-1, keepdim=True).expand_as(var)


def _require(count: torch.Tensor, minimum: int, side: str, target: int) -> None:
    short = int((count < minimum).sum())
    if short:
        raise ValueError(
            f"{short} sample(s) have fewer than {minimum} {side} reference models for target "
            f"model {target}; the attack needs at least {minimum} IN and {minimum} OUT models per "
            "sample. Train more shadow models (n_models) or use the offline attack."
        )


def _normal_logpdf(x, mean, var):
    return -0.5 * (torch.log(2 * math.pi * var) + (x - mean) ** 2 / var)


def _rmia(data: AttackInput, targets: list[int], a: float, gamma: float, references) -> torch.Tensor:
    if data.population_logits is None:
        raise ValueError("RMIA needs population samples (population_logits); use AttackInput.from_run")
    p_x = true_class_probability(data.logits, data.labels)  # [N, P]
    p_z = true_class_probability(data.population_logits, data.population_labels)  # [N, T]
    inside = data.masks.double()
    out = []
    for target in targets:
        w = _reference_weights(data.n_models, target, references).view(-1, 1)
        # Offline RMIA uses OUT models with the linear correction; population samples are OUT for all.
        prior_x = (w * (1 - inside) * p_x).sum(0) / (w * (1 - inside)).sum(0)
        _require((w * (1 - inside)).sum(0), 1, "OUT", target)
        prior_x = 0.5 * ((1 + a) * prior_x + (1 - a))
        prior_z = 0.5 * ((1 + a) * (w * p_z).sum(0) / w.sum() + (1 - a))
        ratio_x = p_x[target] / prior_x
        ratio_z = p_z[target] / prior_z
        # Fraction of z with ratio_x / ratio_z > gamma, by sorting instead of a P x T matrix.
        sorted_z = torch.sort(ratio_z).values
        below = torch.searchsorted(sorted_z, ratio_x / gamma, right=False)
        out.append(below.double() / len(sorted_z))
    return torch.stack(out)


# --- metrics --------------------------------------------------------------------------------------

def roc(scores, members) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr)`` of scores (higher = member) against the true membership, with the
    same thresholds as ``sklearn.metrics.roc_curve(drop_intermediate=False)``."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    members = np.asarray(members, dtype=bool).ravel()
    positives, negatives = members.sum(), (~members).sum()
    if positives == 0 or negatives == 0:
        raise ValueError("a ROC curve needs both members and non-members")
    order = np.argsort(-scores, kind="mergesort")
    scores, members = scores[order], members[order]
    distinct = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tps = np.cumsum(members)[distinct]
    fps = (distinct + 1) - tps
    return np.r_[0.0, fps / negatives], np.r_[0.0, tps / positives]


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target_fpr: float) -> float:
    """The highest TPR among thresholds whose FPR is at most ``target_fpr`` (in (0, 1))."""
    if not 0 < target_fpr < 1:
        raise ValueError(f"target FPR {target_fpr!r} is not allowed; allowed values: a number in (0, 1)")
    return float(tpr[fpr <= target_fpr].max())


def summarize(scores, members, fprs=(0.001, 0.01)) -> dict:
    """AUC, balanced accuracy (best threshold) and TPR at each FPR in ``fprs``."""
    fpr, tpr = roc(scores, members)
    out = {"auc": float(np.trapezoid(tpr, fpr)), "balanced_acc": float(np.max(1 - (fpr + 1 - tpr) / 2))}
    for level in fprs:
        out[f"tpr@{level:g}"] = tpr_at_fpr(fpr, tpr, level)
    return out


def evaluate(scores: torch.Tensor, masks: torch.Tensor, *, fprs=(0.001, 0.01), n_boot: int = 200,
             level: float = 0.95, seed: int = 0, select=None) -> dict:
    """Pooled metrics of scores ``[targets, P]`` against ``masks [targets, P]``, with bootstrap
    intervals (resampling the pooled (target, sample) pairs). ``select`` (bool ``[P]``) restricts
    the evaluation to some samples (e.g. canaries)."""
    scores, members = np.asarray(scores, dtype=np.float64), np.asarray(masks, dtype=bool)
    if select is not None:
        scores, members = scores[:, np.asarray(select)], members[:, np.asarray(select)]
    scored = np.isfinite(scores.ravel())  # NaN: a sample the attack could not score
    scores, members = scores.ravel()[scored], members.ravel()[scored]
    point = summarize(scores, members, fprs)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(scores), len(scores))
        if members[pick].all() or not members[pick].any():
            continue
        draws.append(summarize(scores[pick], members[pick], fprs))
    result = {}
    for name, value in point.items():
        values = np.array([d[name] for d in draws]) if draws else np.array([value])
        lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
        result[name] = value
        result[f"{name}_lo"] = float(lo)
        result[f"{name}_hi"] = float(hi)
    result["pairs"] = len(scores)
    result["unscored"] = int((~scored).sum())
    return result


def compare(scores_a, masks_a, scores_b, masks_b, *, fprs=(0.001, 0.01), n_boot: int = 200,
            level: float = 0.95, seed: int = 0) -> dict:
    """Metric differences ``a - b`` between two attacked runs (e.g. BN and no normalisation),
    with intervals from independent bootstrap resamples of each run's (target, sample) pairs."""
    a_scores, a_members = np.asarray(scores_a, dtype=np.float64).ravel(), np.asarray(masks_a, bool).ravel()
    b_scores, b_members = np.asarray(scores_b, dtype=np.float64).ravel(), np.asarray(masks_b, bool).ravel()
    point_a, point_b = summarize(a_scores, a_members, fprs), summarize(b_scores, b_members, fprs)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        pa = rng.integers(0, len(a_scores), len(a_scores))
        pb = rng.integers(0, len(b_scores), len(b_scores))
        if not (a_members[pa].any() and (~a_members[pa]).any() and b_members[pb].any() and (~b_members[pb]).any()):
            continue
        sa, sb = summarize(a_scores[pa], a_members[pa], fprs), summarize(b_scores[pb], b_members[pb], fprs)
        draws.append({k: sa[k] - sb[k] for k in sa})
    out = {}
    for name in point_a:
        diffs = np.array([d[name] for d in draws]) if draws else np.array([point_a[name] - point_b[name]])
        lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
        out[name] = point_a[name] - point_b[name]
        out[f"{name}_lo"], out[f"{name}_hi"] = float(lo), float(hi)
    return out


def vulnerability(scores: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Per sample: mean attack score over targets that trained on it minus over those that did not."""
    scores, inside = np.asarray(scores, dtype=np.float64), np.asarray(masks, dtype=bool)
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.where(inside, scores, np.nan), 0) - np.nanmean(np.where(~inside, scores, np.nan), 0)

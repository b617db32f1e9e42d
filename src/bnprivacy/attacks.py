"""Membership-inference attacks on a shadow run, evaluated leave-one-model-out, their calibration
against a null, and their metrics.

Every attack scores pool sample i against a *target* model t, using the other models of the run as
reference (shadow) models, whose inclusion masks are known. Higher score = "member". Evaluated
over several targets, the scores of all (target, sample) pairs are pooled into one ROC curve, as in
Carlini et al. (2022).

- ``loss``: the negative loss of the target on the sample (Yeom et al. 2018), no reference models.
- ``correct``: 1 if the target classifies the sample correctly, else 0 (the trivial baseline
  "correctly classified => member"); it has one threshold, so its ROC is two segments.
- ``lira_online`` / ``lira_offline`` (and ``*_fixed``): LiRA (Carlini et al. 2022). The statistic
  is the logit-scaled confidence ``phi = log p_y - log sum_{j != y} p_j`` per query view (identity,
  mirror). Online: Gaussians fitted to phi of the reference models that trained on the sample (IN)
  and that did not (OUT); score = log N(phi_t; IN) - log N(phi_t; OUT). Offline: OUT only; score
  = the one-sided ``log Phi((phi_t - mu_out) / sigma_out)`` of the paper. Views are averaged after
  the per-view score, as the reference code does. Before fitting, each sample's IN and OUT
  references are trimmed to equal counts (:class:`LiraOptions`); every departure from the
  reference code ``plot.py`` is an option, and ``lira="reference"`` reproduces it exactly.
- ``rmia`` (offline) / ``rmia_online``: RMIA (Zarifzadeh et al. 2024). ``p(x|theta)`` is the
  target's probability of the true label (mean over views); ``p(x)`` its mean over the reference
  models (online: IN and OUT, trimmed to equal counts; offline: OUT only, corrected by
  ``p(x) = ((1 + a) p_out(x) + (1 - a)) / 2``, the same correction for ``p(z)``). The score of x
  is the fraction of population samples z (the test split: no model of the run trained on it)
  with ``[p(x|theta) / p(x)] / [p(z|theta) / p(z)] > gamma``, ties broken by that ratio itself.

:func:`calibrate` scores a run with fresh random balanced masks (no membership signal left) and
gives each attack's null AUC and TPR at its own model count. A TPR at FPR f is only read where the
pool holds at least ``10 / f`` non-member pairs (:func:`resolvable`); elsewhere it is NaN and the
book says "not resolvable with n non-members".
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import torch

from .checks import check_whole
from .scores import correct, lira_score, losses

ATTACKS = ("loss", "correct", "lira_online", "lira_offline", "lira_online_fixed", "lira_offline_fixed", "rmia",
           "rmia_online")
# The names the book prints, for the attacks its chapters show.
ATTACK_NAMES = {"lira_online": "LiRA online", "lira_offline": "LiRA offline",
                "lira_online_fixed": "LiRA online, fixed variance", "lira_offline_fixed": "LiRA offline, fixed variance",
                "rmia": "RMIA offline", "rmia_online": "RMIA online", "loss": "LOSS",
                "correct": "correct ⇒ member"}
# Baselines that stand in every attack table: a strong attack that does not beat them shows nothing.
BASELINES = ("loss", "correct")


@dataclasses.dataclass
class AttackInput:
    """What every attack reads: signals of N models on P pool samples and T population samples.

    ``logits [N, Q, P, K]``, ``labels [P]``, ``masks [N, P]`` bool; ``population_logits
    [N, Q, T, K]`` and ``population_labels [T]`` (for RMIA).

    The per-sample statistics (LiRA's phi, RMIA's probabilities) and the prefix sums over each
    side's models are computed once per input and reused by every attack that reads them; the
    cache is keyed by the tensors' identity and version, so replacing or changing a tensor in
    place recomputes them.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    population_logits: torch.Tensor | None = None
    population_labels: torch.Tensor | None = None
    _cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def cached(self, name: str, compute, *tensors):
        """``compute()``, remembered under ``name`` and the identity and version of ``tensors``."""
        key = (name, *((id(t), t._version) for t in tensors))
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def phi(self) -> torch.Tensor:
        """LiRA's statistic of every model on every pool sample ``[N, Q, P]`` (float64)."""
        return self.cached("phi", lambda: logit_confidence(self.logits, self.labels), self.logits, self.labels)

    def probabilities(self) -> tuple[torch.Tensor, torch.Tensor]:
        """RMIA's ``p(x|model) [N, P]`` and ``p(z|model) [N, T]`` (label probability, mean over views)."""
        return self.cached("p", lambda: (true_class_probability(self.logits, self.labels),
                                         true_class_probability(self.population_logits, self.population_labels)),
                           self.logits, self.labels, self.population_logits, self.population_labels)

    def baseline(self, attack: str) -> torch.Tensor:
        """A baseline's scores ``[N, P]`` of every model: ``loss`` (minus the loss of the identity
        view) or ``correct`` (1 if classified correctly)."""
        if attack == "loss":
            return self.cached("loss", lambda: negative_loss(self.logits, self.labels), self.logits, self.labels)
        return self.cached("correct", lambda: correct(self.logits[:, 0], self.labels).double(), self.logits, self.labels)

    def with_masks(self, masks: torch.Tensor) -> "AttackInput":
        """The same signals with other masks (a null), sharing the mask-free statistics."""
        other = dataclasses.replace(self, masks=masks)
        other._cache = {k: v for k, v in self._cache.items() if k[0] in ("phi", "p", "loss", "correct")}
        return other

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
    if logits.ndim < 3:
        return lira_score(logits.double(), labels)
    # A few models at a time: the float64 copy of every logit at once costs more than the arithmetic.
    return torch.cat([lira_score(chunk.double(), labels) for chunk in logits.split(8)])


def true_class_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the label, averaged over query views: ``[N, Q, S, K] -> [N, S]``."""
    probs = logits.double().softmax(-1)
    index = labels.view(1, 1, -1, 1).expand(*probs.shape[:-1], 1)
    return probs.gather(-1, index).squeeze(-1).mean(1)


def negative_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``-cross-entropy`` of the identity view: ``[N, Q, S, K] -> [N, S]``."""
    return -losses(logits[:, 0].double(), labels)


# --- attacks --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LiraOptions:
    """How LiRA fits its Gaussians: every point where the reference code and the paper (or this
    book's default) differ is an option, so a departure is named and its effect measurable.

    - ``trim``: equalise the IN and OUT reference counts. ``"per_sample"`` (default) keeps, for
      each sample, the first ``min(#IN, #OUT)`` references of each side in model order;
      ``"global"`` keeps the first ``min over samples`` of each side (``plot.py``); ``"none"``
      keeps every reference. Leaving the target out removes a reference from the target's own
      side only, so without trimming the side sizes depend on membership and online LiRA reads
      below chance at 8-16 models (null AUC 0.41-0.43 at 8).
    - ``location``: ``"mean"`` (the Gaussian maximum-likelihood fit, the paper) or ``"median"``
      (``plot.py``).
    - ``variance``: ``"per_example"``; ``"pooled"`` (the mean over samples of the per-example
      variances, per query view: this book's fixed variance); ``"global"`` (``plot.py``'s fixed
      variance: one standard deviation of all IN statistics, samples and views together, used
      for IN and OUT online; of all OUT statistics offline). Only the ``*_fixed`` attacks read it
      (the others are per-example).
    - ``offline_test``: ``"one_sided"`` (the paper: ``log Phi((phi - mu_out) / sigma_out)``, larger
      phi is more member-like) or ``"two_sided"`` (``plot.py``: minus the OUT log-density, so a
      statistic far from the OUT fit on either side reads as member).
    - ``ddof``: 1 (unbiased variance, default) or 0 (``np.std``, ``plot.py``).
    - ``epsilon``: ``"clamp"`` (variance at least 1e-12, default) or ``"reference"`` (``std +
      1e-30`` as ``plot.py``).
    """

    trim: str = "per_sample"
    location: str = "mean"
    variance: str = "pooled"
    offline_test: str = "one_sided"
    ddof: int = 1
    epsilon: str = "clamp"

    def __post_init__(self):
        for name, allowed in LIRA_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"LiraOptions {name}={getattr(self, name)!r} is not allowed; allowed values: "
                                 f"{', '.join(map(repr, allowed))}")


LIRA_CHOICES = {"trim": ("per_sample", "global", "none"), "location": ("mean", "median"),
                "variance": ("pooled", "global"), "offline_test": ("one_sided", "two_sided"),
                "ddof": (0, 1), "epsilon": ("clamp", "reference")}
# The book's LiRA (the paper's equations, IN and OUT trimmed per sample).
LIRA_DEFAULT = LiraOptions()
# tensorflow/privacy research/mi_lira_2021/plot.py (generate_ours, generate_ours_offline), exactly.
LIRA_REFERENCE = LiraOptions(trim="global", location="median", variance="global", offline_test="two_sided",
                             ddof=0, epsilon="reference")
# RMIA's defaults: the RMIA authors' CIFAR-10 configuration (their research code's attack_configs);
# see rmia_defaults().
RMIA_A = 0.3
RMIA_GAMMA = 2.0


def attack_scores(data: AttackInput, attack: str, targets, *, rmia_a: float = RMIA_A,
                  rmia_gamma: float = RMIA_GAMMA, references=None, strict: bool = True,
                  lira: LiraOptions | str = "default") -> torch.Tensor:
    """Membership scores ``[len(targets), P]`` of ``attack`` for each target model (higher =
    member).

    ``references`` restricts the reference models (default: every model but the target).
    ``lira`` is a :class:`LiraOptions` or a preset name (``"default"``, ``"reference"`` for the
    LiRA reference code's ``plot.py``). Raises ``ValueError`` for an unknown attack or option, a
    target outside the run, or (with ``strict``) a sample with too few IN/OUT reference models
    after trimming (naming how many samples and how many models it needs); ``strict=False``
    scores such samples NaN instead, and ``evaluate`` leaves them out.
    """
    targets = _check_targets(targets, data.n_models)
    if attack not in ATTACKS:
        raise ValueError(f"attack={attack!r} is not allowed; allowed values: {', '.join(ATTACKS)}")
    if attack in BASELINES:
        return data.baseline(attack)[targets]
    if attack.startswith("lira"):
        return _lira(data, targets, online="online" in attack, fixed="fixed" in attack,
                     options=lira_options(lira), references=references, strict=strict)
    _check_rmia(rmia_a, rmia_gamma)
    return _rmia(data, targets, rmia_a, rmia_gamma, references, online=attack == "rmia_online", strict=strict)


def lira_options(lira: LiraOptions | str) -> LiraOptions:
    """A :class:`LiraOptions` from itself or a preset name (``default``, ``reference``)."""
    if isinstance(lira, LiraOptions):
        return lira
    presets = {"default": LIRA_DEFAULT, "reference": LIRA_REFERENCE}
    if lira not in presets:
        raise ValueError(f"lira={lira!r} is not allowed; allowed values: a LiraOptions, or one of {', '.join(presets)}")
    return presets[lira]


def _check_rmia(a, gamma) -> None:
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a <= 1:
        raise ValueError(f"rmia_a={a!r} is not allowed; allowed values: a number in [0, 1] (the RMIA paper's "
                         f"CIFAR-10 default is {RMIA_A})")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0 or not math.isfinite(gamma):
        raise ValueError(f"rmia_gamma={gamma!r} is not allowed; allowed values: a number > 0 (default {RMIA_GAMMA})")


def _check_targets(targets, n_models: int) -> list[int]:
    targets = [int(t) for t in (targets if hasattr(targets, "__iter__") else [targets])]
    bad = [t for t in targets if not 0 <= t < n_models]
    if not targets or bad:
        raise ValueError(f"target model(s) {bad or targets} outside the run; allowed values: "
                         f"indices in [0, {n_models})")
    return targets


def _reference_models(n_models: int, target: int, references) -> torch.Tensor:
    """``[N]`` bool: the reference models of ``target`` (``references``, or all), never the target."""
    chosen = torch.zeros(n_models, dtype=torch.bool)
    chosen[list(range(n_models)) if references is None else [int(r) for r in references]] = True
    chosen[target] = False
    return chosen


def reference_sides(masks: torch.Tensor, target: int, references=None, trim: str = "per_sample"):
    """The IN and OUT reference models of every sample for ``target``, ``([N, P], [N, P])`` bool,
    trimmed to equal counts as ``trim`` says (see :class:`LiraOptions`): the first references of
    each side in model order are kept, so the choice is deterministic."""
    chosen = _reference_models(masks.shape[0], target, references).unsqueeze(1)
    sides = [masks & chosen, ~masks & chosen]
    keep = _kept_counts(*(side.sum(0) for side in sides), trim)
    return tuple(side & (side.long().cumsum(0) <= k) for side, k in zip(sides, keep))


def _kept_counts(count_in: torch.Tensor, count_out: torch.Tensor, trim: str):
    """How many references of each side ``trim`` keeps, per sample ``([P], [P])``."""
    if trim == "per_sample":
        both = torch.minimum(count_in, count_out)
        return both, both
    if trim == "global":  # plot.py: one count per side, the smallest over samples
        return count_in.min().expand_as(count_in), count_out.min().expand_as(count_out)
    return count_in, count_out


class TrimmedSums:
    """Count, sum and sum of squares of ``values [N, Q, P]`` over each sample's trimmed IN and OUT
    reference models, for any target.

    Each side's values are accumulated once in model order (prefix sums over the side's models),
    so that "the first k references of a side, the target left out" is one lookup per target:
    O(N) work per target instead of O(N^2) for all of them. ``references`` other than "every
    model" fall back to explicit masks (:func:`reference_sides`).
    """

    def __init__(self, values: torch.Tensor, masks: torch.Tensor, trim: str, references=None):
        self.values, self.masks, self.trim, self.references = values, masks, trim, references
        if references is None:
            self.prefix = {side: self._prefix(values, m) for side, m in (("in", masks), ("out", ~masks))}

    @staticmethod
    def _prefix(values: torch.Tensor, side: torch.Tensor) -> dict:
        order = torch.argsort((~side).to(torch.int8), dim=0, stable=True)  # the side's models first, in order
        ordered = values.gather(0, order.unsqueeze(1).expand_as(values)) * side.gather(0, order).unsqueeze(1)
        zero = torch.zeros_like(values[:1])
        return {"total": torch.cat([zero, ordered.cumsum(0)]), "squares": torch.cat([zero, (ordered ** 2).cumsum(0)]),
                "count": side.sum(0), "rank": side.long().cumsum(0) - 1}

    def for_target(self, target: int) -> dict:
        """``{side: (count [P], total [Q, P], squares [Q, P])}`` for ``target``'s references."""
        if self.references is not None:
            sides = reference_sides(self.masks, target, self.references, self.trim)
            return {name: _masked_moments(self.values, chosen) for name, chosen in zip(("in", "out"), sides)}
        own = self.masks[target]
        available = {"in": self.prefix["in"]["count"] - own.long(), "out": self.prefix["out"]["count"] - (~own).long()}
        kept = dict(zip(("in", "out"), _kept_counts(available["in"], available["out"], self.trim)))
        x = self.values[target]
        out = {}
        for name, on_side in (("in", own), ("out", ~own)):
            prefix, k = self.prefix[name], kept[name]
            # The target sits among the first k of its side: take one more and remove it.
            skip = on_side & (prefix["rank"][target] < k)
            index = (k + skip.long()).view(1, 1, -1).expand(1, x.shape[0], -1)
            total = prefix["total"].gather(0, index)[0] - skip * x
            squares = prefix["squares"].gather(0, index)[0] - skip * x * x
            out[name] = (k.double(), total, squares)
        return out


def _trimmed_sums(data: AttackInput, name: str, values: torch.Tensor, trim: str, references) -> TrimmedSums:
    """The input's :class:`TrimmedSums` of ``values``, built once per statistic, trim and masks."""
    if references is not None:  # a per-call subset: nothing worth keeping
        return TrimmedSums(values, data.masks, trim, references)
    return data.cached(f"sums:{name}:{trim}", lambda: TrimmedSums(values, data.masks, trim), data.masks, values)


def _masked_moments(values: torch.Tensor, chosen: torch.Tensor):
    weights = chosen.double().unsqueeze(1)
    return chosen.sum(0).double(), (weights * values).sum(0), (weights * values * values).sum(0)


def _lira(data: AttackInput, targets: list[int], *, online: bool, fixed: bool, options: LiraOptions,
          references=None, strict: bool = True) -> torch.Tensor:
    """Gaussian likelihood-ratio scores from the per-view statistics ``phi [N, Q, P]``."""
    phi, masks = data.phi(), data.masks
    sums = _trimmed_sums(data, "phi", phi, options.trim, references)
    sides = ("in", "out") if online else ("out",)
    out = []
    for target in targets:
        moments = sums.for_target(target)
        if strict:
            for side in sides:
                _require(moments[side][0], 2, side.upper(), target, masks.shape[0])
        if options.location == "median":  # the reference code's fit, from the chosen models (two passes)
            chosen = dict(zip(("in", "out"), reference_sides(masks, target, references, options.trim)))
            fits = {side: _fit_explicit(phi, chosen[side], options) for side in sides}
        else:
            fits = {side: _fit(*moments[side], options) for side in sides}
        if fixed:
            fits = _fixed_variance(fits, moments, "in" if online else "out", options)
        x = phi[target]
        if online:
            score = _normal_logpdf(x, *fits["in"]) - _normal_logpdf(x, *fits["out"])
        elif options.offline_test == "one_sided":
            mean, var = fits["out"]
            score = torch.special.log_ndtr((x - mean) / var.sqrt())
        else:
            score = -_normal_logpdf(x, *fits["out"])
        out.append(score.mean(0))
    return torch.stack(out)


def _fit(count: torch.Tensor, total: torch.Tensor, squares: torch.Tensor, options: LiraOptions):
    """Mean and variance ``([Q, P], [Q, P])`` from moments; NaN where fewer than 2 models."""
    count = torch.where(count >= 2, count, torch.nan)
    mean = total / count
    var = (squares - count * mean ** 2) / (count - options.ddof)
    return mean, _regularised(var, options)


def _fit_explicit(phi: torch.Tensor, chosen: torch.Tensor, options: LiraOptions):
    """Median and variance about the mean over the ``chosen [N, P]`` models, as ``np.median`` and
    ``np.std`` compute them (two passes, so that the reference preset matches plot.py to 1e-9)."""
    weights = chosen.double().unsqueeze(1)
    count = torch.where(chosen.sum(0) >= 2, chosen.sum(0).double(), torch.nan)
    mean = (weights * phi).sum(0) / count
    var = (weights * (phi - mean) ** 2).sum(0) / (count - options.ddof)
    return _masked_median(phi, chosen), _regularised(var, options)


def _regularised(var: torch.Tensor, options: LiraOptions) -> torch.Tensor:
    if options.epsilon == "reference":
        return (var.clamp_min(0).sqrt() + 1e-30) ** 2  # plot.py adds 1e-30 to the standard deviation
    return var.clamp_min(1e-12)


def _masked_median(phi: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """``np.median`` over the chosen models (the mean of the two middle values for an even count)."""
    values = torch.where(chosen.unsqueeze(1), phi, torch.inf).sort(0).values  # unchosen sort last
    count = chosen.sum(0).expand(phi.shape[1], -1)  # [Q, P]
    low = ((count - 1).clamp_min(0) // 2).unsqueeze(0)
    high = (count // 2).clamp_max(phi.shape[0] - 1).unsqueeze(0)
    median = 0.5 * (values.gather(0, low) + values.gather(0, high)).squeeze(0)
    return torch.where(count >= 2, median, torch.nan)


def _fixed_variance(fits: dict, moments: dict, source: str, options: LiraOptions) -> dict:
    """One variance for every sample: the pooled per-example variances per view, or plot.py's
    global variance of every trimmed ``source``-side statistic (samples and views together; IN
    online, used for both sides, OUT offline)."""
    if options.variance == "pooled":
        return {side: (location, var.nanmean(-1, keepdim=True).expand_as(var)) for side, (location, var) in fits.items()}
    count, total, squares = moments[source]
    n = count.sum() * total.shape[0]
    mean = total.sum() / n
    var = _regularised(((squares.sum() - n * mean ** 2) / (n - options.ddof)).expand_as(total), options)
    return {side: (location, var) for side, (location, _) in fits.items()}


def _require(count: torch.Tensor, minimum: int, side: str, target: int, n_models: int) -> None:
    short = torch.nonzero(count < minimum).flatten()
    if len(short):
        shown = ", ".join(str(int(i)) for i in short[:8]) + (", ..." if len(short) > 8 else "")
        raise ValueError(
            f"{len(short)} sample(s) (pool indices {shown}) have fewer than {minimum} {side} reference models "
            f"for target model {target} after trimming IN and OUT to equal counts; the attack needs at least "
            f"{minimum} IN and {minimum} OUT models per sample, so at least {2 * minimum + 2} models with balanced "
            f"masks (this run has {n_models}). Train more shadow models (n_models), or pass strict=False to leave "
            "those samples unscored.")


def _normal_logpdf(x, mean, var):
    return -0.5 * (torch.log(2 * math.pi * var) + (x - mean) ** 2 / var)


def rmia_defaults() -> dict:
    """RMIA's ``a`` and ``gamma`` with where they come from."""
    return {"a": RMIA_A, "gamma": RMIA_GAMMA,
            "source": "the RMIA authors' CIFAR-10 configuration (Zarifzadeh et al. 2024; research/2024_rmia/"
                      "attack_configs in privacytrustlab/ml_privacy_meter, commit d3273416); the current "
                      "ml_privacy_meter instead tunes a on a reference model and compares with gamma = 1"}


def _rmia(data: AttackInput, targets: list[int], a: float, gamma: float, references, *, online: bool,
          strict: bool) -> torch.Tensor:
    """RMIA scores: the fraction of population samples z with ``LR(x, z) > gamma``, ties broken by
    the likelihood ratio itself (see :func:`rmia_fraction`).

    Departures from the authors' code, each a choice for this book: the signal is the softmax
    probability of the label averaged over query views (the current ml_privacy_meter; the paper's
    code uses a Taylor soft-margin with temperature 2 and a majority vote over 18 augmentations);
    ``p(x)`` is a plain mean over the references (the paper's code: a 20%-trimmed mean); the
    population is the test split (the current ml_privacy_meter; the paper's code: the target's
    non-members in the pool); a strict ``>`` as both codes.
    """
    if data.population_logits is None:
        raise ValueError("RMIA needs population samples (population_logits): samples no model of the run "
                         "trained on; use AttackInput.from_run (the test split)")
    p_x, p_z = data.probabilities()  # [N, P], [N, T]
    sums = _trimmed_sums(data, "p_x", p_x.unsqueeze(1), "per_sample", references)
    out = []
    for target in targets:
        moments = sums.for_target(target)
        prior_z = p_z[_reference_models(data.n_models, target, references)].mean(0)
        if online:  # IN and OUT references alike, trimmed to equal counts: p(x) is their mean
            if strict:
                _require(moments["in"][0], 1, "IN", target, data.n_models)
            count, total = (moments["in"][i] + moments["out"][i] for i in (0, 1))
            prior_x = total[0] / count
        else:  # OUT references only, with the paper's linear correction towards p(x) as if IN
            count, total, _ = moments["out"]
            if strict:
                _require(count, 1, "OUT", target, data.n_models)
            prior_x, prior_z = _offline_prior(total[0] / count, a), _offline_prior(prior_z, a)
        out.append(rmia_fraction(p_x[target] / prior_x, p_z[target] / prior_z, gamma))
    return torch.stack(out)


def _offline_prior(p_out: torch.Tensor, a: float) -> torch.Tensor:
    """RMIA offline: ``p(x) = ((1 + a) p_OUT(x) + (1 - a)) / 2``."""
    return 0.5 * ((1 + a) * p_out + (1 - a))


def rmia_fraction(ratio_x: torch.Tensor, ratio_z: torch.Tensor, gamma: float) -> torch.Tensor:
    """RMIA's score of each x: the fraction of population samples z with
    ``ratio_x / ratio_z > gamma``, plus a tie-break below one population step.

    With T population samples the fraction takes T + 1 values, so many samples tie (at 1.0 when
    their ratio beats every z) and a ROC threshold cannot split them: low-FPR rates would be
    decided by ties. The tie-break adds ``(1/2 + atan(d) / pi) / T``, where ``d`` is the log of x's
    pairwise likelihood ratio against the population's geometric-mean ratio, divided by gamma:
    it lies in (0, 1/T), so it orders samples inside one fraction and never across two.
    """
    log_z = torch.log(ratio_z)
    sorted_z = torch.sort(log_z).values
    threshold = torch.log(ratio_x) - math.log(gamma)
    below = torch.searchsorted(sorted_z, threshold, right=False)  # z with log ratio_z < threshold
    tie_break = 0.5 + torch.atan(threshold - log_z.mean()) / math.pi
    return (below.double() + tie_break) / len(sorted_z)


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


# A TPR at FPR f is read from the f * n most member-like non-members; with fewer than this many of
# them the rate is decided by a handful of pairs (at 0.1% FPR and 1,000 non-members, by one).
MIN_FALSE_POSITIVES = 10


def min_nonmembers(level: float) -> int:
    """The fewest pooled non-member pairs that resolve a TPR at FPR ``level``: ``10 / level``."""
    _check_fpr(level)
    return math.ceil(MIN_FALSE_POSITIVES / level - 1e-9)


def resolvable(level: float, nonmembers: int) -> bool:
    """Whether ``nonmembers`` pooled non-member pairs resolve a TPR at FPR ``level``."""
    return int(nonmembers) >= min_nonmembers(level)


def _check_fpr(level) -> None:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"target FPR {level!r} is not allowed; allowed values: a number in (0, 1)")


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target_fpr: float, *, nonmembers: int | None = None,
               inclusive: bool = True) -> float:
    """The highest TPR among thresholds whose FPR is at most ``target_fpr`` (``inclusive``; the
    reference ``plot.py`` reads FPR strictly below it: ``inclusive=False``).

    With ``nonmembers`` (the pooled non-member count), a rate the pool cannot resolve raises
    ``ValueError`` saying how many non-members it needs.
    """
    _check_fpr(target_fpr)
    if nonmembers is not None and not resolvable(target_fpr, nonmembers):
        raise ValueError(f"TPR at {target_fpr:g} FPR is not resolvable with {nonmembers} non-member pairs: it needs "
                         f"at least {min_nonmembers(target_fpr)} (10 / FPR); pool more targets or samples, or "
                         "report a higher FPR")
    chosen = fpr <= target_fpr if inclusive else fpr < target_fpr
    return float(tpr[chosen].max())


def summarize(scores, members, fprs=(0.001, 0.01), *, inclusive: bool = True) -> dict:
    """AUC, balanced accuracy (best threshold) and TPR at each FPR in ``fprs``; a TPR the pool's
    non-members cannot resolve (:func:`resolvable`) is NaN, never a number that reads as zero."""
    fpr, tpr = roc(scores, members)
    nonmembers = int((~np.asarray(members, dtype=bool)).sum())
    out = {"auc": float(np.trapezoid(tpr, fpr)), "balanced_acc": float(np.max(1 - (fpr + 1 - tpr) / 2))}
    for level in fprs:
        _check_fpr(level)
        out[f"tpr@{level:g}"] = (tpr_at_fpr(fpr, tpr, level, inclusive=inclusive) if resolvable(level, nonmembers)
                                 else math.nan)
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
        lo, hi = (math.nan, math.nan) if math.isnan(value) else np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
        result[name] = value
        result[f"{name}_lo"] = float(lo)
        result[f"{name}_hi"] = float(hi)
    result["pairs"] = len(scores)
    result["nonmembers"] = int((~members).sum())
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


# --- calibration ----------------------------------------------------------------------------------

# Shuffles draw from a stream apart from the masks' own: ``balanced_masks(seed=s)`` ranks the same
# uniform numbers that a permutation seeded with s sorts, so a shuffle with the run's own seed put
# every sample IN for the same half of the models (a null AUC of 0.64 was measured). torch seeds
# its generator from the low 32 bits, so the offset must change those.
NULL_STREAM = 0x9E3779B9


def shuffled_masks(masks: torch.Tensor, seed: int) -> torch.Tensor:
    """Fresh random masks with each sample's IN count kept (balanced masks stay balanced): each
    sample's column is permuted across models, so membership no longer matches the logits."""
    generator = torch.Generator().manual_seed(NULL_STREAM + seed)
    order = torch.rand(masks.shape, generator=generator).argsort(0)
    return masks.gather(0, order)


def calibrate(data: AttackInput, attacks, targets, *, draws: int = 4, seed: int = 0, fprs=(0.001, 0.01),
              select: torch.Tensor | None = None, **options) -> pd.DataFrame:
    """Each attack's null: the run scored ``draws`` times with :func:`shuffled_masks` in place of
    its masks, at the run's own model count and pool. One row per (attack, draw): AUC, TPR at each
    FPR in ``fprs`` (NaN where not resolvable) and the pooled member and non-member counts.
    ``select`` (``[P]`` bool, optional) reads the null on those pool samples alone (the masks are
    still shuffled over the whole pool). ``options`` go to :func:`attack_scores` (e.g. ``lira``,
    ``rmia_a``)."""
    check_whole("draws", draws)
    targets = _check_targets(targets, data.n_models)
    if select is not None and (select.dtype != torch.bool or select.shape != data.labels.shape or not select.any()):
        raise ValueError(f"select must be a non-empty [P] bool mask of the {data.labels.shape[0]} pool samples")
    rows = []
    for draw in range(draws):
        masks = shuffled_masks(data.masks, seed=seed + draw)
        null = data.with_masks(masks)
        for attack in attacks:
            scores = attack_scores(null, attack, targets, strict=False, **options)
            members = masks[targets]
            if select is not None:
                scores, members = scores[:, select], members[:, select]
            scored = torch.isfinite(scores)
            metrics = summarize(scores[scored].numpy(), members[scored].numpy(), fprs)
            rows.append({"attack": attack, "draw": draw, **metrics, "members": int(members[scored].sum()),
                         "nonmembers": int((~members[scored]).sum())})
    return pd.DataFrame(rows)


def null_summary(calibration: pd.DataFrame) -> pd.DataFrame:
    """Per attack: mean and standard deviation over draws of every null metric."""
    metrics = [c for c in calibration.columns if c == "auc" or c.startswith("tpr@")]
    grouped = calibration.groupby("attack", sort=False)[metrics]
    return grouped.mean().join(grouped.std(ddof=1).add_suffix("_sd")).join(
        calibration.groupby("attack", sort=False)[["members", "nonmembers"]].mean())


# The order in which the book prefers an attack for its headline rows: the strongest first, LOSS
# (no reference models, so calibrated at any model count) last.
HEADLINE_PREFERENCE = ("lira_online", "rmia_online", "lira_offline", "rmia", "loss")
NULL_AUC_TOLERANCE = 0.01


def is_calibrated(null: pd.Series, level: float = 0.01, tolerance: float = NULL_AUC_TOLERANCE) -> bool:
    """Whether one attack's null (a row of :func:`null_summary`) reads chance: mean null AUC within
    ``0.5 ± tolerance`` and mean null TPR at FPR ``level`` within ``tolerance / 2`` plus three
    binomial standard deviations (over the pooled member pairs) of ``level``."""
    tpr = null.get(f"tpr@{level:g}", math.nan)
    noise = 3 * math.sqrt(level * (1 - level) / max(float(null["members"]), 1.0))
    auc_ok = abs(float(null["auc"]) - 0.5) <= tolerance
    return bool(auc_ok and (math.isnan(tpr) or abs(tpr - level) <= tolerance / 2 + noise))


def headline_attack(null: pd.DataFrame, preference=HEADLINE_PREFERENCE) -> str:
    """The headline attack: the first of ``preference`` whose null (:func:`null_summary`, at the
    run's model count) :func:`is_calibrated`. Raises ``ValueError`` if none of them is."""
    for attack in preference:
        if attack in null.index and is_calibrated(null.loc[attack]):
            return attack
    raise ValueError(f"none of the attacks {list(preference)} reads chance on its null at this model count "
                     f"(null AUC: {null['auc'].round(3).to_dict()}); train more shadow models per run")

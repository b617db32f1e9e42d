"""Chapter 6's steps: what GroupNorm alone, and GroupNorm trained with DP-SGD, do to BN's privacy risk.

The chapter trains shadow runs of BN and GroupNorm without DP and of GroupNorm with DP-SGD at
several budgets (and at ε = ∞: the DP recipe without noise), all on the same data, architecture,
epochs and inclusion masks. The steps, in the order the chapter calls them:

:func:`prepare` (specs and data, checked before anything trains) → :func:`train` (runs, attack
scores, privacy accounting) → :func:`summarize` (utility, attack success, memorization per setting)
→ :func:`attack_variants` (every attack's AUC) → :func:`effects` (each change with its interval,
guarded by ``protocol.comparisons.guard``) → :func:`headline_rows` (for the verdict) → :func:`audit` (empirical
ε against the accountant's).

Every comparison is guarded: BN against GroupNorm ("equal epochs") is evidence only when both sides
fit their IN samples; against a DP-SGD model ("mitigation") the DP side must only train (above
``chance_factor`` times chance), because DP-SGD is built not to fit. A comparison that fails its
guard reads "not comparable: <reason>" and is never evidence either way.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pandas as pd

from ..protocol.comparisons import Comparison, guard, side
from ..protocol.measures import percent_pair, read_comparison
from ..attacks import ATTACK_NAMES, AttackInput, attack_scores, compare, evaluate, min_nonmembers, resolvable
from ..config import Config
from ..data import load_dataset
from ..ensemble import check_masks
from ..headlines import headline_row
from ..memorization import bootstrap_memorization, group_memorization
from ..privacy.accounting import ACCOUNTANTS, check_epsilon, check_max_grad_norm, empirical_epsilon
from ..privacy.training import DPRunSpec, dp_shadow_run, planned_noise, run_privacy
from ..progress import TrainingClock
from ..reading import NOT_RESOLVABLE, fmt_interval, fmt_rate, not_comparable
from ..runs.shadow import planned_run, shadow_run
from ..runs.spec import RunSpec
from ..stats import paired_difference, percentile_interval
from ..training import describe_hardware, resolve_device
from .family_steps import as_list

BN, GN = "BN, no DP", "GN, no DP"
# The chapter parameters that make its training smaller, named when an estimate exceeds an hour.
MITIGATION_SHRINK = "n_models, epochs, train_size or the epsilons (fewer budgets)"
# Words for a change "before → after": risks are read as before − after, accuracy as after − before.
RISK_WORDS = ("less risk after the change", "more risk after the change")
ACCURACY_WORDS = ("accuracy gain", "accuracy loss")
# Words for a headline row, BN − reference.
HEADLINE_WORDS = {"auc": ("BN models are more vulnerable", "BN models are less vulnerable"),
                  "canary mem": ("BN memorizes canaries more", "BN memorizes canaries less")}
HEADLINE_INTERVAL = ("95% percentile bootstrap interval (attack: target-sample pairs; memorization: models), "
                     "tested as normal (df = inf)")
# Equivalence margins (the measure's units) with their reasons, stated in chapter 6: the largest
# change that counts as no change.
MARGINS = {"auc": (0.01, "an AUC change below 0.01 is within the spread of the attack's null at these pool sizes"),
           "tpr": (0.005, "half a percentage point of TPR at 1% FPR, half the FPR itself"),
           "canary_mem": (0.05, "one canary in twenty memorized more or less"),
           "accuracy": (0.01, "one point of test accuracy")}


def dp_label(epsilon: float) -> str:
    """The name of the GroupNorm setting trained with DP-SGD at ``epsilon`` (∞: no noise)."""
    return "GN, DP-SGD ε=∞" if math.isinf(epsilon) else f"GN, DP-SGD ε={epsilon:g}"


# --- 1. the plan and its checked specs ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """The chapter's parameters: ``base`` fixes data, architecture, epochs and the non-private
    recipe; the DP recipe is ``dp_batch_size``, ``dp_lr``, ``max_grad_norm`` at each of
    ``epsilons`` (∞ is always added); ``fit_threshold`` and ``chance_factor`` are the guard's."""

    base: Config
    n_models: int
    epsilons: tuple[float, ...]
    delta: float = 0.0
    max_grad_norm: float = 1.0
    dp_batch_size: int = 128
    dp_lr: float = 0.2
    accountant: str = "rdp"
    max_physical_batch: int = 256
    attack: str = "lira_offline_fixed"
    confidence: float = 0.95
    n_boot: int = 200
    fit_threshold: float = 0.99
    chance_factor: float = 1.5

    def __post_init__(self):

        # Every parameter is checked here, in the chapter's first cell, not after minutes of training;
        # prepare() then checks what needs the data: masks, delta and each DP run's noise.
        if not isinstance(self.base, Config):
            raise ValueError(f"base={self.base!r} is not allowed; allowed values: a bnprivacy Config")
        object.__setattr__(self, "epsilons", tuple(as_list("epsilons", self.epsilons)))
        if not self.epsilons:
            raise ValueError("epsilons=[] is not allowed; allowed values: a non-empty list of numbers > 0")
        for epsilon in self.epsilons:
            check_epsilon(epsilon)
        object.__setattr__(self, "epsilons", tuple(float(e) for e in self.epsilons))
        if self.attack not in ATTACK_NAMES:
            raise ValueError(f"attack={self.attack!r} is not allowed; allowed values: {', '.join(ATTACK_NAMES)}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant={self.accountant!r} is not allowed; allowed values: {', '.join(ACCOUNTANTS)}")
        _check("n_models", self.n_models, "an even integer >= 2 (each sample IN for half of the models)",
               lambda v: v >= 2 and v % 2 == 0, int)
        _check("delta", self.delta, "a number in [0, 1): 0 for min(1e-5, 1/(10 n)), else below 1/n",
               lambda v: 0 <= v < 1)
        check_max_grad_norm(self.max_grad_norm)
        _check("dp_batch_size", self.dp_batch_size, "an integer >= 1 (the expected logical batch of DP-SGD)",
               lambda v: v >= 1, int)
        _check("dp_lr", self.dp_lr, "a finite number > 0, e.g. 0.2", lambda v: 0 < v < math.inf)
        _check("max_physical_batch", self.max_physical_batch, "an integer >= 1 (the largest batch in memory)",
               lambda v: v >= 1, int)
        _check("n_boot", self.n_boot, "an integer >= 1", lambda v: v >= 1, int)
        _check("confidence", self.confidence, "a number in (0, 1), e.g. 0.95", lambda v: 0 < v < 1)
        _check("fit_threshold", self.fit_threshold, "a number in (0, 1], e.g. 0.99", lambda v: 0 < v <= 1)
        _check("chance_factor", self.chance_factor, "a number >= 1, e.g. 1.5", lambda v: 1 <= v < math.inf)
        self.specs()  # and every setting's spec (its Config, masks' count, DP recipe) is valid

    @property
    def budgets(self) -> list[float]:
        """The finite budgets, largest (least private) first."""
        return sorted(set(self.epsilons), reverse=True)

    @property
    def dp_base(self) -> Config:
        """The DP recipe's Config: GroupNorm, the DP batch and learning rate."""
        return self.base.replace(norm="group", batch_size=self.dp_batch_size, lr=self.dp_lr)

    @property
    def attack_name(self) -> str:
        return ATTACK_NAMES[self.attack]

    def specs(self) -> dict:
        """Every setting's run spec, by label: BN, GN, then DP at ∞ and each budget."""
        specs = {BN: RunSpec(self.base.replace(norm="batch"), self.n_models, mask_seed=self.base.seed),
                 GN: RunSpec(self.base.replace(norm="group"), self.n_models, mask_seed=self.base.seed)}
        for epsilon in [math.inf] + self.budgets:
            specs[dp_label(epsilon)] = DPRunSpec(
                self.dp_base, self.n_models, epsilon, delta=self.delta, max_grad_norm=self.max_grad_norm,
                accountant=self.accountant, max_physical_batch=self.max_physical_batch, mask_seed=self.base.seed)
        return specs


def _check(name: str, value, allowed: str, ok, kind=(int, float)) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a ``kind`` (never a bool) for which
    ``ok(value)`` holds (NaN fails every range)."""
    if isinstance(value, bool) or not isinstance(value, kind) or not ok(value):
        raise ValueError(f"{name}={value!r} is not allowed; allowed values: {allowed}")


@dataclasses.dataclass
class Setup:
    """The plan's specs with the data they train on, the DP runs' resolved δ and, per DP setting,
    the noise every model will train with (``noise``: :func:`privacy.training.planned_noise` rows with a
    ``setting`` column)."""

    plan: Plan
    specs: dict
    data: object
    device: object
    delta: float
    is_canary: np.ndarray
    noise: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)

    @property
    def settings(self) -> list[str]:
        return list(self.specs)

    @property
    def dp_settings(self) -> list[str]:
        return [label for label in self.specs if label not in (BN, GN)]

    @property
    def targets(self) -> list[int]:
        """Every model is attacked in turn, the others serving as references."""
        return list(range(self.plan.n_models))


def prepare(plan: Plan) -> Setup:
    """Load the data and check every setting's masks, batch and δ, and find the noise multiplier
    of every DP model (cached for its training), so a bad parameter or an ε out of the
    accountant's reach fails before any training starts."""
    specs = plan.specs()
    device = resolve_device(plan.base)
    data = load_dataset(plan.base, device)
    pool = len(data.y_train)
    noise = []
    for label, spec in specs.items():
        masks = spec.masks(pool)
        check_masks(masks, pool, spec.config.batch_size)
        if label not in (BN, GN):
            noise.append(planned_noise(spec, masks).assign(setting=label))
    noise = pd.concat(noise, ignore_index=True)
    is_canary = np.array([k != "typical" for k in (data.kinds or ["typical"] * pool)])
    return Setup(plan, specs, data, device, float(noise["delta"].max()), is_canary, noise)


def overview(setup: Setup, profile: str) -> pd.DataFrame:
    """One row describing what the chapter ran: profile, data, pool, models, DP recipe, hardware."""
    plan, base = setup.plan, setup.plan.base
    return pd.DataFrame({
        "profile": [profile], "dataset": [base.dataset],
        "pool": [f"{len(setup.data.y_train)} samples ({int(setup.is_canary.sum())} canaries)"],
        "architecture": [base.arch], "shadow models per setting": [plan.n_models], "epochs": [base.epochs],
        "DP-SGD": [f"ε ∈ {plan.budgets} and ∞, δ={setup.delta:.1g}, clip {plan.max_grad_norm:g}, "
                   f"batch ≈{plan.dp_batch_size}, {plan.accountant} accountant"],
        "hardware": [describe_hardware(setup.device)]})


# --- 2. training ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Trained:
    """Every setting's shadow run, its attack scores ``[targets, pool]`` and, for DP, its accounting."""

    runs: dict
    scores: dict
    privacy: dict

    def accountant_epsilon(self, label: str) -> float:
        """The largest accountant ε over a setting's models; ∞ for a non-private setting."""
        return float(self.privacy[label]["epsilon"].max()) if label in self.privacy else math.inf


def train(setup: Setup, *, progress: bool = True) -> Trained:
    """Train (or load from the store) every setting and attack each model with the plan's attack."""
    from tqdm.auto import tqdm

    pool = len(setup.data.y_train)
    # DP-SGD trains several times slower per image (Opacus, one model at a time): its own kind.
    planned = {label: dataclasses.replace(planned_run(label, setup.specs[label], pool),
                                          kind="DP-SGD" if isinstance(setup.specs[label], DPRunSpec) else "")
               for label in setup.settings}
    planned = {label: run for label, run in planned.items() if run.models}
    clock = TrainingClock("settings of the mitigation", list(planned.values()),
                          loaded=len(setup.settings) - len(planned), shrink=MITIGATION_SHRINK)
    clock.start()
    runs = {}
    for label in tqdm(setup.settings, desc="settings", unit="setting", disable=not progress):
        spec = setup.specs[label]
        train_run = dp_shadow_run if isinstance(spec, DPRunSpec) else shadow_run
        started = time.perf_counter()
        runs[label] = train_run(spec, setup.data, progress=progress)
        if label in planned:
            clock.run_trained(planned[label], time.perf_counter() - started)
    scores = {label: attack_scores(AttackInput.from_run(run), setup.plan.attack, setup.targets)
              for label, run in runs.items()}
    privacy = {label: run_privacy(runs[label]) for label in setup.dp_settings}
    return Trained(runs, scores, privacy)


# --- 3. utility, attack success and memorization --------------------------------------------------

def _correct(run):
    """Whether each model classifies each pool sample right (identity query)."""
    return run.logits_pool[:, 0].argmax(-1) == run.y_pool


def canary_memorization(setup: Setup, run) -> pd.DataFrame:
    """Mean memorization of the canaries and of the typical samples, intervals over models."""
    groups = np.where(setup.is_canary, "canaries", "typical").tolist()
    return group_memorization(_correct(run), run.masks, groups, n_boot=setup.plan.n_boot, seed=setup.plan.base.seed)


def canary_memorization_draws(setup: Setup, run) -> np.ndarray:
    """Bootstrap draws (over models) of the canaries' mean memorization. The same seed for every
    run resamples the same model indices, so two runs' draws are paired by inclusion mask."""
    draws = bootstrap_memorization(_correct(run), run.masks, n_boot=setup.plan.n_boot, seed=setup.plan.base.seed)
    return np.nanmean(draws[:, setup.is_canary], 1)


def plot_x(epsilon: float, budgets: list[float]) -> float:
    """Where a budget sits on the privacy axis: ε itself, ∞ at twice the largest finite budget."""
    return 2 * max(budgets) if math.isinf(epsilon) else epsilon


@dataclasses.dataclass
class Summary:
    """One row per setting (``table``: numbers; ``shown``: formatted), and the numbers the prose
    quotes (``numbers``, keyed by their glue names)."""

    table: pd.DataFrame
    shown: pd.DataFrame
    numbers: dict


METRICS = ("auc", "tpr@0.01", "tpr@0.001")


def summarize(setup: Setup, trained: Trained) -> Summary:
    """Test accuracy, attack AUC and TPRs (bootstrap intervals over pairs) and canary/typical
    memorization (intervals over models) of every setting."""
    rows = [_summary_row(setup, trained, label) for label in setup.settings]
    table = pd.DataFrame(rows).set_index("setting")
    return Summary(table, _shown_summary(table, setup.plan.attack_name), _summary_numbers(setup, trained, table))


def _summary_row(setup: Setup, trained: Trained, label: str) -> dict:

    run = trained.runs[label]
    accuracy = run.final_accuracy()["test_acc"].to_numpy()
    result = evaluate(trained.scores[label], run.masks[setup.targets], n_boot=setup.plan.n_boot)
    memo = canary_memorization(setup, run)
    epsilon = setup.specs[label].epsilon if label in setup.dp_settings else math.nan
    return {"setting": label, "accountant ε": trained.accountant_epsilon(label),
            "x": plot_x(epsilon, setup.plan.budgets) if label in setup.dp_settings else math.nan,
            "test acc": accuracy.mean(), "test acc sd": accuracy.std(ddof=1), "pairs": result["pairs"],
            "nonmembers": result["nonmembers"],
            **{f"{m}{end}": result[f"{m}{end}"] for m in METRICS for end in ("", "_lo", "_hi")},
            "canary mem": memo.loc["canaries", "mem"], "canary mem lo": memo.loc["canaries", "lo"],
            "canary mem hi": memo.loc["canaries", "hi"], "typical mem": memo.loc["typical", "mem"]}


def _shown_summary(table: pd.DataFrame, attack_name: str) -> pd.DataFrame:
    def interval(column, scale=1.0, digits=3):
        return [fmt_interval(*row, digits=digits, scale=scale, signed=False)
                for row in table[[column, f"{column}_lo", f"{column}_hi"]].to_numpy()]

    shown = pd.DataFrame(index=table.index)
    shown["accountant ε"] = [f"{e:.2f}" if math.isfinite(e) else "∞" for e in table["accountant ε"]]
    shown["test acc %"] = [f"{m * 100:.1f} ± {s * 100:.1f}" for m, s in zip(table["test acc"], table["test acc sd"])]
    shown[f"{attack_name} AUC"] = interval("auc")
    for column, level in (("TPR@1% FPR (%)", 0.01), ("TPR@0.1% FPR (%)", 0.001)):
        name = f"tpr@{level:g}"
        shown[column] = [fmt_rate(v, lo, hi, nonmembers=n, level=level, scale=100, digits=2) for v, lo, hi, n in
                         table[[name, f"{name}_lo", f"{name}_hi", "nonmembers"]].to_numpy()]
    shown["canary mem."] = [fmt_interval(*row, signed=False) for row in
                            table[["canary mem", "canary mem lo", "canary mem hi"]].to_numpy()]
    shown["typical mem."] = [f"{v:.3f}" for v in table["typical mem"]]
    return shown


def _summary_numbers(setup: Setup, trained: Trained, table: pd.DataFrame) -> dict:
    budgets = setup.plan.budgets
    non_members = int((~trained.runs[GN].masks[setup.targets]).sum())
    numbers = {"pairs": int(table.loc[GN, "pairs"]), "n_models": setup.plan.n_models, "non_members": non_members,
               "fp_at_01": non_members * 0.001, "fpr_resolution": 100 / non_members,
               "needed_at_01": min_nonmembers(0.001),
               "tpr01_status": ("resolvable" if resolvable(0.001, non_members) else
                                f"not resolvable (it needs {min_nonmembers(0.001):,}), so the table says so"),
               "eps_lo": budgets[-1], "eps_hi": budgets[0]}
    keys = {"bn": BN, "gn": GN, "inf": dp_label(math.inf), "lo": dp_label(budgets[-1]), "hi": dp_label(budgets[0])}
    for key, label in keys.items():
        row = table.loc[label]
        numbers.update({f"acc_{key}": float(row["test acc"]) * 100, f"auc_{key}": float(row["auc"]),
                        f"tpr1_{key}": fmt_rate(float(row["tpr@0.01"]), math.nan, math.nan, nonmembers=non_members,
                                                level=0.01, scale=100, digits=1, unit="%"),
                        f"mem_{key}": float(row["canary mem"])})
    return numbers


# --- 4. which LiRA --------------------------------------------------------------------------------

@dataclasses.dataclass
class Variants:
    """Every attack's AUC per setting, and why the chapter attacks with its choice (``which_lira``)."""

    table: pd.DataFrame
    online: float
    offline: float
    which_lira: str


def attack_variants(setup: Setup, trained: Trained) -> Variants:
    """AUC of every attack on every setting; the smallest budget's online-vs-offline LiRA is the
    prose's example of why few shadow models call for the offline, fixed-variance variant."""

    def auc(run, attack):
        scores = attack_scores(AttackInput.from_run(run), attack, setup.targets)
        return evaluate(scores, run.masks[setup.targets], n_boot=0)["auc"]

    table = pd.DataFrame({label: {ATTACK_NAMES[a]: auc(run, a) for a in ATTACK_NAMES}
                          for label, run in trained.runs.items()}).T
    smallest = dp_label(setup.plan.budgets[-1])
    online = float(table.loc[smallest, "LiRA online"])
    offline = float(table.loc[smallest, "LiRA offline, fixed variance"])
    return Variants(table, online, offline, _which_lira(setup.plan, online, offline))


def _which_lira(plan: Plan, online: float, offline: float) -> str:
    n = plan.n_models
    return (f"With {n} shadow models, attacking each model with the others as references leaves "
            f"{n // 2 - 1} or {n // 2} IN and as many OUT references per sample, and which side has the "
            "extra model depends on the target's own membership; every LiRA here trims both sides to "
            f"{n // 2 - 1}, which keeps it calibrated at this count (chapter 4 checks the null). Each Gaussian is "
            f"still fitted to {n // 2 - 1} values: on the DP models at ε = {plan.budgets[-1]:g} online LiRA with "
            f"per-example variances reads AUC {online:.3f}, against {offline:.3f} offline with a fixed variance, "
            f"the variant Carlini et al. recommend for few shadow models. This chapter attacks with "
            f"{plan.attack_name}.")


# --- 5. effects of each change, guarded -----------------------------------------------------------

def effect_pairs(plan: Plan) -> dict[str, tuple[str, str]]:
    """The changes the chapter measures, ``name: (before, after)``."""
    budgets = plan.budgets
    pairs = {"GroupNorm alone (BN → GN)": (BN, GN),
             "DP recipe, no noise (GN → GN ε=∞)": (GN, dp_label(math.inf))}
    for epsilon in budgets:
        pairs[f"DP-SGD (GN → GN ε={epsilon:g})"] = (GN, dp_label(epsilon))
    pairs[f"both (BN → GN ε={budgets[0]:g})"] = (BN, dp_label(budgets[0]))
    return pairs


def guard_change(plan: Plan, before: pd.Series, after: pd.Series, *, num_classes: int,
                 after_is_dp: bool) -> Comparison:
    """The guard of one change: "equal epochs" with both sides required to fit between
    non-private settings; "mitigation" when the after side trained with DP-SGD, which must not fit
    by design (``ref_must_fit=False``) but must still train above ``chance_factor`` × chance."""
    setting = "mitigation" if after_is_dp else "equal epochs"
    return guard(setting, before, after, num_classes=num_classes, fit_threshold=plan.fit_threshold,
                          chance_factor=plan.chance_factor, ref_must_fit=not after_is_dp)


@dataclasses.dataclass
class Effect:
    """One change ``before → after``: risk reductions (before − after) and the accuracy change
    (after − before), each ``(value, lo, hi)`` with a 95% interval, and the change's guard."""

    before: str
    after: str
    comparison: Comparison
    auc: tuple
    tpr: tuple
    canary_mem: tuple
    accuracy: tuple

    def reading(self, measure: str) -> str:
        """What the interval of ``measure`` (auc, tpr, canary_mem, accuracy) says, or
        "not comparable: <reason>" when the sides did not train to a comparable state."""
        higher, lower = ACCURACY_WORDS if measure == "accuracy" else RISK_WORDS
        value, lo, hi = getattr(self, measure)
        scale, unit = (100, " points") if measure == "accuracy" else (1.0, "")
        return read_comparison(self.comparison, {"diff": value, "lo": lo, "hi": hi, "df": math.inf},
                                MARGINS[measure][0], higher, lower, scale=scale, unit=unit)

    def phrase(self, measure: str) -> str:
        """``"+0.123 [+0.080, +0.170] (less risk after the change)"``, accuracy in points; without
        the reading when the change is not comparable (its :meth:`guard` says why)."""
        scale, unit = (100, " points") if measure == "accuracy" else (1.0, "")
        value, lo, hi = getattr(self, measure)
        if measure == "tpr" and math.isnan(value):
            return f"{NOT_RESOLVABLE}: too few non-members for a TPR at 1% FPR"
        number = fmt_interval(value, lo, hi, scale=scale, unit=unit)
        return f"{number} ({self.reading(measure)})" if self.comparison.comparable else number

    def guard(self) -> str:
        """"comparable", or "not comparable: <reason>"."""
        return "comparable" if self.comparison.comparable else not_comparable(self.comparison.reason)


def effect(setup: Setup, trained: Trained, summary: Summary, before: str, after: str) -> Effect:
    """The change from setting ``before`` to ``after``: attack metrics with independent bootstrap
    resamples of each setting's pairs, memorization and accuracy paired by inclusion mask (both
    settings share their masks)."""
    runs, targets, plan = trained.runs, setup.targets, setup.plan
    attack = compare(trained.scores[before], runs[before].masks[targets], trained.scores[after],
                     runs[after].masks[targets], n_boot=plan.n_boot, seed=plan.base.seed)
    mem_draws = canary_memorization_draws(setup, runs[before]) - canary_memorization_draws(setup, runs[after])
    mem = summary.table.loc[before, "canary mem"] - summary.table.loc[after, "canary mem"]
    accuracy = paired_difference(runs[after].final_accuracy()["test_acc"].to_numpy(),
                                 runs[before].final_accuracy()["test_acc"].to_numpy())
    comparison = guard_change(plan, side(before, [runs[before]]), side(after, [runs[after]]),
                              num_classes=setup.data.num_classes, after_is_dp=after in setup.dp_settings)
    return Effect(before, after, comparison,
                  auc=(attack["auc"], attack["auc_lo"], attack["auc_hi"]),
                  tpr=(attack["tpr@0.01"], attack["tpr@0.01_lo"], attack["tpr@0.01_hi"]),
                  canary_mem=(float(mem), *(float(b) for b in percentile_interval(mem_draws))),
                  accuracy=(accuracy["diff"], accuracy["lo"], accuracy["hi"]))


def advantage_removed(auc_bn: float, auc_after: float) -> float:
    """Share (%) of the BN models' attack advantage over guessing (AUC − 0.5) that a setting with
    AUC ``auc_after`` removes; NaN when BN has no advantage to remove."""
    excess = auc_bn - 0.5
    return (auc_bn - auc_after) / excess * 100 if excess > 0 else float("nan")


@dataclasses.dataclass
class Effects:
    """Every change of :func:`effect_pairs`: the effects, their table with readings, the guard of
    each (``comparability``), the share of BN's advantage each setting removes, and the prose."""

    effects: dict
    table: pd.DataFrame
    comparability: pd.DataFrame
    removed: dict
    conclusion: str


def effects(setup: Setup, trained: Trained, summary: Summary) -> Effects:
    """Every change of :func:`effect_pairs`, guarded and read."""
    found = {name: effect(setup, trained, summary, *pair) for name, pair in effect_pairs(setup.plan).items()}
    auc = summary.table["auc"]
    removed = {label: advantage_removed(auc[BN], auc[label]) for label in setup.settings if label != BN}
    return Effects(found, effects_table(found), comparability_table(found), removed,
                   _conclusion(setup.plan, found, removed, float(auc[BN])))


def effects_table(found: dict) -> pd.DataFrame:
    """One row per change: each measure with its interval and reading (accuracy in points), and
    the change's guard ("not comparable: <reason>" where its numbers are not evidence)."""
    columns = {"auc": "AUC reduction", "tpr": "TPR@1% reduction", "canary_mem": "canary mem reduction",
               "accuracy": "accuracy change (points)"}
    return pd.DataFrame({name: {**{title: e.phrase(measure) for measure, title in columns.items()},
                                "guard": e.guard()} for name, e in found.items()}).T


def comparability_table(found: dict) -> pd.DataFrame:
    """The guard of every change, "before / after" per column: epochs, learning rate, IN and test
    accuracy (percent), whether each side fits; whether the change is comparable, and why not."""
    def pair(c, name, spec):
        return f"{getattr(c, name + '_bn'):{spec}} / {getattr(c, name + '_ref'):{spec}}"

    rows = {}
    for name, e in found.items():
        c = e.comparison
        rows[name] = {"setting": c.setting, "epochs": pair(c, "epochs", "d"), "lr": pair(c, "lr", "g"),
                      "IN acc %": percent_pair(c.train_acc_bn, c.train_acc_ref),
                      "test acc %": percent_pair(c.test_acc_bn, c.test_acc_ref),
                      "fit": f"{'yes' if c.fit_bn else 'no'} / {'yes' if c.fit_ref else 'no'}",
                      "comparable": "yes" if c.comparable else f"no: {c.reason}"}
    table = pd.DataFrame(rows).T
    table.index.name = "change (before / after)"
    return table


def _caveat(*changes: Effect) -> str:
    """What makes a sentence's changes not evidence: each distinct guard that failed."""
    failed = dict.fromkeys(c.guard() for c in changes if not c.comparison.comparable)
    return "".join(f" This change is {text}; its numbers are not evidence either way." for text in failed)


def _conclusion(plan: Plan, found: dict, removed: dict, auc_bn: float) -> str:
    budgets = plan.budgets
    alone, recipe = found["GroupNorm alone (BN → GN)"], found["DP recipe, no noise (GN → GN ε=∞)"]
    hi, lo = found[f"DP-SGD (GN → GN ε={budgets[0]:g})"], found[f"DP-SGD (GN → GN ε={budgets[-1]:g})"]
    both = found[f"both (BN → GN ε={budgets[0]:g})"]
    return " ".join([
        f"Replacing BatchNorm by GroupNorm, without DP, changes the risk as follows (reductions, positive = "
        f"less risk): {plan.attack_name} AUC {alone.phrase('auc')}, canary memorization "
        f"{alone.phrase('canary_mem')}; test accuracy changes by {alone.phrase('accuracy')}.{_caveat(alone)}",
        f"The DP recipe without noise (per-sample clipping, Poisson batches; ε = ∞) alone reduces the AUC by "
        f"{recipe.phrase('auc')} and canary memorization by {recipe.phrase('canary_mem')}.{_caveat(recipe)}",
        f"On top of GroupNorm, DP-SGD at ε = {budgets[0]:g} reduces the AUC by {hi.phrase('auc')} "
        f"and at ε = {budgets[-1]:g} by {lo.phrase('auc')}, with accuracy changes of "
        f"{hi.phrase('accuracy')} and {lo.phrase('accuracy')}.{_caveat(hi, lo)}",
        f"Of the BN models' attack advantage (AUC − 0.5 = {auc_bn - 0.5:.3f}), GroupNorm alone "
        f"removes {removed[GN]:.0f}%, GroupNorm with DP-SGD at ε = {budgets[0]:g} "
        f"{removed[dp_label(budgets[0])]:.0f}% and at ε = {budgets[-1]:g} "
        f"{removed[dp_label(budgets[-1])]:.0f}%.{_caveat(alone, both)}"])


# --- 6. headline rows for the verdict -------------------------------------------------------------

@dataclasses.dataclass
class Headlines:
    """The chapter's headline rows (``headlines.headline_row``, with comparability fields) and
    the same rows as a table with their readings."""

    rows: list
    table: pd.DataFrame


def headline_rows(setup: Setup, summary: Summary, found: Effects) -> Headlines:
    """BN against GroupNorm without DP ("equal epochs") and against GroupNorm with DP-SGD at the
    largest budget ("mitigation"): AUC and canary memorization, BN − reference."""
    largest = setup.plan.budgets[0]
    references = [("GroupNorm alone (BN → GN)", "group"),
                  (f"both (BN → GN ε={largest:g})", f"group + DP-SGD (ε = {largest:g})")]
    rows, readings = [], []
    for name, reference in references:
        for column in HEADLINE_WORDS:
            row, words = _headline_row(setup, summary, found.effects[name], column, reference)
            rows.append(row)
            readings.append(words)
    table = pd.DataFrame({
        "measure": [row["measure"] for row in rows], "reference": [row["reference"] for row in rows],
        "BN": [f"{row['batch']:.3f}" for row in rows], "reference's value": [f"{row['ref']:.3f}" for row in rows],
        "BN − reference [95% interval]": [fmt_interval(row["diff"], row["lo"], row["hi"]) for row in rows],
        "reading": readings})
    return Headlines(rows, table)


def _headline_row(setup: Setup, summary: Summary, change: Effect, column: str, reference: str):
    measure = f"{setup.plan.attack_name} AUC" if column == "auc" else "canary memorization"
    value, lo, hi = change.auc if column == "auc" else change.canary_mem
    higher, lower = HEADLINE_WORDS[column]
    margin = MARGINS["auc" if column == "auc" else "canary_mem"][0]
    row = headline_row(measure, change.comparison.setting, summary.table.loc[change.before, column],
                       summary.table.loc[change.after, column], value, lo, hi, HEADLINE_INTERVAL, higher,
                       reference=reference, comparison=change.comparison, margin=margin, df=math.inf)
    d = {"diff": value, "lo": lo, "hi": hi, "df": math.inf}
    return row, read_comparison(change.comparison, d, margin, higher, lower)


# --- 7. empirical epsilon -------------------------------------------------------------------------

@dataclasses.dataclass
class Audit:
    """The empirical lower bound on ε of every setting (all pairs, and canaries only) beside the
    accountant's ε; ``violations`` are DP settings whose bound exceeds it; ``best`` the bound on
    all pairs per setting."""

    table: pd.DataFrame
    violations: pd.DataFrame
    best: pd.Series
    verdict: str


def audit(setup: Setup, trained: Trained) -> Audit:
    """Empirical ε of every setting from its attack scores, at the plan's confidence and the DP
    runs' δ (threshold chosen on one half of the pairs, evaluated on the other)."""
    rows = []
    for label in setup.settings:
        for group, select in (("all samples", None), ("canaries", setup.is_canary)):
            found = empirical_epsilon(trained.scores[label], trained.runs[label].masks[setup.targets],
                                      delta=setup.delta, confidence=setup.plan.confidence, seed=setup.plan.base.seed,
                                      select=select)
            rows.append({"setting": label, "pairs": group, "accountant ε": trained.accountant_epsilon(label),
                         "empirical ε ≥": found["epsilon_lb"], "TPR": found["tpr"], "FPR": found["fpr"],
                         "TP": found["tp"], "FP": found["fp"], "FN": found["fn"], "TN": found["tn"]})
    table = pd.DataFrame(rows)
    private = table[np.isfinite(table["accountant ε"])]
    violations = private[private["empirical ε ≥"] > private["accountant ε"]]
    best = table.loc[table["pairs"] == "all samples"].set_index("setting")["empirical ε ≥"]
    return Audit(table, violations, best, audit_verdict(violations))


def audit_verdict(violations: pd.DataFrame) -> str:
    """The sentence on whether any DP setting's empirical bound exceeds its accountant's ε."""
    if violations.empty:
        return "In every DP setting the empirical lower bound stays below the accountant's ε, as it must."
    return (f"The empirical lower bound *exceeds* the accountant's ε in {len(violations)} DP setting(s) "
            f"({', '.join(violations['setting'])}): a bug in the training or the accounting, or a broken "
            "assumption of the audit (see the caveat below).")

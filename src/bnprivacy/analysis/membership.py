"""Chapter 04's steps: membership-inference attacks on the shared family's runs, read through the
protocol's comparisons."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from ..protocol.ablation import ARMS, RateAblation
from ..protocol.comparisons import Comparison
from ..protocol.measures import difference, percent_pair, read_comparison
from ..attacks import (ATTACK_NAMES, HEADLINE_PREFERENCE, AttackInput, LiraOptions, attack_scores, calibrate, evaluate,
                       headline_attack, null_summary, resolvable, shuffled_masks, summarize, vulnerability)
from ..longtail import rare_classes
from ..memorization import run_memorization
from ..reading import NOT_AVAILABLE, fmt_interval, fmt_rate, not_comparable, not_resolvable, not_resolved
from .family_steps import TrainedFamily, Measured, measure_family
from ..runs.shadow import shadow_run

SHOWN_ATTACKS = ("lira_online", "lira_offline", "lira_online_fixed", "rmia_online", "rmia", "loss", "correct")
# The headline metrics of the chosen attack, each with its name in the headline rows.
METRICS = {"auc": "AUC", "tpr@0.01": "TPR at 1% FPR", "tpr@0.001": "TPR at 0.1% FPR"}
# On a long-tailed pool, also the AUC on the rare third of the classes (natural outliers). AUC only:
# the rare classes' few hundred samples cannot resolve a TPR at a low FPR.
RARE = "auc rare"
LABELS = {**METRICS, RARE: "AUC on rare classes"}
# Equivalence margins (stated in chapter 4): the largest BN − reference difference that counts as none.
MARGINS = {"auc": (0.01, "an AUC difference of 0.01 is about the spread of the attack's own null at 16 models"),
           "tpr@0.01": (0.005, "half a percentage point: half the 1% FPR the rate is read at"),
           "tpr@0.001": (0.001, "one tenth of a percentage point: the 0.1% FPR itself"),
           RARE: (0.01, "the whole pool's AUC margin: a difference too small to matter on every sample is too "
                        "small on the rare ones")}
FPRS = (0.001, 0.01)


def check_targets(n_targets, n_models: int) -> list[int]:
    """The target models ``0 .. n_targets-1``; raises ``ValueError`` unless 1 <= n_targets <= n_models."""
    if isinstance(n_targets, bool) or not isinstance(n_targets, int) or not 1 <= n_targets <= n_models:
        raise ValueError(f"n_targets={n_targets!r} is not allowed; allowed values: an integer between 1 and "
                         f"n_models={n_models}")
    return list(range(n_targets))


def check_draws(null_draws) -> int:
    """The number of null draws per run; raises ``ValueError`` unless an integer >= 2 (a spread
    needs two)."""
    if isinstance(null_draws, bool) or not isinstance(null_draws, int) or null_draws < 2:
        raise ValueError(f"null_draws={null_draws!r} is not allowed; allowed values: an integer >= 2 (the null "
                         "spread is a standard deviation over draws)")
    return null_draws


@dataclasses.dataclass
class Calibration:
    """The null of the candidate headline attacks on every run of the family (``table``: one row
    per run, attack and draw), their summary over all runs (``null``) and the headline attack the
    rule chose from it (``attacks.headline_attack``)."""

    table: pd.DataFrame
    null: pd.DataFrame
    attack: str

    def name(self) -> str:
        return ATTACK_NAMES[self.attack]


def calibrate_family(family: TrainedFamily, targets: list[int], draws: int = 4) -> Calibration:
    """Score every run of the family with shuffled masks (``attacks.calibrate``), ``draws`` times,
    with every candidate headline attack, and choose the headline attack from that null."""
    table = _null_table(family, HEADLINE_PREFERENCE, targets, draws)
    summary = null_summary(table)
    return Calibration(table, summary, headline_attack(summary))


def calibrate_rare_classes(family: TrainedFamily, targets: list[int], calibration: Calibration) -> Calibration:
    """The headline attack's null on the rare classes' samples alone (:func:`rare_classes`): the
    same shuffled masks as ``calibration``, scored on that subset, whose few samples spread wider."""
    draws = int(calibration.table.draw.nunique())
    table = _null_table(family, [calibration.attack], targets, draws, select=rare_classes)
    return Calibration(table, null_summary(table), calibration.attack)


def _null_table(family: TrainedFamily, attacks, targets: list[int], draws: int, select=None) -> pd.DataFrame:
    """``attacks.calibrate`` on every run of the family, one row per run, attack and draw;
    ``select(run)`` (optional) chooses the pool samples scored."""
    rows = []
    for (norm, budget, seed), run in family.sweep.runs.items():
        null = calibrate(AttackInput.from_run(run), attacks, targets, draws=draws, seed=1000 * seed, fprs=FPRS,
                         select=None if select is None else torch.as_tensor(select(run)))
        rows.append(null.assign(norm=norm, budget=budget, seed=seed))
    return pd.concat(rows, ignore_index=True)


def run_metrics(run, attack: str, targets: list[int], *, long_tailed: bool = False) -> dict:
    """``attack`` on ``targets`` of one run, pooled: AUC and TPR at each FPR of ``FPRS`` (NaN where
    the pooled non-members cannot resolve it), with the member and non-member counts; with
    ``long_tailed``, also the AUC on the rare classes' samples (``RARE``) and their non-members."""
    scores = np.asarray(attack_scores(AttackInput.from_run(run), attack, targets))
    members = np.asarray(run.masks[targets])
    metrics = {**summarize(scores.ravel(), members.ravel(), FPRS), "nonmembers": int((~members).sum())}
    if long_tailed:
        rare = rare_classes(run)
        metrics[RARE] = summarize(scores[:, rare].ravel(), members[:, rare].ravel(), FPRS)["auc"]
        metrics["rare nonmembers"] = int((~members[:, rare]).sum())
    return metrics


def null_spread(calibration: Calibration, c: Comparison, metric: str) -> float:
    """Two standard deviations of BN − reference of ``metric`` (mean over seeds, as the comparison)
    when neither side has any membership signal: from the headline attack's null at the
    comparison's budgets (spread over seeds and draws of each side; pooled over the budgets a
    comparison averages or interpolates over; for a frontier, over the budgets of its points, the
    null being calibrated on the ladder's runs)."""
    t = calibration.table[calibration.table.attack == calibration.attack]
    bn_budgets = [b for b, _ in c.pairs] or [b for _, b in c.frontier_bn]
    ref_budgets = [r for _, r in c.pairs] or [b for _, b in c.frontier_ref]
    bn = t[(t.norm == "batch") & t.budget.isin(bn_budgets)][metric]
    ref = t[(t.norm == c.reference) & t.budget.isin(ref_budgets)][metric]
    seeds = max(t.seed.nunique(), 1)
    return float(2 * np.sqrt((bn.var(ddof=1) + ref.var(ddof=1)) / seeds))


def metric_units(metric: str) -> dict:
    """How a metric's difference is printed: AUC as is, a TPR in percentage points."""
    return {"scale": 100.0, "unit": " points"} if metric.startswith("tpr@") else {"scale": 1.0, "unit": ""}


def resolution_rule(calibration: Calibration, metric: str, nonmembers: int):
    """``rule(comparison, difference) -> str``: "not resolvable with n non-members" for a TPR the
    pooled non-members cannot resolve, "not resolved" for a difference within the null spread, ""
    otherwise (``headlines.headline_rows``)."""
    def rule(c: Comparison, d: dict) -> str:
        if metric.startswith("tpr@") and not resolvable(float(metric[4:]), nonmembers):
            return not_resolvable(nonmembers, float(metric[4:]))
        spread = null_spread(calibration, c, metric)
        if not np.isfinite(d["diff"]) or abs(d["diff"]) <= spread:
            return not_resolved(d["diff"], spread, **metric_units(metric))
        return ""
    return rule


def compare_attacks(family: TrainedFamily, targets: list[int], calibration: Calibration, margins: dict[str, float],
                    *, long_tailed: bool | None = None) -> Measured:
    """The headline attack's AUC and TPR at 1% and 0.1% FPR on every run, read through the
    protocol's comparisons; each run's value pools its targets, the interval is over seeds. A
    comparison the instrument cannot resolve reads "not resolvable" or "not resolved"; the others
    are read at ``margins`` (``sweep.margins(MARGINS, ...)``). On a long-tailed pool
    (``long_tailed``, by default the family's ``imbalance > 1``) also the AUC on the rare classes'
    samples (``values[RARE]``), resolved against the attack's null on those samples alone."""
    if long_tailed is None:
        long_tailed = family.protocol.base.imbalance > 1
    attack = calibration.attack
    keys = measured_keys(long_tailed)
    # Score each run once; every metric reads the same scores (runs are keyed by their folder).
    metrics = {run.folder: run_metrics(run, attack, targets, long_tailed=long_tailed)
               for _, run in family.sweep.every_run()}
    nonmembers = min(m["nonmembers"] for m in metrics.values())
    names = {m: f"{ATTACK_NAMES[attack]} {LABELS[m]}" for m in keys}
    measures = {m: (lambda run, m=m: metrics[run.folder][m]) for m in keys}
    rules = {m: resolution_rule(calibration, m, nonmembers) for m in METRICS}
    if long_tailed:
        rare_nonmembers = min(m["rare nonmembers"] for m in metrics.values())
        rules[RARE] = resolution_rule(calibrate_rare_classes(family, targets, calibration), "auc", rare_nonmembers)

    def sentence(values: dict[str, pd.DataFrame], c: Comparison) -> str:
        return setting_sentence(values, c, names, rules, margins)

    # A TPR prints in percent with 2 decimals: 0.0007 reads 0.07%, where 3 decimals would show 0.001.
    printed = {m: {"scale": 100.0, "unit": "%", "digits": 2} for m in METRICS if m.startswith("tpr@")}
    return measure_family(family, measures, names, "BN models are more vulnerable", sentence, resolution=rules,
                          margins=margins, printed=printed)


def measured_keys(long_tailed: bool) -> list[str]:
    """The metrics of :data:`LABELS` a family measures: the rare classes' AUC only on a long-tailed pool."""
    return list(METRICS) + ([RARE] if long_tailed else [])


def setting_sentence(values: dict[str, pd.DataFrame], c: Comparison, names: dict, rules: dict,
                     margins: dict[str, float]) -> str:
    """What one comparison says about the headline attack's AUC and TPRs, in words."""
    parts = []
    for m, name in names.items():
        d = difference(values[m], c)
        units = metric_units(m)
        reading = read_comparison(c, d, margins[m], "higher with BN", "lower with BN", rules[m](c, d), **units)
        if reading.startswith("not resolvable"):
            parts.append(f"{name}: {reading}")
        else:
            parts.append(f"{name} {fmt_interval(d['diff'], d['lo'], d['hi'], **units)} ({reading})")
    return (f"At {c.setting} ({c.where()}), BN minus "
            f"{c.reference}: " + "; ".join(parts) + ".")


@dataclasses.dataclass
class Attacked:
    """Every shown attack's scores on one run per norm (seed 0 of one comparison's sides), and
    each attack's null on the same runs (``attacks.calibrate``, one row per norm, attack, draw)."""

    runs: dict
    scores: dict
    targets: list[int]
    null: pd.DataFrame

    def table(self, n_boot: int = 200, select=None) -> pd.DataFrame:
        """Pooled metrics per (norm, attack) with bootstrap intervals over (target, sample) pairs,
        beside the attack's null (mean and standard deviation over draws)."""
        null = self.null.groupby(["norm", "attack"])[["auc", "tpr@0.01"]].agg(["mean", "std"])
        rows = []
        for (norm, attack), s in self.scores.items():
            measured = evaluate(s, self.runs[norm].masks[self.targets], n_boot=n_boot, select=select, fprs=FPRS)
            rows.append({"norm": norm, "attack": ATTACK_NAMES[attack], **measured,
                         **{f"null {m} {stat}": null.loc[(norm, attack), (m, stat)]
                            for m in ("auc", "tpr@0.01") for stat in ("mean", "std")}})
        return pd.DataFrame(rows)


def attack_setting(family: TrainedFamily, c: Comparison, targets: list[int], seed: int = 0,
                   query_mode: str = "eval", norms=None, null_draws: int = 4) -> Attacked:
    """Score every shown attack on seed ``seed`` of both sides of comparison ``c`` (or of ``norms``),
    and calibrate each on the same runs (``null_draws`` shuffled-mask draws). ``query_mode="train"``
    queries BN with the query batch's statistics (the LiRA reference code)."""
    runs, scores, nulls = {}, {}, []
    for norm, budget in (("batch", c.epochs_bn), (c.reference, c.epochs_ref)):
        if norms is not None and norm not in norms:
            continue
        run = family.run(norm, budget, seed)
        if query_mode != "eval":
            run = shadow_run(run.spec, family.data, query_mode=query_mode, progress=False)
        runs[norm] = run
        attack_input = AttackInput.from_run(run)
        for attack in SHOWN_ATTACKS:
            scores[norm, attack] = attack_scores(attack_input, attack, targets)
        nulls.append(calibrate(attack_input, SHOWN_ATTACKS, targets, draws=null_draws, fprs=FPRS).assign(norm=norm))
    return Attacked(runs, scores, targets, pd.concat(nulls, ignore_index=True))


def interval_table(table: pd.DataFrame, columns=("auc", "tpr@0.01", "tpr@0.001"), index=("attack", "norm")) -> pd.DataFrame:
    """Metrics as "value [lo, hi]" text, one row per (attack, norm); a TPR the pooled
    non-members cannot resolve reads "not resolvable with n non-members"; the null AUC and TPR at
    1% FPR (mean ± sd over draws) stand beside the measured ones when the table has them."""
    shown = table.set_index(list(index))
    out = pd.DataFrame(index=shown.index)
    for c in columns:
        if c.startswith("tpr@"):
            out[c] = [fmt_rate(v, lo, hi, nonmembers=n, level=float(c[4:])) for v, lo, hi, n in
                      zip(shown[c], shown[f"{c}_lo"], shown[f"{c}_hi"], shown["nonmembers"])]
        else:
            out[c] = [fmt_interval(v, lo, hi, signed=False) for v, lo, hi in
                      zip(shown[c], shown[f"{c}_lo"], shown[f"{c}_hi"])]
        if f"null {c} mean" in shown:
            out[f"null {c}"] = [f"{m:.3f} ± {s:.3f}" if np.isfinite(m) and np.isfinite(s) else NOT_AVAILABLE
                                for m, s in zip(shown[f"null {c} mean"], shown[f"null {c} std"])]
    return out.sort_index(level=0, sort_remaining=False)


METRIC_WORDS = {"auc": "AUC", "tpr@0.01": "TPR at 1% FPR", "tpr@0.001": "TPR at 0.1% FPR"}


def in_words(shown: pd.DataFrame) -> pd.DataFrame:
    """:func:`interval_table` with its metric columns named for a reader ("null tpr@0.01" reads
    "null TPR at 1% FPR")."""
    words = {**METRIC_WORDS, **{f"null {c}": f"null {w}" for c, w in METRIC_WORDS.items()}}
    return shown.rename(columns=words)


def by_group(attacked: Attacked, groups, attack: str, n_boot: int = 200, *, order=None) -> pd.DataFrame:
    """``attack`` on each group of pool samples separately, per norm: ``groups[p]`` names the group
    of pool sample p (canaries and typical samples; class-frequency buckets), ``order`` the groups
    shown, in that order (default: every group, sorted). AUC only, with its 95% bootstrap interval:
    a few dozen samples per target cannot resolve a TPR at low FPR."""
    groups = np.asarray(groups)
    order = list(order) if order is not None else sorted(set(groups.tolist()))
    rows = []
    for norm, run in attacked.runs.items():
        for group in order:
            r = evaluate(attacked.scores[norm, attack], run.masks[attacked.targets], n_boot=n_boot,
                         select=groups == group)
            rows.append({"norm": norm, "samples": group, "auc": r["auc"], "auc_lo": r["auc_lo"], "auc_hi": r["auc_hi"]})
    index = pd.MultiIndex.from_product([order, list(attacked.runs)], names=["samples", "norm"])
    return pd.DataFrame(rows).set_index(["samples", "norm"]).reindex(index)


def group_sentence(table: pd.DataFrame, attack: str, c: Comparison) -> str:
    """One sentence per group of :func:`by_group`: the AUC of ``attack`` with BN and with
    ``c.reference``, each with its interval; intervals that overlap are said to. A comparison that
    is not evidence (a side that did not fit) says so first."""
    reference = c.reference
    guard = "" if c.comparable else f"These runs are not evidence ({not_comparable(c.reason)}). "
    parts = []
    for group in table.index.unique("samples"):
        bn, ref = table.loc[(group, "batch")], table.loc[(group, reference)]
        overlap = bn["auc_lo"] <= ref["auc_hi"] and ref["auc_lo"] <= bn["auc_hi"]
        parts.append(f"on {group}, {fmt_interval(bn['auc'], bn['auc_lo'], bn['auc_hi'], signed=False)} with BN "
                     f"against {fmt_interval(ref['auc'], ref['auc_lo'], ref['auc_hi'], signed=False)} with {reference}"
                     + (" (the intervals overlap)" if overlap else ""))
    return guard + f"AUC of {attack}: " + "; ".join(parts) + "."


GROWTH_ATTACKS = ("lira_online", "lira_offline", "rmia_online", "rmia", "loss")


def reference_growth(attacked: Attacked, n_models: int, attacks=GROWTH_ATTACKS, seed: int = 0) -> pd.DataFrame:
    """AUC and TPR at 1% FPR of each attack as the number of reference models grows, on the real
    masks and on shuffled ones (the null, one draw).

    Each target's references are the first ``count`` other models. Samples with too few IN or OUT
    references among them (after trimming) are left unscored; ``scored pairs`` says what fraction
    was scored. LOSS uses no reference model, so its value is the same at every count.
    """
    counts = [c for c in (4, 6, 8, 12, 16, 24, 32, 64, 128, 256) if c < n_models - 1] + [n_models - 1]
    rows = []
    for norm, run in attacked.runs.items():
        real = AttackInput.from_run(run)
        for masks_name, data in (("real", real), ("null", real.with_masks(shuffled_masks(run.masks, seed)))):
            members = data.masks[attacked.targets]
            for count in counts:
                for attack in attacks:
                    per_target = [attack_scores(data, attack, [t], strict=False,
                                                references=[m for m in range(n_models) if m != t][:count])[0]
                                  for t in attacked.targets]
                    r = _scored_metrics(np.stack(per_target), members.numpy())
                    rows.append({"norm": norm, "masks": masks_name, "reference models": count,
                                 "attack": ATTACK_NAMES[attack], **r})
    return pd.DataFrame(rows)


def _scored_metrics(scores: np.ndarray, members: np.ndarray) -> dict:
    """AUC and TPR at 1% FPR of the scored (finite) pairs, NaN when they hold no member or no
    non-member, with the fraction of pairs scored."""
    scored = np.isfinite(scores)
    fraction = float(scored.mean())
    chosen = members[scored]
    if not chosen.any() or chosen.all():
        return {"tpr@0.01": np.nan, "auc": np.nan, "scored pairs": fraction}
    r = summarize(scores[scored], chosen, (0.01,))
    return {"tpr@0.01": r["tpr@0.01"], "auc": r["auc"], "scored pairs": fraction}


# Each departure from the reference code, alone, then the reference preset (plot.py exactly).
LIRA_VARIANTS = {
    "book default": ({}, "lira_online", "lira_offline"),
    "no trimming (the book before)": ({"trim": "none"}, "lira_online", "lira_offline"),
    "trimmed as plot.py (one count per side)": ({"trim": "global"}, "lira_online", "lira_offline"),
    "median location": ({"location": "median"}, "lira_online", "lira_offline"),
    "ddof 0": ({"ddof": 0}, "lira_online", "lira_offline"),
    "two-sided offline test": ({"offline_test": "two_sided"}, None, "lira_offline"),
    "fixed variance, pooled (the book's)": ({}, "lira_online_fixed", "lira_offline_fixed"),
    "fixed variance, global (plot.py's)": ({"variance": "global"}, "lira_online_fixed", "lira_offline_fixed"),
    "plot.py exactly": ("reference", "lira_online", "lira_offline"),
    "plot.py exactly, fixed variance": ("reference", "lira_online_fixed", "lira_offline_fixed"),
}


def lira_variants(attacked: Attacked) -> pd.DataFrame:
    """AUC and TPR at 1% FPR of online and offline LiRA under each option of
    ``attacks.LiraOptions`` alone, and under the reference preset, per norm; the last variant
    reads the book's scores at FPR strictly below 1%, as ``plot.py`` reads its low-FPR rate."""
    rows = []
    for norm, run in attacked.runs.items():
        data = AttackInput.from_run(run)
        members = np.asarray(run.masks[attacked.targets]).ravel()
        for name, (change, online, offline) in {**LIRA_VARIANTS, STRICT_FPR: ({}, "lira_online", "lira_offline")}.items():
            options = change if isinstance(change, str) else LiraOptions(**change)
            for side, attack in (("online", online), ("offline", offline)):
                if attack is None:
                    continue
                scores = np.asarray(attack_scores(data, attack, attacked.targets, lira=options)).ravel()
                r = summarize(scores, members, (0.01,), inclusive=name != STRICT_FPR)
                rows.append({"variant": name, "norm": norm, "LiRA": side, "auc": r["auc"], "tpr@0.01": r["tpr@0.01"]})
    return pd.DataFrame(rows)


STRICT_FPR = "TPR read at FPR < 1% (plot.py), not <="


@dataclasses.dataclass
class Vulnerability:
    """Per sample: memorization score and LiRA vulnerability; Spearman rho per norm."""

    table: pd.DataFrame
    rho: dict[str, float]


def vulnerability_link(attacked: Attacked, attack: str = "lira_online") -> Vulnerability:
    """Each sample's vulnerability to ``attack`` (mean score IN minus OUT over targets) against its
    memorization score in the same run."""
    from scipy import stats

    rows = []
    for norm, run in attacked.runs.items():
        scores, _ = run_memorization(run, n_boot=0)
        vuln = vulnerability(attacked.scores[norm, attack].numpy(), run.masks[attacked.targets].numpy())
        rows.append(scores.assign(vulnerability=vuln, norm=norm))
    table = pd.concat(rows, ignore_index=True)
    rho = {norm: float(stats.spearmanr(g["mem"], g["vulnerability"], nan_policy="omit").statistic)
           for norm, g in table.groupby("norm")}
    return Vulnerability(table, rho)


# The metrics the learning-rate ablation reads (0.1% FPR needs more non-members than its runs pool).
ABLATION_METRICS = ("auc", "tpr@0.01")
# The ablation table's two halves, each narrow enough for a page: the state of both sides, and the
# differences with the share of the chosen-rate difference each arm keeps.
ABLATION_STATE = ("lr (BN / ref)", "IN accuracy % (BN / ref)", "test accuracy % (BN / ref)")
# Each metric's two columns (its difference, the share kept) and how its difference prints.
_ABLATION_COLUMNS = {"auc": ("AUC: BN − ref [95% CI]", "AUC: kept", {}),
                     "tpr@0.01": ("TPR at 1% FPR (points): BN − ref [95% CI]", "TPR at 1% FPR: kept",
                                  {"scale": 100.0, "digits": 2})}
ABLATION_DIFFERENCES = tuple(column for difference, kept, _ in _ABLATION_COLUMNS.values() for column in (difference, kept))


def rate_ablation_table(ablation: RateAblation, references, calibration: Calibration, targets: list[int]) -> pd.DataFrame:
    """Chapter 04's learning-rate ablation (``protocol.ablation``): per reference and arm (chosen
    rates; both at BN's rate; both at ref's rate), both sides' rates and IN and test
    accuracy (:data:`ABLATION_STATE`), BN − reference of the headline attack's AUC and TPR at 1%
    FPR with a 95% t-interval over seeds, and the share of the chosen-rate difference each arm keeps
    at equal rate, where that difference is resolved (:data:`ABLATION_DIFFERENCES`). A row whose
    side diverged, did not fit or did not train reads "not comparable", its ``reason`` beside it."""
    scored: dict = {}

    def metric(name):
        def value(run):
            if run.folder not in scored:
                scored[run.folder] = run_metrics(run, calibration.attack, targets)
            return scored[run.folder][name]
        return value

    rows = []
    for reference in references:
        chosen = {}
        for arm, lr_bn, lr_ref in ablation.arms(reference):
            c = ablation.comparison(reference, lr_bn, lr_ref)
            row = {"reference": reference, "arm": arm, "lr (BN / ref)": f"{lr_bn:g} / {lr_ref:g}",
                   "IN accuracy % (BN / ref)": _percents(c.train_acc_bn, c.train_acc_ref),
                   "test accuracy % (BN / ref)": _percents(c.test_acc_bn, c.test_acc_ref), "reason": c.reason}
            for name in ABLATION_METRICS:
                difference_column, kept_column, printed = _ABLATION_COLUMNS[name]
                if not c.comparable:
                    row[difference_column], row[kept_column] = "not comparable", NOT_AVAILABLE
                    continue
                d = ablation.difference(reference, lr_bn, lr_ref, metric(name))
                if arm == ARMS[0]:
                    chosen[name] = d
                row[difference_column] = fmt_interval(d["diff"], d["lo"], d["hi"], **printed)
                row[kept_column] = _share(d["diff"], chosen.get(name), arm)
            rows.append(row)
    return pd.DataFrame(rows)


def ablation_reasons(table: pd.DataFrame) -> str:
    """One Markdown bullet per ablation row that is not comparable: which reference and arm, and why."""
    return "\n".join(f"- {r.reference}, {r.arm}: not comparable: {r.reason}" for r in table.itertuples() if r.reason)


def _percents(a: float, b: float) -> str:
    """``percent_pair``, or n/a for a side that diverged (no accuracy)."""
    return NOT_AVAILABLE if np.isnan(a) or np.isnan(b) else percent_pair(a, b)


def _share(diff: float, chosen: dict | None, arm: str) -> str:
    """How much of the chosen-rate difference a row keeps, in percent: only where that difference
    is resolved (its interval excludes 0), since a share of a difference that may be 0 means nothing."""
    if arm == ARMS[0]:
        return "(reference row)"
    if chosen is None or not (chosen["lo"] > 0 or chosen["hi"] < 0):
        return "n/a (not resolved)"
    return f"{100 * diff / chosen['diff']:.0f}%"

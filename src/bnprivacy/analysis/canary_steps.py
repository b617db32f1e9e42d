"""Chapter 02's steps: canary memorization and exposure of the shared family, read through the
protocol's comparisons."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from ..protocol.comparisons import FAIR_SETTINGS, SAME_RUNS, Comparison
from ..protocol.measures import difference, read_comparison
from ..longtail import BUCKETS, CANARY, frequency_buckets, rare_classes
from ..memorization import (canary_curves, epochs_to_memorize, mean_epochs_to_memorize, memorization_scores,
                            run_exposure, run_memorization)
from ..reading import NOT_RESOLVED, fmt_interval, judge, not_comparable
from ..stats import paired_difference
from .family_steps import TrainedFamily, Measured, measure_family, sentence_for, sentences_of

KIND_ORDER = ["typical", "noise", "mislabeled", "ood", "atypical"]


def correct_on_pool(run) -> torch.Tensor:
    """``[models, pool]`` bool: each model's identity-query prediction on each pool sample is right."""
    return run.logits_pool[:, 0].argmax(-1) == run.y_pool


def mean_memorization(run, kinds=("noise", "mislabeled", "ood", "atypical")) -> float:
    """Mean memorization score of the pool samples of ``kinds`` in one run (all canaries by default)."""
    scores = memorization_scores(correct_on_pool(run), run.masks, n_boot=0)["mem"].to_numpy()
    chosen = np.isin(np.asarray(run.kinds), list(kinds))
    return float(np.nanmean(scores[chosen])) if chosen.any() else float("nan")


def kinds_present(family: TrainedFamily) -> list[str]:
    """The kinds of pool sample in this family, typical first."""
    present = set(family.data.kinds or ["typical"])
    return [k for k in KIND_ORDER if k in present]


def canary_epochs_to_memorize(run) -> float:
    """Mean fraction of its budget a run's IN models take to memorize a canary for good
    (:func:`bnprivacy.memorization.mean_epochs_to_memorize`; never memorized = 1). Lower = earlier."""
    return mean_epochs_to_memorize(run.canary_history, run.masks, budget=run.spec.config.epochs, kinds=run.kinds)


MEASURES = {"canaries": "canary memorization", "typical": "typical-sample memorization",
            "epochs": "canary epochs to memorize (fraction of budget)", "rare": "rare-class memorization"}
# Measured only on a long-tailed pool (imbalance > 1): elsewhere no class is rare.
LONG_TAIL_ONLY = ("rare",)
# What a positive BN − reference difference means, per measure: epochs to memorize is lower when a
# canary is memorized earlier, so BN above the reference there means BN memorizes later.
HIGHER_MEANS = {"canaries": "BN memorizes more", "typical": "BN memorizes more", "epochs": "BN memorizes later",
                "rare": "BN memorizes more"}
# The sign of BN − reference the claim predicts: more canary memorization, fewer epochs to memorize;
# typical-sample memorization is the generalization gap, shown beside the claim but not a test of it;
# the samples of a rare class are natural outliers, so the claim predicts more memorization there.
CLAIM_SIGNS = {"canaries": 1, "typical": 0, "epochs": -1, "rare": 1}
# Equivalence margins (stated in chapter 2): the largest difference that counts as none.
MARGINS = {"canaries": (0.05, "one canary in twenty memorized more or less"),
           "typical": (0.01, "one point of accuracy: on typical samples the score is the train − test gap, "
                             "read at chapter 1's one-point accuracy margin"),
           "epochs": (0.05, "a twentieth of the budget: half an epoch of a 10-epoch schedule"),
           "rare": (0.05, "as for the canaries, one sample in twenty memorized more or less: the rare classes' "
                          "samples are the natural outliers the canaries stand in for")}


def rare_class_memorization(run) -> float:
    """Mean memorization score of the typical samples of the rare third of the classes
    (:func:`bnprivacy.longtail.frequency_buckets`) in one run."""
    scores = memorization_scores(correct_on_pool(run), run.masks, n_boot=0)["mem"].to_numpy()
    return float(np.nanmean(scores[rare_classes(run)]))


def measured_keys(long_tailed: bool) -> list[str]:
    """The keys of :data:`MEASURES` a family measures: the rare-class ones only on a long-tailed pool."""
    return [k for k in MEASURES if long_tailed or k not in LONG_TAIL_ONLY]


def compare_memorization(family: TrainedFamily, margins: dict[str, float], *, long_tailed: bool | None = None) -> Measured:
    """Mean memorization of the canaries (``values["canaries"]``) and of the typical samples
    (``values["typical"]``), and the canaries' epochs to memorize (``values["epochs"]``) of every
    run, compared BN vs the reference under the protocol and read at ``margins``
    (``sweep.margins(MARGINS, ...)``). On a long-tailed pool (``long_tailed``, by default the
    family's ``imbalance > 1``) also the memorization of the rare classes' samples
    (``values["rare"]``): natural outliers, compared as the canaries are."""
    if long_tailed is None:
        long_tailed = family.protocol.base.imbalance > 1
    every = {"canaries": mean_memorization, "typical": lambda run: mean_memorization(run, ("typical",)),
             "epochs": canary_epochs_to_memorize, "rare": rare_class_memorization}
    measures = {k: every[k] for k in measured_keys(long_tailed)}

    parts = []
    for higher in dict.fromkeys(HIGHER_MEANS[k] for k in measures):  # measure_family takes one meaning at a time
        keys = [k for k in measures if HIGHER_MEANS[k] == higher]
        parts.append(measure_family(family, {k: measures[k] for k in keys}, MEASURES, higher, lambda values, c: "",
                                    margins={k: margins[k] for k in keys}, claim_signs=CLAIM_SIGNS))
    merged = merge_measured(parts)
    merged.sentences = sentences_of(family, lambda c: sentence_for(lambda values, c: setting_sentence(values, c, margins),
                                                                   merged.values, c))
    return merged


def merge_measured(parts: list[Measured]) -> Measured:
    """One :class:`Measured` from several over the same family (disjoint measures); the sentences
    are the first part's (the caller may say them anew from all the values)."""
    merged = Measured({}, {}, {}, [], dict(parts[0].sentences), {}, {})
    for part in parts:
        for field in ("values", "curves", "tables", "pairings", "robust"):
            getattr(merged, field).update(getattr(part, field))
        merged.rows.extend(part.rows)
    return merged


def setting_sentence(values: dict[str, pd.DataFrame], c: Comparison, margins: dict[str, float]) -> str:
    """What one comparison says about canary memorization and epochs to memorize, in words."""
    d = difference(values["canaries"], c)
    e = difference(values["epochs"], c)
    mem = fmt_interval(d["diff"], d["lo"], d["hi"])
    epochs = fmt_interval(e["diff"], e["lo"], e["hi"])
    if not c.comparable:
        return (f"At {c.setting} ({c.where()}), BN minus {c.reference} is {mem} in canary memorization and "
                f"{epochs} in epochs to memorize, but this comparison is **not comparable** ({c.reason}) and is "
                "not evidence either way.")
    reading = read_comparison(c, d, margins["canaries"], "BN memorizes more", "BN memorizes less")
    timing = read_comparison(c, e, margins["epochs"], "BN memorizes later", "BN memorizes earlier")
    return (f"At {c.setting} ({c.where()}), BN minus {c.reference} in mean canary memorization is {mem} "
            f"(95% interval over {d['n']} seeds): **{reading}**; in epochs to memorize (fraction of the "
            f"budget) it is {epochs}: **{timing}**.")


def rare_sentence(result: Measured, c: Comparison, margins: dict[str, float]) -> str:
    """What comparison ``c`` says about the rare classes' memorization (``result.values["rare"]``,
    a long-tailed family), in words."""
    def sentence(values: dict[str, pd.DataFrame], c: Comparison) -> str:
        d = difference(values["rare"], c)
        mem = fmt_interval(d["diff"], d["lo"], d["hi"])
        if not c.comparable:
            return (f"At {c.setting} ({c.where()}), BN minus {c.reference} in rare-class memorization is {mem}, "
                    f"but this comparison is **not comparable** ({c.reason}) and is not evidence either way.")
        reading = read_comparison(c, d, margins["rare"], "BN memorizes more", "BN memorizes less")
        return (f"At {c.setting} ({c.where()}), BN minus {c.reference} in the mean memorization of the rare "
                f"classes' samples is {mem} (95% interval over {d['n']} seeds): **{reading}**.")
    return sentence_for(sentence, result.values, c)


def fair_sentences(result: Measured) -> str:
    """The sentences of the fair comparisons (``protocol.comparisons.FAIR_SETTINGS``), one after the other."""
    return " ".join(s for (setting, _), s in result.sentences.items()
                    if any(part in FAIR_SETTINGS for part in setting.split(SAME_RUNS)))


def memorization_timing(family: TrainedFamily, c: Comparison) -> pd.DataFrame:
    """Per canary kind and norm, over the IN models of every seed of comparison ``c``'s two sides:
    mean fraction of the budget to memorize (censored at 1), the share memorized by the end, and
    the mean epoch of memorization among those memorized."""
    frames = []
    for norm, budget in (("batch", c.epochs_bn), (c.reference, c.epochs_ref)):
        for seed in range(family.protocol.seeds):
            run = family.run(norm, budget, seed)
            pairs = epochs_to_memorize(run.canary_history, run.masks, budget=budget, kinds=run.kinds)
            frames.append(pairs.assign(kind=[run.kinds[i] for i in pairs["sample"]], norm=norm, budget=budget))
    pairs = pd.concat(frames, ignore_index=True)
    table = pairs.groupby(["kind", "norm"], sort=False).agg(
        budget=("budget", "first"), fraction=("fraction", "mean"), memorized=("memorized", "mean"),
        epoch_if_memorized=("epoch", "mean"))
    return table.reindex(pd.MultiIndex.from_product([[k for k in KIND_ORDER if k in set(pairs.kind)],
                                                     ["batch", c.reference]], names=["kind", "norm"]))


def typical_gap(family: TrainedFamily, c: Comparison) -> pd.DataFrame:
    """Typical-sample memorization beside the generalization gap, per side of comparison ``c``
    (mean over seeds): the typical samples' accuracy in their IN models (``in_acc``) and OUT models
    (``out_acc``), their difference ``mem`` (the memorization score averaged over typical samples),
    the test accuracy and the gap ``in_acc - test_acc``."""
    rows = []
    for norm, budget in (("batch", c.epochs_bn), (c.reference, c.epochs_ref)):
        for seed in range(family.protocol.seeds):
            run = family.run(norm, budget, seed)
            typical = torch.from_numpy(np.asarray(run.kinds) == "typical") if run.kinds else \
                torch.ones(run.masks.shape[1], dtype=torch.bool)
            correct, masks = correct_on_pool(run)[:, typical], run.masks[:, typical]
            test_acc = float(run.final_accuracy().test_acc.mean())
            rows.append(dict(norm=norm, budget=budget, seed=seed, mem=mean_memorization(run, ("typical",)),
                             in_acc=float(correct[masks].double().mean()),
                             out_acc=float(correct[~masks].double().mean()), test_acc=test_acc))
    table = pd.DataFrame(rows).groupby(["norm", "budget"], sort=False)[["mem", "in_acc", "out_acc", "test_acc"]].mean()
    table["in - out"] = table["in_acc"] - table["out_acc"]
    table["gap (in - test)"] = table["in_acc"] - table["test_acc"]
    return table


@dataclasses.dataclass
class SettingDetail:
    """Per-sample scores, per-kind means, exposure and canary learning curves of the runs that one
    comparison uses (BN at its budget, the reference at its budget)."""

    scores: pd.DataFrame
    groups: pd.DataFrame
    exposures: pd.DataFrame
    learning: pd.DataFrame


def setting_detail(family: TrainedFamily, c: Comparison, *, n_boot: int = 200, exposure_bits: float | None = None) -> SettingDetail:
    """Detail of the two sides of comparison ``c``, over all seeds."""
    scores, groups, exposures, learning = [], [], [], []
    for norm, budget in (("batch", c.epochs_bn), (c.reference, c.epochs_ref)):
        for seed in range(family.protocol.seeds):
            run = family.run(norm, budget, seed)
            s, g = run_memorization(run, n_boot=n_boot, seed=seed)
            tag = dict(norm=norm, seed=seed, budget=budget)
            scores.append(s.assign(**tag))
            groups.append(g.reset_index().assign(**tag))
            if run.logits_ref is not None:
                exposures.append(run_exposure(run, resolution_bits=exposure_bits).assign(**tag))
            learning.append(canary_curves(run.canary_history, run.masks, run.kinds).assign(**tag))
    concat = lambda frames: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return SettingDetail(concat(scores), concat(groups), concat(exposures), concat(learning))


def kind_table(detail: SettingDetail, kinds: list[str], norms: list[str]) -> pd.DataFrame:
    """Mean memorization per kind and norm: mean over seeds, sd over seeds and the widest per-run
    bootstrap range (resampling the models of one run)."""
    table = detail.groups.groupby(["kind", "norm"]).agg(mem=("mem", "mean"), sd_over_seeds=("mem", "std"),
                                                        boot_lo=("lo", "min"), boot_hi=("hi", "max"))
    return table.reindex(pd.MultiIndex.from_product([kinds, norms], names=["kind", "norm"]))


def exposure_table(detail: SettingDetail, kinds: list[str], norms: list[str]) -> pd.DataFrame:
    """Mean exposure of each canary kind in its IN and OUT models, and what training added."""
    table = (detail.exposures.groupby(["kind", "norm"])[["exposure_in", "exposure_out"]].mean()
             .reindex(pd.MultiIndex.from_product([kinds, norms], names=["kind", "norm"])))
    table["IN - OUT"] = table["exposure_in"] - table["exposure_out"]
    return table


def frequency_table(detail: SettingDetail, c: Comparison) -> pd.DataFrame:
    """Memorization of the typical samples of each class-frequency bucket
    (:func:`longtail.frequency_buckets`: the frequent, middle and rare third of the classes), with
    BN and with ``c.reference`` at comparison ``c``'s budgets, and BN − reference over seeds (paired
    by seed, Student-t 95% interval) with its reading: "not comparable: <reason>" when ``c`` is not
    evidence (a side that did not fit). Canaries are left out: their class is not a natural frequency."""
    reference = c.reference
    # Every run scores the whole pool, so the class counts of all rows rank the classes as the pool's do.
    scores = detail.scores.assign(bucket=frequency_buckets(detail.scores["label"], detail.scores["kind"]))
    scores = scores[scores.bucket != CANARY]
    per_seed = scores.groupby(["bucket", "norm", "seed"])["mem"].mean().unstack("norm")
    rows = []
    for bucket in [b for b in BUCKETS if b in per_seed.index.get_level_values("bucket")]:
        seeds = per_seed.loc[bucket]
        d = paired_difference(seeds["batch"], seeds[reference])
        in_bucket = scores[(scores.bucket == bucket) & (scores.norm == "batch") & (scores.seed == scores.seed.min())]
        rows.append({"class frequency": bucket, "classes": ", ".join(str(c) for c in sorted(in_bucket["label"].unique())),
                     "samples": len(in_bucket), "BN": seeds["batch"].mean(), reference: seeds[reference].mean(),
                     "BN − reference [95% CI]": fmt_interval(d["diff"], d["lo"], d["hi"]),
                     "reading": _seed_reading(d) if c.comparable else not_comparable(c.reason)})
    return pd.DataFrame(rows)


def _seed_reading(d: dict) -> str:
    """The reading of a paired difference over seeds; fewer than 3 seeds, or seeds that all agree
    to rounding (a zero-width interval), resolve nothing."""
    if d["n"] < 3 or not d["hi"] - d["lo"] > 1e-9:
        return f"{NOT_RESOLVED} ({d['n']} seeds)"
    return judge(d["lo"], d["hi"])


def frequency_sentence(table: pd.DataFrame, c: Comparison) -> str:
    """:func:`frequency_table` in one sentence, rare classes first; a comparison that is not
    evidence says so once, first, and its buckets give only their numbers."""
    guard = "" if c.comparable else f"These runs are not evidence ({not_comparable(c.reason)}). "
    parts = [f"{row['class frequency']} (classes {row['classes']}): {row['BN − reference [95% CI]']}"
             + (f", {row['reading']}" if c.comparable else "") for _, row in table.iloc[::-1].iterrows()]
    return guard + f"Memorization, BN − {c.reference} over seeds: " + "; ".join(parts) + "."


def most_memorized(detail: SettingDetail, norm: str, count: int = 10) -> pd.DataFrame:
    """The ``count`` most memorized pool samples of ``norm``'s first seed (index = pool index)."""
    per_sample = detail.scores[(detail.scores.norm == norm) & (detail.scores.seed == 0)].reset_index(drop=True)
    return per_sample.sort_values("mem", ascending=False).head(count)

"""Chapter 02's steps: canary memorization and exposure of the shared family, read through the
protocol's comparisons."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from .. import protocol
from ..memorization import canary_curves, memorization_scores, run_exposure, run_memorization
from ..reading import fmt_interval
from .sweep import Family, Measured, measure_family

KIND_ORDER = ["typical", "noise", "mislabeled", "ood", "atypical"]


def correct_on_pool(run) -> torch.Tensor:
    """``[models, pool]`` bool: each model's identity-query prediction on each pool sample is right."""
    return run.logits_pool[:, 0].argmax(-1) == run.y_pool


def mean_memorization(run, kinds=("noise", "mislabeled", "ood", "atypical")) -> float:
    """Mean memorization score of the pool samples of ``kinds`` in one run (all canaries by default)."""
    scores = memorization_scores(correct_on_pool(run), run.masks, n_boot=0)["mem"].to_numpy()
    chosen = np.isin(np.asarray(run.kinds), list(kinds))
    return float(np.nanmean(scores[chosen])) if chosen.any() else float("nan")


def kinds_present(fam: Family) -> list[str]:
    """The kinds of pool sample in this family, typical first."""
    present = set(fam.data.kinds or ["typical"])
    return [k for k in KIND_ORDER if k in present]


MEASURES = {"canaries": "canary memorization", "typical": "typical-sample memorization"}


def compare_memorization(fam: Family) -> Measured:
    """Mean memorization of the canaries (``values["canaries"]``) and of the typical samples
    (``values["typical"]``) of every run, compared BN vs the reference under the protocol."""
    measures = {"canaries": mean_memorization, "typical": lambda run: mean_memorization(run, ("typical",))}
    return measure_family(fam, measures, MEASURES, "BN memorizes more", setting_sentence)


def setting_sentence(values: dict[str, pd.DataFrame], c: protocol.Comparison) -> str:
    """What one comparison says about canary memorization, in words."""
    d = protocol.difference(values["canaries"], c)
    where = f"BN at {c.epochs_bn} epochs against {c.reference} at {c.epochs_ref}"
    number = fmt_interval(d["diff"], d["lo"], d["hi"])
    if not c.comparable:
        return (f"At {c.setting} ({where}), BN minus {c.reference} is {number}, but this comparison is "
                f"**not comparable** ({c.reason}) and is not evidence either way.")
    reading = protocol.reading(c, d["lo"], d["hi"], "BN memorizes more", "BN memorizes less")
    return (f"At {c.setting} ({where}), BN minus {c.reference} in mean canary memorization is {number} "
            f"(95% interval over {d['n']} seeds): **{reading}**.")


@dataclasses.dataclass
class SettingDetail:
    """Per-sample scores, per-kind means, exposure and canary learning curves of the runs that one
    comparison uses (BN at its budget, the reference at its budget)."""

    scores: pd.DataFrame
    groups: pd.DataFrame
    exposures: pd.DataFrame
    learning: pd.DataFrame


def setting_detail(fam: Family, c: protocol.Comparison, *, n_boot: int = 200, exposure_bits: float | None = None) -> SettingDetail:
    """Detail of the two sides of comparison ``c``, over all seeds."""
    scores, groups, exposures, learning = [], [], [], []
    for norm, budget in (("batch", c.epochs_bn), (c.reference, c.epochs_ref)):
        for seed in range(fam.protocol.seeds):
            run = fam.run(norm, budget, seed)
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


def most_memorized(detail: SettingDetail, norm: str, count: int = 10) -> pd.DataFrame:
    """The ``count`` most memorized pool samples of ``norm``'s first seed (index = pool index)."""
    per_sample = detail.scores[(detail.scores.norm == norm) & (detail.scores.seed == 0)].reset_index(drop=True)
    return per_sample.sort_values("mem", ascending=False).head(count)

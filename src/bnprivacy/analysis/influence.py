"""Chapter 03's steps: per-sample gradient norms of canaries and typical samples, recorded by the
probes of the shared family's runs, read through the protocol's comparisons."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .. import protocol
from ..memorization import run_memorization
from ..stats import t_interval
from .sweep import Family, Measured, measure_family

RATIOS = {"own ratio": "canary / typical own-gradient norm (a)",
          "loo ratio": "canary / typical leave-one-out influence (b)"}


def member_probes(run) -> pd.DataFrame:
    """The run's probe records of samples the probed model trains on (IN), with kind and group."""
    probes = run.probe_history
    if probes.empty:
        raise ValueError("this run has no gradient probes; set probe_points > 0 in the family parameters")
    probes = probes.assign(kind=[run.kinds[i] for i in probes["sample"]])
    probes["group"] = np.where(probes["kind"] == "typical", "typical", "canary")
    return probes[probes["member"].astype(bool)].reset_index(drop=True)


def ratios(probes: pd.DataFrame, by=("model",)) -> pd.DataFrame:
    """Mean canary norm / mean typical norm over training for (a) and (b), and the canaries' loo/own
    ratio (1 without coupling), per group of ``by``."""
    by = list(by)
    means = probes.groupby(by + ["group"])[["own", "loo"]].mean().unstack("group")
    return pd.DataFrame({
        "own ratio": means[("own", "canary")] / means[("own", "typical")],
        "loo ratio": means[("loo", "canary")] / means[("loo", "typical")],
        "loo / own (canaries)": means[("loo", "canary")] / means[("own", "canary")],
    }).reset_index()


def run_ratio(run, column: str) -> float:
    """One run's ratio ``column`` (see :func:`ratios`), averaged over its probed models."""
    return float(ratios(member_probes(run))[column].mean())


def compare_ratios(fam: Family) -> Measured:
    """The canary/typical gradient ratios of every run under the protocol's comparisons."""
    measures = {c: (lambda run, c=c: run_ratio(run, c)) for c in RATIOS}
    return measure_family(fam, measures, RATIOS, "BN makes canaries' gradients stand out more", setting_sentence,
                          digits=2)


def setting_sentence(values: dict[str, pd.DataFrame], c: protocol.Comparison) -> str:
    """What one comparison says about both ratios, in words."""
    from ..reading import fmt_interval

    parts = []
    for column, name in (("own ratio", "own gradient (a)"), ("loo ratio", "leave-one-out influence (b)")):
        d = protocol.difference(values[column], c)
        reading = protocol.reading(c, d["lo"], d["hi"], "larger with BN", "smaller with BN")
        parts.append(f"{name}: canary/typical ratio {d['batch']:.2f} with BN, {d['ref']:.2f} with {c.reference} "
                     f"(difference {fmt_interval(d['diff'], d['lo'], d['hi'], digits=2)}; {reading})")
    return f"At {c.setting} (BN at {c.epochs_bn} epochs, {c.reference} at {c.epochs_ref}), " + "; ".join(parts) + "."


def setting_probes(fam: Family, c: protocol.Comparison) -> pd.DataFrame:
    """Member probes of both sides of comparison ``c``, every seed, tagged with norm and seed."""
    frames = [member_probes(fam.run(norm, budget, seed)).assign(norm=norm, seed=seed)
              for norm, budget in (("batch", c.epochs_bn), (c.reference, c.epochs_ref))
              for seed in range(fam.protocol.seeds)]
    return pd.concat(frames, ignore_index=True)


def ratio_table(probes: pd.DataFrame, norms: list[str]) -> pd.DataFrame:
    """Per norm: each ratio's mean over seeds with its 95% t-interval over seeds, as text."""
    per_seed = ratios(probes, by=("norm", "seed"))
    table = pd.DataFrame(index=pd.Index(norms, name="norm"))
    for column in ["own ratio", "loo ratio", "loo / own (canaries)"]:
        cells = []
        for norm in norms:
            t = t_interval(per_seed[per_seed.norm == norm][column])
            cells.append(f"{t['mean']:.2f} [{t['lo']:.2f}, {t['hi']:.2f}]")
        table[column] = cells
    return table


def coupling(probes: pd.DataFrame) -> pd.Series:
    """Per norm: the canaries' leave-one-out influence over their own gradient (1 without coupling)."""
    return ratios(probes, by=("norm", "seed")).groupby("norm")["loo / own (canaries)"].mean()


@dataclasses.dataclass
class Link:
    """Per probed sample: mean gradient norms and memorization score; Spearman rho per norm."""

    table: pd.DataFrame
    rho: dict[str, float]


def gradient_memorization_link(fam: Family, c: protocol.Comparison, probes: pd.DataFrame) -> Link:
    """Each probed sample's mean own-gradient norm set against its memorization score in the same
    runs (averaged over seeds)."""
    from scipy import stats

    memo = []
    for norm, budget in (("batch", c.epochs_bn), (c.reference, c.epochs_ref)):
        for seed in range(fam.protocol.seeds):
            scores, _ = run_memorization(fam.run(norm, budget, seed), n_boot=0)
            memo.append(scores.assign(norm=norm, seed=seed, sample=np.arange(len(scores))))
    memo = pd.concat(memo).groupby(["norm", "sample"])[["mem"]].mean().reset_index()
    grads = probes.groupby(["norm", "sample", "kind"])[["own", "loo"]].mean().reset_index()
    table = grads.merge(memo, on=["norm", "sample"])
    rho = {norm: float(stats.spearmanr(g["own"], g["mem"]).statistic) for norm, g in table.groupby("norm")}
    return Link(table, rho)

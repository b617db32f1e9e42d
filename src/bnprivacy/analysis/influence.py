"""Chapter 03's steps: per-sample gradient norms of canaries and typical samples, recorded by the
probes of the shared family's runs, read through the protocol's comparisons."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..protocol.comparisons import Comparison
from ..protocol.measures import difference, read_comparison
from ..memorization import run_memorization
from ..stats import t_interval
from .family_steps import TrainedFamily, Measured, measure_family
from ..reading import fmt_interval

RATIOS = {"own ratio": "canary / typical own-gradient norm (a)",
          "loo ratio": "canary / typical leave-one-out influence (b)"}
# Equivalence margins of the ratios (stated in chapter 3): the largest difference that counts as none.
MARGINS = {"own ratio": (0.25, "a quarter of the ratio's unit: canaries standing out 25% of a typical gradient "
                               "more or less"),
           "loo ratio": (0.25, "the same scale as the own-gradient ratio")}


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


# Fewer probes than this per run make the chapter's rows exploratory: not read as evidence.
MIN_PROBE_MODELS, MIN_PROBE_POINTS = 4, 8


def exploratory(p) -> str:
    """Empty when a run's probes (``probe_models`` models x ``probe_points`` time points) are
    enough to read the ratios as evidence, else the words that mark the rows exploratory."""
    if p.probe_models >= MIN_PROBE_MODELS and p.probe_points >= MIN_PROBE_POINTS:
        return ""
    return (f"exploratory: gradient probes on {p.probe_models} model(s) x {p.probe_points} time points per run "
            f"(fewer than {MIN_PROBE_MODELS} x {MIN_PROBE_POINTS}); not read as evidence")


def compare_ratios(family: TrainedFamily, margins: dict[str, float]) -> Measured:
    """The canary/typical gradient ratios of every run under the protocol's comparisons, read at
    ``margins`` (``sweep.margins(MARGINS, ...)``); every row is :func:`exploratory` when the runs
    carry too few probes."""
    measures = {c: (lambda run, c=c: run_ratio(run, c)) for c in RATIOS}
    words = exploratory(family.protocol)
    rules = {c: (lambda comparison, d: words) for c in RATIOS}

    def sentence(values: dict[str, pd.DataFrame], c: Comparison) -> str:
        return setting_sentence(values, c, margins, words)

    return measure_family(family, measures, RATIOS, "BN makes canaries' gradients stand out more", sentence,
                          digits=2, resolution=rules, margins=margins)


def setting_sentence(values: dict[str, pd.DataFrame], c: Comparison, margins: dict[str, float],
                     exploratory_words: str = "") -> str:
    """What one comparison says about both ratios, in words."""
    parts = []
    for column, name in (("own ratio", "own gradient (a)"), ("loo ratio", "leave-one-out influence (b)")):
        d = difference(values[column], c)
        reading = read_comparison(c, d, margins[column], "larger with BN", "smaller with BN", exploratory_words)
        parts.append(f"{name}: canary/typical ratio {d['batch']:.2f} with BN, {d['ref']:.2f} with {c.reference} "
                     f"(difference {fmt_interval(d['diff'], d['lo'], d['hi'], digits=2)}; {reading})")
    return f"At {c.setting} ({c.where()}), " + "; ".join(parts) + "."


def setting_probes(family: TrainedFamily, c: Comparison) -> pd.DataFrame:
    """Member probes of both sides of comparison ``c``, every seed, tagged with norm and seed."""
    frames = [member_probes(family.run(norm, budget, seed)).assign(norm=norm, seed=seed)
              for norm, budget in (("batch", c.epochs_bn), (c.reference, c.epochs_ref))
              for seed in range(family.protocol.seeds)]
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


def gradient_memorization_link(family: TrainedFamily, c: Comparison, probes: pd.DataFrame) -> Link:
    """Each probed sample's mean own-gradient norm set against its memorization score in the same
    runs (averaged over seeds)."""
    from scipy import stats

    memo = []
    for norm, budget in (("batch", c.epochs_bn), (c.reference, c.epochs_ref)):
        for seed in range(family.protocol.seeds):
            scores, _ = run_memorization(family.run(norm, budget, seed), n_boot=0)
            memo.append(scores.assign(norm=norm, seed=seed, sample=np.arange(len(scores))))
    memo = pd.concat(memo).groupby(["norm", "sample"])[["mem"]].mean().reset_index()
    grads = probes.groupby(["norm", "sample", "kind"])[["own", "loo"]].mean().reset_index()
    table = grads.merge(memo, on=["norm", "sample"])
    rho = {norm: float(stats.spearmanr(g["own"], g["mem"]).statistic) for norm, g in table.groupby("norm")}
    return Link(table, rho)

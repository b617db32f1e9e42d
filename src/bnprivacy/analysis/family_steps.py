"""The family of shadow runs that chapters 01-04 share, built from their common parameters.

Chapters 01-04 declare the same family parameters (dataset, architecture, pool, canaries, models,
seeds, budgets, learning-rate grid, fit threshold, probes; their defaults and meanings are declared
once, in :class:`bnprivacy.analysis.parameters.FamilyParameters`) and call :func:`family_protocol` with them, so
they name the same runs in the store: whichever chapter runs first trains them, the others load
them. :func:`family_protocol` validates every parameter before anything is trained or written.
"""

from __future__ import annotations

import dataclasses
import math
import time

import pandas as pd

from .. import headlines
from ..config import Config, norm_order
from ..protocol.comparisons import compare_each, Comparison
from ..protocol.family import Protocol
from ..protocol.learning_rates import choose_learning_rates, chosen_agc, chosen_lr, grid_edge_lines
from ..protocol.measures import comparison_table, curves, fitting_pairings, measure_table, robustness
from ..protocol.sweep import run_sweep, Sweep
from .parameters import FAMILY_PARAMETERS  # declared once, with defaults and meanings: FamilyParameters
from ..data import load_dataset
from ..runs import shadow
from ..runs.chunks import check_chunk_size, is_run_complete
from ..runs.executor import ChunkJob, ExecutorOptions
from ..runs.shadow import training_seconds as run_seconds
from ..reading import NOT_AVAILABLE
from ..stats import check_margin
from ..training import resolve_device


# Chapter 01's equivalence margin (test accuracy in percent): the largest difference that counts as none.
ACCURACY_MARGINS = {"accuracy": (1.0, "one point of test accuracy, about the spread between seeds of one setting")}


def as_list(name: str, value) -> list:
    """A chapter's list parameter; a scalar becomes a one-element list (``-p norms batch``)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [value]
    raise ValueError(f"{name}={value!r} is not allowed; allowed values: a list, e.g. '[batch, none]'")


def check_family_names(given) -> None:
    """Refuse names that are not exactly :data:`FAMILY_PARAMETERS` (ValueError naming the
    missing and the unknown ones): a family built from other names would not be the chapters' runs."""
    missing = [name for name in FAMILY_PARAMETERS if name not in given]
    unknown = sorted(set(given) - set(FAMILY_PARAMETERS))
    problems = []
    if missing:
        problems.append(f"the family parameters {missing} are missing")
    if unknown:
        problems.append(f"{unknown} are not family parameters")
    if problems:
        raise ValueError(f"family_protocol(): {'; '.join(problems)}; pass exactly these names: {', '.join(FAMILY_PARAMETERS)} "
                         "(their defaults: bnprivacy.analysis.parameters.defaults())")


def family_protocol(**values) -> Protocol:
    """The shared family's :class:`protocol.family.Protocol` from exactly the family parameters by keyword,
    as :class:`bnprivacy.analysis.parameters.FamilyParameters` declares them (e.g.
    ``family_protocol(**parameters.defaults())``). Validated: a missing or unknown name, or a bad value,
    raises ``ValueError`` naming it before any training."""
    check_family_names(values)
    norms = as_list("norms", values["norms"])  # checked first, as always: its error wins over Config's
    config = {name: values[name] for name in ("dataset", "arch", "width", "train_size", "imbalance", "canaries",
                                              "canary_references", "batch_size", "lr", "weight_decay",
                                              "label_smoothing", "augment", "precision", "device")}
    protocol_only = {name: values[name] for name in ("fit_threshold", "seeds", "n_models", "equal_epochs",
                                                     "probe_points", "probe_typical", "probe_models")}
    return Protocol(Config(**config), norms=tuple(norm_order(norms)),
                    budgets=tuple(as_list("budgets", values["budgets"])),
                    lr_grid=tuple(as_list("lr_grid", values["lr_grid"])),
                    agc_grid=tuple(as_list("agc_grid", values["agc_grid"])),
                    widths=tuple(as_list("widths", values["widths"])), **protocol_only)


@dataclasses.dataclass
class TrainedFamily:
    """The trained family: data, sweep, and the comparisons of BN with the reference."""

    protocol: Protocol
    data: object
    sweep: Sweep
    comparisons: list[Comparison]
    seconds: float

    def comparison(self, setting: str, reference: str | None = None) -> Comparison:
        """The comparison of BN with ``reference`` (the protocol's first reference unless named)
        standing for ``setting`` (possibly merged with another that reads the same runs)."""
        reference = reference or self.protocol.reference
        return next(c for c in self.comparisons if setting in c.settings and c.reference == reference)

    def primary(self) -> list[Comparison]:
        """The comparisons with the protocol's first reference, the one the detail sections read."""
        return [c for c in self.comparisons if c.reference == self.protocol.reference]

    def run(self, norm: str, budget: int, seed: int):
        return self.sweep.run(norm, budget, seed)


def train_family(p: Protocol, *, progress: bool = True) -> TrainedFamily:
    """Load the data, choose each norm's learning rate, train (or load) every run of the family,
    and make the comparisons (``protocol.comparisons.compare_each``)."""
    started = time.perf_counter()
    data = load_dataset(p.base, resolve_device(p.base))
    sweep = run_sweep(p, data, progress=progress)
    return TrainedFamily(p, data, sweep, compare_each(sweep), time.perf_counter() - started)


def setting_table(family: TrainedFamily, *, profile: str, hardware: str) -> pd.DataFrame:
    """The one-row table at the top of a chapter: profile, data, pool, models, budgets, hardware."""
    data, p = family.data, family.protocol
    canaries = sum(k != "typical" for k in (data.kinds or []))
    return pd.DataFrame({
        "profile": [profile], "dataset": [p.base.dataset],
        "pool / test": [f"{len(data.y_train)} ({canaries} canaries) / {len(data.y_test)}"],
        "architecture": [f"{p.base.arch} (width {p.base.width or 'default'})"],
        "runs": [f"{len(p.norms)} norms x {len(p.budgets)} budgets x {p.seeds} seeds, {p.n_models} models each"],
        "hardware": [hardware]})


def sides_table(family: TrainedFamily) -> pd.DataFrame:
    """Per norm and budget: the chosen learning rate, IN (train) and test accuracy, and fit."""
    sides = family.sweep.sides()
    return sides[["norm", "budget", "lr", "train_acc", "test_acc", "test_acc_sd", "fit", "trained"]]


def sides_shown(family: TrainedFamily) -> pd.DataFrame:
    """:func:`sides_table` for a reader: words for columns, accuracies in percent."""
    sides = sides_table(family)
    return pd.DataFrame({
        "norm": sides["norm"], "epochs": sides["budget"], "learning rate": sides["lr"].map("{:g}".format),
        "IN accuracy %": (100 * sides["train_acc"]).map("{:.1f}".format),
        "test accuracy % (sd over seeds)": [f"{100 * m:.1f} ({100 * sd:.1f})" if sd == sd else f"{100 * m:.1f}"
                                            for m, sd in zip(sides["test_acc"], sides["test_acc_sd"])],
        "fits": sides["fit"].map({True: "yes", False: "no"}),
        "trained": sides["trained"].map({True: "yes", False: "no"})})


def points_shown(family: TrainedFamily) -> pd.DataFrame:
    """Every point (width, budget) of every norm, ladder and width grid, for a reader: test and IN
    accuracy, clean loss and logit margin on IN and OUT samples (``protocol.sweep.STATE``, means
    over seeds), and whether it fits; the frontier settings read the points that fit."""
    points = family.sweep.points()
    shown = pd.DataFrame({
        "norm": points["norm"], "width": points["width"].map("x{:g}".format), "epochs": points["budget"],
        "test accuracy %": (100 * points["test_acc"]).map("{:.1f}".format),
        "IN accuracy %": (100 * points["train_acc"]).map("{:.1f}".format)})
    for column, label in (("in_loss", "clean loss IN"), ("out_loss", "clean loss OUT"),
                          ("in_margin", "margin IN"), ("out_margin", "margin OUT")):
        shown[label] = points[column].map("{:.3f}".format) if column in points else NOT_AVAILABLE
    shown["fits"] = points["fit"].map({True: "yes", False: "no"})
    return shown


def comparison_sentence(c: Comparison) -> str:
    """One sentence per comparison: the runs it reads, both sides' state, and whether it is evidence."""
    head = (f"**{c.setting}**: {c.where()}; BN at lr {c.lr_bn:g} (IN accuracy {100 * c.train_acc_bn:.1f}%, test "
            f"{100 * c.test_acc_bn:.1f}%{_loss_words(c.in_loss_bn)}) against {c.reference} at lr {c.lr_ref:g} "
            f"(IN {100 * c.train_acc_ref:.1f}%, test {100 * c.test_acc_ref:.1f}%{_loss_words(c.in_loss_ref)})")
    verdict = "comparable" if c.comparable else f"**not comparable**: {c.reason}"
    return f"{head}; {verdict}." + (f" {c.note[0].upper()}{c.note[1:]}." if c.note else "")


def _loss_words(loss: float) -> str:
    return "" if math.isnan(loss) else f", clean IN loss {loss:.3f}"


def comparisons_markdown(family: TrainedFamily) -> str:
    """The comparisons as a Markdown list (glued into each chapter)."""
    return "\n".join(f"- {comparison_sentence(c)}" for c in family.comparisons)


def training_seconds(family: TrainedFamily) -> float:
    """Seconds the family's shadow models trained for when they were trained (the learning-rate
    choice not included), whether this call trained them or loaded them."""
    return sum(run_seconds(run) for _, run in family.sweep.every_run())


def epochs_to_fit(family: TrainedFamily) -> dict[str, float]:
    """Each norm's smallest budget that fits (NaN when none does)."""
    sides = family.sweep.sides()
    out = {}
    for norm, group in sides.groupby("norm", sort=False):
        fitting = group[group.fit].budget
        out[norm] = float(fitting.min()) if len(fitting) else math.nan
    return out


# A reference "trains as well as BN" when its best test accuracy is within this many points of BN's
# (issue 39's target): closer than the 5-11 points by which no normalisation fell short.
REFERENCE_TARGET_POINTS = 2.0


def best_accuracies(family: TrainedFamily) -> pd.DataFrame:
    """Per norm: the best mean test accuracy (over seeds) among the points (width, budget) at which
    it fits and trained, the width multiplier, budget and learning rate it was reached at, its
    clean IN loss there, and whether it fits at all (when it never does, its best point is shown,
    flagged). Accuracies in percent."""
    rows = []
    for norm, group in family.sweep.points().groupby("norm", sort=False):
        usable = group[group.fit & group.trained]
        pick = (usable if len(usable) else group).sort_values(["test_acc", "budget", "width"],
                                                              ascending=[False, True, True]).iloc[0]
        rows.append({"norm": norm, "test accuracy %": 100 * float(pick.test_acc), "width": float(pick.width),
                     "epochs": int(pick.budget), "lr": float(pick.lr),
                     "clean IN loss": float(pick.get("in_loss", math.nan)), "fits": bool(len(usable))})
    return pd.DataFrame(rows)


def reference_gap_markdown(family: TrainedFamily, target: float = REFERENCE_TARGET_POINTS) -> str:
    """Whether a reference trains as well as BN here: each reference's best test accuracy against
    BN's (:func:`best_accuracies`), and the shortfall of the best one beyond ``target`` points,
    after the learning-rate search of its grid."""
    best = best_accuracies(family).set_index("norm")
    bn = best.loc["batch", "test accuracy %"]
    refs = [n for n in family.protocol.references if n in best.index]
    parts = [f"{n} {best.loc[n, 'test accuracy %']:.1f}% ({_where(best.loc[n])}, lr "
             f"{best.loc[n, 'lr']:g}{'' if best.loc[n, 'fits'] else ', does not fit'})" for n in refs]
    top = max(refs, key=lambda n: best.loc[n, "test accuracy %"])
    gap = bn - best.loc[top, "test accuracy %"]
    head = (f"Best test accuracy at a fitting point: BN {bn:.1f}% ({_where(best.loc['batch'])}); "
            + "; ".join(parts) + ". ")
    if gap <= target:
        return head + (f"The closest reference, **{top}**, is within {target:g} points of BN ({gap:+.1f} points "
                       "behind; negative: ahead), so it trains as well as BN by this book's rule.")
    grid = ", ".join(f"{m:g}" for m in family.protocol.lr_grid)
    return head + (f"**No reference gets within {target:g} points of BN:** the closest, {top}, falls short by "
                   f"{gap:.1f} points, after the search of the learning-rate grid x{grid} of the base rate "
                   f"{family.protocol.base.lr:g} on the validation split.")


def _where(best: pd.Series) -> str:
    """Where a norm reached its best accuracy: "20 epochs", or "20 epochs at width x2"."""
    return f"{best['epochs']} epochs" + ("" if best["width"] == 1 else f" at width x{best['width']:g}")


def protocol_from(parameters: dict) -> Protocol:
    """:func:`family_protocol` from a chapter's namespace (``globals()``): takes exactly the family
    parameters, so chapters 01-04 cannot drift apart in what they pass."""
    missing = [name for name in FAMILY_PARAMETERS if name not in parameters]
    if missing:
        raise ValueError(f"the chapter does not define the family parameters {missing}; declare them in its "
                         "parameters cell with the defaults and meanings of "
                         "bnprivacy.analysis.parameters.FamilyParameters")
    return family_protocol(**{name: parameters[name] for name in FAMILY_PARAMETERS})


def train_family_shard(p: Protocol, *, shard: str = "0/1", chunk_size: int = 16, progress: bool = True,
                       executor: str = "local", address: str | None = None, cpus_per_task: int | None = None,
                       max_retries: int = 2) -> tuple[int, int]:
    """Train shard ``i/k`` of every run of the family (``python -m bnprivacy family``), for jobs
    that share one results folder; returns (runs complete, runs in the family). The learning-rate
    choice is deterministic, so every shard chooses the same rates. ``executor="ray"`` chooses the
    rates here, then trains every missing chunk of every run as Ray tasks at once (the options of
    :func:`bnprivacy.runs.shadow.shadow_run`)."""
    options = ExecutorOptions(shard, address, cpus_per_task, max_retries)
    runner = shadow.executor_for(executor, options)
    check_chunk_size(chunk_size)
    data = load_dataset(p.base, resolve_device(p.base))
    lr_table = choose_learning_rates(p, data, progress=progress)
    for line in grid_edge_lines(lr_table):
        print(f"warning: {line}")  # before the long training, while extending the grid is still cheap
    lrs, agcs = chosen_lr(lr_table), chosen_agc(lr_table)
    keys = [(n, w, b, s) for n in p.norms for w, b in p.points for s in range(p.seeds)]
    specs = [p.spec(norm, budget, lrs[norm], seed, len(data.y_train), agcs[norm], width)
             for norm, width, budget, seed in keys]
    runs = shadow.train_runs(specs, data, chunk_size, runner, options, ChunkJob(progress=progress))
    return sum(is_run_complete(run.folder, run.spec.n_models, chunk_size) for run in runs), len(keys)


@dataclasses.dataclass
class Measured:
    """Measures of every run of the family (one table per measure, keyed by a short name), their
    curves, comparison tables, headline rows, and one sentence per comparison setting."""

    values: dict[str, pd.DataFrame]
    curves: dict[str, pd.DataFrame]
    tables: dict[str, pd.DataFrame]
    rows: list[dict]
    sentences: dict[tuple[str, str], str]  # by (setting, reference)
    pairings: dict[str, pd.DataFrame]
    robust: dict[str, str]


def sentences_markdown(measured: "Measured") -> str:
    """One bullet per comparison: what it finds (a chapter glues this list)."""
    return "\n".join(f"- {sentence}" for sentence in measured.sentences.values())


def margins(defaults: dict[str, tuple[float, str]], given) -> dict[str, float]:
    """A chapter's equivalence margins: ``defaults`` (``{measure key: (margin, reason)}``) with the
    chapter's ``margins`` parameter (``{key: margin}``) overriding. Unknown keys and margins that
    are not numbers > 0 are refused before any work starts."""
    if not isinstance(given, dict):
        raise ValueError(f"margins={given!r} is not allowed; allowed values: a mapping of measure to margin, "
                         f"e.g. '{{{next(iter(defaults))}: {next(iter(defaults.values()))[0]}}}'")
    unknown = [k for k in given if k not in defaults]
    if unknown:
        raise ValueError(f"margins {unknown} are not measures of this chapter; allowed keys: {list(defaults)}")
    chosen = {key: given.get(key, margin) for key, (margin, _) in defaults.items()}
    for key, value in chosen.items():
        check_margin(f"margins[{key!r}]", value)
    return chosen


def margins_markdown(defaults: dict[str, tuple[float, str]], chosen: dict[str, float], names: dict[str, str]) -> str:
    """The chapter's margins with their reasons, one bullet each (for the chapter's prose)."""
    return "\n".join(f"- {names.get(k, k)}: ±{chosen[k]:g} ("
                      + (reason if chosen[k] == margin else "set by the reader with -p margins") + ")"
                      for k, (margin, reason) in defaults.items())


def measure_family(family: TrainedFamily, measures: dict, names: dict[str, str], higher_means: str, sentence,
                   digits: int = 3, resolution: dict | None = None, *, margins: dict[str, float],
                   claim_signs: dict[str, int] | None = None, printed: dict[str, dict] | None = None) -> Measured:
    """Compute each ``measures[key](run) -> float`` on every run and read it through the
    protocol's comparisons; ``names[key]`` is the measure's name in the headline rows,
    ``margins[key]`` its equivalence margin (:func:`margins`), and ``sentence(values,
    comparison)`` says what one comparison finds. ``resolution[key]`` (optional,
    ``headlines.headline_rows``) says when the measure cannot resolve a comparison, and
    ``claim_signs[key]`` (default +1) which sign of BN − reference the claim predicts.
    ``printed[key]`` (optional) changes how the chapter's table prints a measure: ``digits``,
    ``scale`` and ``unit`` of ``protocol.measures.comparison_table`` (a rate in percent, say)."""
    resolution = resolution or {}
    claim_signs = claim_signs or {}
    values = {key: measure_table(family.sweep, fn) for key, fn in measures.items()}
    references, primary = family.protocol.references, family.protocol.reference
    # every reference's robustness line goes into its own rows; the chapter shows the primary one's
    pairings_by = {(key, ref): fitting_pairings(family.sweep, values[key], ref)
                   for key in measures for ref in references}
    robust_by = {pair: robustness(table) for pair, table in pairings_by.items()}
    pairings = {key: pairings_by[(key, primary)] for key in measures}
    robust = {key: robust_by[(key, primary)] for key in measures}
    rows = [row for key in measures for ref in references
            for row in headlines.headline_rows(values[key], [c for c in family.comparisons if c.reference == ref],
                                              names[key], higher_means, robust_by[(key, ref)], resolution.get(key),
                                              margin=margins[key], claim_sign=claim_signs.get(key, 1))]
    return Measured(values, {k: curves(v) for k, v in values.items()},
                    {k: comparison_table(v, family.comparisons, margin=margins[k], resolution=resolution.get(k),
                                                  **{"digits": digits, **(printed or {}).get(k, {})})
                     for k, v in values.items()},
                    rows, sentences_of(family, lambda c: sentence_for(sentence, values, c)), pairings, robust)


def sentences_of(family: TrainedFamily, say) -> dict[tuple[str, str], str]:
    """``say(c)`` for every comparison, keyed by (setting, reference)."""
    return {(c.setting, c.reference): say(c) for c in family.comparisons}


def sentence_for(sentence, values: dict[str, pd.DataFrame], c: Comparison) -> str:
    """``sentence(values, c)``, or for a comparison with nothing to measure (a frontier refused
    before reading any run) the sentence that says why, instead of numbers that are all NaN."""
    if c.measurable:
        return sentence(values, c)
    return f"At {c.setting} ({c.where()}): **not comparable** ({c.reason}); there is nothing to measure."

"""The family of shadow runs that chapters 01-04 share, built from their common parameters.

Chapters 01-04 declare the same family parameters (dataset, architecture, pool, canaries, models,
seeds, budgets, learning-rate grid, fit threshold, probes) and call :func:`family` with them, so
they name the same runs in the store: whichever chapter runs first trains them, the others load
them. :func:`family` validates every parameter before anything is trained or written.
"""

from __future__ import annotations

import dataclasses
import math
import time

import pandas as pd

from .. import protocol
from ..config import Config
from ..protocol import Comparison, Protocol, Sweep

# The parameters that define the shared family; a chapter passes exactly these to ``family``.
FAMILY_PARAMETERS = ("dataset", "arch", "width", "train_size", "norms", "canaries", "canary_references",
                     "n_models", "seeds", "budgets", "equal_epochs", "lr", "lr_grid", "fit_threshold",
                     "batch_size", "weight_decay", "augment", "probe_points", "probe_typical", "probe_models", "precision", "device")


# Chapter 01's equivalence margin (test accuracy in percent): the largest difference that counts as none.
ACCURACY_MARGINS = {"accuracy": (1.0, "one point of test accuracy, about the spread between seeds of one setting")}


def as_list(name: str, value) -> list:
    """A chapter's list parameter; a scalar becomes a one-element list (``-p norms batch``)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [value]
    raise ValueError(f"{name}={value!r} is not allowed; allowed values: a list, e.g. '[batch, none]'")


def family(*, dataset, arch, width, train_size, norms, canaries, canary_references, n_models, seeds,
           budgets, equal_epochs, lr, lr_grid, fit_threshold, batch_size, weight_decay, augment, probe_points,
           probe_typical, probe_models, precision, device) -> Protocol:
    """The shared family's :class:`protocol.Protocol` from the chapters' parameters (validated:
    a bad value raises ``ValueError`` naming it before any training)."""
    from ..plots import norm_order

    norms = as_list("norms", norms)
    base = Config(dataset=dataset, arch=arch, width=width, train_size=train_size, canaries=canaries,
                  canary_references=canary_references, batch_size=batch_size, lr=lr,
                  weight_decay=weight_decay, augment=augment, precision=precision, device=device)
    return Protocol(base, norms=tuple(norm_order(norms)),
                    budgets=tuple(as_list("budgets", budgets)), lr_grid=tuple(as_list("lr_grid", lr_grid)),
                    fit_threshold=fit_threshold, seeds=seeds, n_models=n_models, equal_epochs=equal_epochs,
                    probe_points=probe_points, probe_typical=probe_typical, probe_models=probe_models)


@dataclasses.dataclass
class Family:
    """The trained family: data, sweep, and the comparisons of BN with the reference."""

    protocol: Protocol
    data: object
    sweep: Sweep
    comparisons: list[Comparison]
    seconds: float

    def comparison(self, setting: str) -> Comparison:
        """The comparison standing for ``setting`` (possibly merged with another that reads the same runs)."""
        return next(c for c in self.comparisons if setting in c.settings)

    def run(self, norm: str, budget: int, seed: int):
        return self.sweep.run(norm, budget, seed)


def train_family(p: Protocol, *, progress: bool = True) -> Family:
    """Load the data, choose each norm's learning rate, train (or load) every run of the family,
    and make the comparisons (``protocol.compare``)."""
    from ..data import load_dataset
    from ..training import resolve_device

    started = time.perf_counter()
    data = load_dataset(p.base, resolve_device(p.base))
    sweep = protocol.run_sweep(p, data, progress=progress)
    return Family(p, data, sweep, protocol.compare(sweep), time.perf_counter() - started)


def setting_table(fam: Family, *, profile: str, hardware: str) -> pd.DataFrame:
    """The one-row table at the top of a chapter: profile, data, pool, models, budgets, hardware."""
    data, p = fam.data, fam.protocol
    canaries = sum(k != "typical" for k in (data.kinds or []))
    return pd.DataFrame({
        "profile": [profile], "dataset": [p.base.dataset],
        "pool / test": [f"{len(data.y_train)} ({canaries} canaries) / {len(data.y_test)}"],
        "architecture": [f"{p.base.arch} (width {p.base.width or 'default'})"],
        "runs": [f"{len(p.norms)} norms x {len(p.budgets)} budgets x {p.seeds} seeds, {p.n_models} models each"],
        "hardware": [hardware]})


def sides_table(fam: Family) -> pd.DataFrame:
    """Per norm and budget: the chosen learning rate, IN (train) and test accuracy, and fit."""
    sides = fam.sweep.sides()
    return sides[["norm", "budget", "lr", "train_acc", "test_acc", "test_acc_sd", "fit", "trained"]]


def comparison_sentence(c: Comparison) -> str:
    """One sentence per comparison: the runs it reads, both sides' state, and whether it is evidence."""
    head = (f"**{c.setting}**: {c.where()}; BN at lr {c.lr_bn:g} (IN accuracy {c.train_acc_bn:.3f}, test "
            f"{c.test_acc_bn:.3f}) against {c.reference} at lr {c.lr_ref:g} (IN {c.train_acc_ref:.3f}, test "
            f"{c.test_acc_ref:.3f})")
    verdict = "comparable" if c.comparable else f"**not comparable**: {c.reason}"
    return f"{head}; {verdict}." + (f" {c.note[0].upper()}{c.note[1:]}." if c.note else "")


def comparisons_markdown(fam: Family) -> str:
    """The comparisons as a Markdown list (glued into each chapter)."""
    return "\n".join(f"- {comparison_sentence(c)}" for c in fam.comparisons)


def training_seconds(fam: Family) -> float:
    """Seconds the family's shadow models trained for when they were trained (the learning-rate
    choice not included), whether this call trained them or loaded them."""
    from ..store import training_seconds as run_seconds

    return sum(run_seconds(run) for run in fam.sweep.runs.values())


def epochs_to_fit(fam: Family) -> dict[str, float]:
    """Each norm's smallest budget that fits (NaN when none does)."""
    sides = fam.sweep.sides()
    out = {}
    for norm, group in sides.groupby("norm", sort=False):
        fitting = group[group.fit].budget
        out[norm] = float(fitting.min()) if len(fitting) else math.nan
    return out


def family_from(parameters: dict) -> Protocol:
    """:func:`family` from a chapter's namespace (``globals()``): takes exactly the family
    parameters, so chapters 01-04 cannot drift apart in what they pass."""
    missing = [name for name in FAMILY_PARAMETERS if name not in parameters]
    if missing:
        raise ValueError(f"the chapter does not define the family parameters {missing}")
    return family(**{name: parameters[name] for name in FAMILY_PARAMETERS})


def train_family_shard(p: Protocol, *, shard: str = "0/1", chunk_size: int = 16, progress: bool = True,
                       executor: str = "local", address: str | None = None, cpus_per_task: int | None = None,
                       max_retries: int = 2) -> tuple[int, int]:
    """Train shard ``i/k`` of every run of the family (``python -m bnprivacy family``), for jobs
    that share one results folder; returns (runs complete, runs in the family). The learning-rate
    choice is deterministic, so every shard chooses the same rates. ``executor="ray"`` chooses the
    rates here, then trains every missing chunk of every run as Ray tasks at once (the options of
    :func:`bnprivacy.store.shadow_run`)."""
    from .. import executors, store
    from ..data import load_dataset
    from ..training import resolve_device

    store.parse_shard(shard)
    executors.check_executor(executor, shard, address, cpus_per_task, max_retries)
    store.check_chunk_size(chunk_size)
    data = load_dataset(p.base, resolve_device(p.base))
    lrs = protocol.chosen_lr(protocol.choose_learning_rates(p, data, progress=progress))
    keys = [(n, b, s) for n in p.norms for b in p.budgets for s in range(p.seeds)]
    specs = [p.spec(norm, budget, lrs[norm], seed, len(data.y_train)) for norm, budget, seed in keys]
    if executor == "ray":
        runs = executors.train_runs_on_ray(specs, data, chunk_size, address=address, cpus_per_task=cpus_per_task,
                                           max_retries=max_retries, progress=progress)
        return sum(store.is_run_complete(run.folder, run.spec.n_models, chunk_size) for run in runs), len(keys)
    complete = sum(store.shadow_run(spec, data, chunk_size=chunk_size, shard=shard, progress=progress) is not None
                   for spec in specs)
    return complete, len(keys)


@dataclasses.dataclass
class Measured:
    """Measures of every run of the family (one table per measure, keyed by a short name), their
    curves, comparison tables, headline rows, and one sentence per comparison setting."""

    values: dict[str, pd.DataFrame]
    curves: dict[str, pd.DataFrame]
    tables: dict[str, pd.DataFrame]
    rows: list[dict]
    sentences: dict[str, str]
    pairings: dict[str, pd.DataFrame]
    robust: dict[str, str]


def sentences_markdown(measured: "Measured") -> str:
    """One bullet per comparison: what it finds (a chapter glues this list)."""
    return "\n".join(f"- {sentence}" for sentence in measured.sentences.values())


def margins(defaults: dict[str, tuple[float, str]], given) -> dict[str, float]:
    """A chapter's equivalence margins: ``defaults`` (``{measure key: (margin, reason)}``) with the
    chapter's ``margins`` parameter (``{key: margin}``) overriding. Unknown keys and margins that
    are not numbers > 0 are refused before any work starts."""
    from ..stats import check_margin

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


def measure_family(fam: Family, measures: dict, names: dict[str, str], higher_means: str, sentence,
                   digits: int = 3, resolution: dict | None = None, *, margins: dict[str, float],
                   claim_signs: dict[str, int] | None = None) -> Measured:
    """Compute each ``measures[key](run) -> float`` on every run and read it through the
    protocol's comparisons; ``names[key]`` is the measure's name in the headline rows,
    ``margins[key]`` its equivalence margin (:func:`margins`), and ``sentence(values,
    comparison)`` says what one comparison finds. ``resolution[key]`` (optional,
    ``protocol.headline_rows``) says when the measure cannot resolve a comparison, and
    ``claim_signs[key]`` (default +1) which sign of BN − reference the claim predicts."""
    resolution = resolution or {}
    claim_signs = claim_signs or {}
    values = {key: protocol.measure_table(fam.sweep, fn) for key, fn in measures.items()}
    pairings = {key: protocol.fitting_pairings(fam.sweep, v, fam.protocol.reference) for key, v in values.items()}
    robust = {key: protocol.robustness(table) for key, table in pairings.items()}
    rows = [row for key in measures
            for row in protocol.headline_rows(values[key], fam.comparisons, names[key], higher_means, robust[key],
                                              resolution.get(key), margin=margins[key],
                                              claim_sign=claim_signs.get(key, 1))]
    return Measured(values, {k: protocol.curves(v) for k, v in values.items()},
                    {k: protocol.comparison_table(v, fam.comparisons, margin=margins[k], digits=digits,
                                                  resolution=resolution.get(k))
                     for k, v in values.items()},
                    rows, {c.setting: sentence_for(sentence, values, c) for c in fam.comparisons}, pairings, robust)


def sentence_for(sentence, values: dict[str, pd.DataFrame], c: Comparison) -> str:
    """``sentence(values, c)``, or for a comparison with nothing to measure (a frontier refused
    before reading any run) the sentence that says why, instead of numbers that are all NaN."""
    if c.measurable:
        return sentence(values, c)
    return f"At {c.setting} ({c.where()}): **not comparable** ({c.reason}); there is nothing to measure."

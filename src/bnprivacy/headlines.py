"""Each chapter's headline comparison (BN against no normalisation), saved for the verdict chapter.

A chapter calls :func:`record_rows` with one row per comparison it concludes on; chapter 07 reads every
chapter's rows back with :func:`load` and puts them in one table. The rows live in
``results/headlines/<profile>/<chapter>.json`` (written atomically), so the verdict always shows what
the chapters last measured under that profile, with the dataset and architecture they ran on.
"""
from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pandas as pd

import math

from .protocol.comparisons import FIELDS, SAME_RUNS, STATE_FIELDS, Comparison
from .protocol.comparisons import SETTINGS as PROTOCOL_SETTINGS
from .protocol.measures import difference, interval_words
from .protocol.sweep import STATE
from .reading import decide, not_comparable
from .stats import check_margin, difference_p, equivalence_p, holm, paired_difference, standard_error
from .runs.disk import results_folder, save_json, write_atomic

# The protocol's comparisons (the ``protocol`` package), DP-SGD against its non-private twin, and the theory
# chapter's linear-model simulation.
SETTINGS = (*PROTOCOL_SETTINGS, "mitigation", "simulation")
TESTS = ("margin", "df", "p", "p_equivalence", "p_holm", "p_equivalence_holm", "reading")
# Which sign of BN − reference the claim under test predicts for a measure: +1 (BN higher, e.g.
# more memorization, a stronger attack), -1 (BN lower, e.g. fewer epochs to memorize), 0 (a row
# shown beside the claim but not a test of it, e.g. typical-sample memorization).
CLAIM_SIGNS = (1, -1, 0)
COLUMNS = ["chapter", "measure", "setting", "reference", "runs", "batch", "ref", "diff", "lo", "hi", "interval",
           "higher_means", "claim_sign", *FIELDS, "resolution", "robustness", *TESTS, "dataset", "arch",
           "profile"]


def headline_row(measure: str, setting: str, batch: float, ref: float, diff: float, lo: float,
                 hi: float, interval: str, higher_means: str, reference: str = "none", *,
                 comparison=None, robustness: str = "", resolution: str = "", margin: float,
                 df: float, claim_sign: int = 1) -> dict:
    """One comparison of BN with a reference (no normalisation unless ``reference`` names another,
    e.g. "group"): values with BN (``batch``) and with the reference (``ref``), ``diff`` =
    BN − reference with its 95% interval.

    ``interval`` says what the interval is (method, replicates, degrees of freedom);
    ``higher_means`` what a positive difference would mean (e.g. "BN memorizes more"). ``margin``
    (> 0, in the measure's units) is the largest difference that counts as no difference; ``df``
    the interval's degrees of freedom (``math.inf`` for a bootstrap interval, read as normal). The
    row carries the two unadjusted tests (``p``: no difference; ``p_equivalence``: TOST within
    ±margin); :func:`adjust` adds the Holm-adjusted ones and the reading across all rows.
    ``comparison`` (a ``protocol.comparisons.Comparison``) is required for every setting but "simulation": its
    comparability fields (budgets, learning rates, train and test accuracy of both sides, fit,
    ``comparable`` and the ``reason`` when not) go into the row, so the verdict never reads a row
    whose sides did not train. ``robustness`` says whether the sign holds at every pair of budgets
    at which both sides fit (``protocol.measures.robustness``). ``resolution`` is empty, or says why the
    measure cannot resolve the comparison ("not resolvable with n non-members", "not resolved:
    within the null spread"); such a row is read as that, never as evidence. ``claim_sign`` is
    the sign of the difference the claim under test predicts (:data:`CLAIM_SIGNS`).
    """
    if claim_sign not in CLAIM_SIGNS or isinstance(claim_sign, bool):
        raise ValueError(f"claim_sign={claim_sign!r} is not allowed; allowed values: {CLAIM_SIGNS}")
    if any(part not in SETTINGS for part in setting.split(SAME_RUNS)):
        raise ValueError(f"setting {setting!r} is not one of {SETTINGS} (or several joined by {SAME_RUNS!r})")
    if comparison is None and setting != "simulation":
        raise ValueError(f"a {setting!r} row compares trained models and needs its comparison "
                         "(protocol.comparisons.Comparison) for the comparability fields")
    check_margin(f"margin of {measure!r}", margin)
    values = {"batch": batch, "ref": ref, "diff": diff, "lo": lo, "hi": hi}
    row = {"measure": measure, "setting": setting, "interval": interval, "higher_means": higher_means,
           "reference": reference, "robustness": robustness, "resolution": resolution, "claim_sign": claim_sign}
    row.update({key: float(value) for key, value in values.items()})
    if comparison is not None:
        fields = comparison.fields()
        row.update({k: (v.item() if hasattr(v, "item") else v) for k, v in fields.items()})
        row["runs"] = comparison.runs
    else:
        row.update({"comparable": True, "reason": "", "runs": ""})
    row.update(row_tests(row["diff"], row["lo"], row["hi"], float(df), float(margin)))
    return row


def row_tests(diff: float, lo: float, hi: float, df: float, margin: float) -> dict:
    """``{margin, df, p, p_equivalence}`` of a difference with its 95% interval: the standard error
    is read off the interval (exact for a Student-t interval with ``df`` degrees of freedom), NaN
    p-values where there is no interval. ``margin`` NaN (a row recorded before margins) gives no
    equivalence test."""
    se = standard_error(lo, hi, df) if df > 0 and math.isfinite(lo) and math.isfinite(hi) else float("nan")
    p_equivalence = equivalence_p(diff, se, df, margin) if math.isfinite(margin) else float("nan")
    return {"margin": margin, "df": df, "p": difference_p(diff, se, df), "p_equivalence": p_equivalence}


def paired_headline(measure: str, setting: str, batch_values, ref_values, higher_means: str, *,
                    comparison=None, margin: float, claim_sign: int = 1) -> dict:
    """A headline row from per-seed values paired by seed (Student-t interval of the mean difference);
    ``comparison``, ``margin`` and ``claim_sign`` as in :func:`headline_row`."""
    import numpy as np

    batch_values, ref_values = np.asarray(batch_values, float), np.asarray(ref_values, float)
    if batch_values.shape != ref_values.shape:
        raise ValueError(f"paired values need one per seed on both sides; got {batch_values.shape} "
                         f"with BN and {ref_values.shape} without")
    d = paired_difference(batch_values, ref_values)
    df = max(d["n"] - 1, 0)
    return headline_row(measure, setting, batch_values.mean(), ref_values.mean(), d["diff"], d["lo"],
                        d["hi"], f"95% Student-t interval over {d['n']} seeds ({df} df)", higher_means,
                        comparison=comparison, margin=margin, df=df, claim_sign=claim_sign)


def adjust(table: pd.DataFrame) -> pd.DataFrame:
    """The rows with the verdict's tests: ``p_holm`` and ``p_equivalence_holm`` adjusted by Holm's
    method across every row that is evidence (comparable, resolved, with a test), and ``reading``,
    exactly one of "BN higher", "BN lower", "equivalent within ±margin", "inconclusive" for those
    rows, else "not comparable: <reason>" or the row's resolution. The family-wise error rate of
    the readings is ``reading.ALPHA``."""
    table = table.copy()
    table["comparable"] = [_truthy(v) for v in table["comparable"]]
    table["reason"] = table["reason"].fillna("").astype(str)
    table["resolution"] = table["resolution"].fillna("").astype(str)
    evidence = table["comparable"] & (table["resolution"] == "")
    p = table["p"].astype(float).where(evidence)
    table["p_holm"] = holm(p)
    table["p_equivalence_holm"] = holm(table["p_equivalence"].astype(float).where(evidence))
    table["reading"] = [
        not_comparable(r.reason) if not r.comparable else (r.resolution or decide(r.diff, r.p_holm,
                                                                                  r.p_equivalence_holm, r.margin))
        for r in table.itertuples()]
    return table


def _truthy(value) -> bool:
    """A recorded ``comparable`` field: only a real True (or 1) is comparable; a missing field or a
    string such as "false" is not."""
    return value is True or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == 1)


# The schema of a headline row read from disk (a recorded folder, or results/headlines): a row
# that breaks it stops the verdict naming the file and the field, so a forged or damaged row is
# never read as evidence and never reaches the page as markup.
TEXT_FIELDS = ("chapter", "measure", "setting", "reference", "runs", "interval", "higher_means", "reason",
               "resolution", "robustness", "dataset", "arch", "profile", "reading")
NUMBER_FIELDS = ("batch", "ref", "diff", "lo", "hi", "margin", "df", "epochs_bn", "epochs_ref", "lr_bn", "lr_ref",
                 "train_acc_bn", "train_acc_ref", "test_acc_bn", "test_acc_ref", *STATE_FIELDS)
PROBABILITY_FIELDS = ("p", "p_equivalence", "p_holm", "p_equivalence_holm")
BOOLEAN_FIELDS = ("comparable", "fit_bn", "fit_ref")
MAX_TEXT = 2000
MAX_ROWS = 10_000
# Settings of rows recorded under the previous protocol (before the utility frontier), still read.
LEGACY_SETTINGS = ("matched accuracy",)


class RowError(ValueError):
    """A headline row read from disk that breaks the schema; the message names the row and field."""


def check_rows(rows) -> list[dict]:
    """``rows`` (as parsed from a headlines JSON file) if they follow the schema, else
    :class:`RowError` naming the row and the field. Text is bounded and on one line; numbers are
    real numbers (never booleans or text), finite except ``df`` (inf: a normal test) and missing
    values; p-values lie in [0, 1]; ``lo <= diff <= hi``; ``comparable`` is a real boolean on
    every compared row; and a row that is evidence (comparable, resolved) has a finite interval."""
    if not isinstance(rows, list) or len(rows) > MAX_ROWS:
        raise RowError(f"expected a list of at most {MAX_ROWS} rows, found {describe(rows)}")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RowError(f"row {index} is {describe(row)}, not an object")
        _check_row(row, f"row {index}")
    return rows


def _check_row(row: dict, where: str) -> None:
    for field in TEXT_FIELDS:
        check_text(None if _absent(row.get(field)) else row.get(field), f"{where} field {field!r}")
    if not re.fullmatch(r"[0-9]{2}_[a-z0-9_]+", str(row.get("chapter", ""))):
        raise RowError(f"{where} field 'chapter' is {describe(row.get('chapter'))}; expected a chapter name like 02_canaries")
    if any(part not in (*SETTINGS, *LEGACY_SETTINGS) for part in str(row.get("setting", "")).split(SAME_RUNS)):
        raise RowError(f"{where} field 'setting' is {describe(row.get('setting'))}; expected one of {SETTINGS} "
                       f"(or several joined by {SAME_RUNS!r})")
    for field in (*NUMBER_FIELDS, *PROBABILITY_FIELDS):
        value = row.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RowError(f"{where} field {field!r} is {describe(value)}, not a number")
        if math.isinf(value) and field != "df":
            raise RowError(f"{where} field {field!r} is {value}, not a finite number")
        if field in PROBABILITY_FIELDS and not (math.isnan(value) or 0 <= value <= 1):
            raise RowError(f"{where} field {field!r} is {value}, not a probability in [0, 1]")
    for field in BOOLEAN_FIELDS:
        if not _absent(row.get(field)) and not isinstance(row[field], bool):
            raise RowError(f"{where} field {field!r} is {describe(row[field])}; expected true or false")
    if row.get("setting") != "simulation" and not isinstance(row.get("comparable"), bool):
        raise RowError(f"{where} field 'comparable' is missing; a compared row must say whether it is comparable")
    if row.get("claim_sign", 1) not in CLAIM_SIGNS or isinstance(row.get("claim_sign"), bool):
        raise RowError(f"{where} field 'claim_sign' is {describe(row.get('claim_sign'))}; expected one of {CLAIM_SIGNS}")
    _check_interval(row, where)


def _check_interval(row: dict, where: str) -> None:
    diff, lo, hi = (_number(row.get(k)) for k in ("diff", "lo", "hi"))
    if all(map(math.isfinite, (diff, lo, hi))) and not lo <= diff <= hi:
        raise RowError(f"{where}: the interval [lo, hi] = [{lo:g}, {hi:g}] does not hold diff = {diff:g}")
    evidence = row.get("comparable") is True and not row.get("resolution")
    if evidence and not all(map(math.isfinite, (diff, lo, hi))):
        raise RowError(f"{where} is read as evidence (comparable, resolved) but diff, lo or hi is missing")


def _absent(value) -> bool:
    """A field that holds no value: missing, null, or NaN (how a table fills a row without it)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


# Unicode categories never allowed in text read from disk: controls (Cc: C0, DEL and C1, e.g. a
# newline or U+009B) and invisible format characters (Cf: bidi overrides such as U+202E,
# zero-width spaces and joiners, U+FEFF), which can make shown text (a "rerun with" command) read
# otherwise than what a reader copies.
HIDDEN_CATEGORIES = ("Cc", "Cf")


def check_text(value, where: str) -> None:
    """Raise :class:`RowError` unless ``value`` is None or one line of at most :data:`MAX_TEXT`
    visible characters: no character of :data:`HIDDEN_CATEGORIES`. The message names ``where``,
    the offending character and its position."""
    if value is None:
        return
    if not isinstance(value, str):
        raise RowError(f"{where} is {describe(value)}, not text")
    if len(value) > MAX_TEXT:
        raise RowError(f"{where} is not one line of at most {MAX_TEXT} characters: it has {len(value)}")
    hidden = next(((i, c) for i, c in enumerate(value) if unicodedata.category(c) in HIDDEN_CATEGORIES), None)
    if hidden is not None:
        position, char = hidden
        raise RowError(f"{where} is not one line of visible text: character {position} is U+{ord(char):04X} "
                       f"({unicodedata.name(char, 'a control character')}), a control or invisible character")


def describe(value) -> str:
    """A value read from a file, for an error message: its type and at most 40 characters of it."""
    shown = repr(value)
    return f"{type(value).__name__} {shown[:40]}{'...' if len(shown) > 40 else ''}"


def readings(table: pd.DataFrame) -> list[str]:
    """The reading of every headline row (:func:`adjust`)."""
    return list(adjust(table)["reading"])


def headline_folder(profile: str) -> Path:
    """``results/headlines/<profile>/``; ``profile`` must be a plain name, never a path."""
    if not isinstance(profile, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", profile) or ".." in profile:
        raise ValueError(f"profile={profile!r} is not allowed; allowed values: a profile name of book/profiles.yml "
                         "(letters, digits, '-', '_', '.'), e.g. quick")
    return results_folder("headlines") / profile


def record_rows(chapter: str, profile: str, rows: list[dict], *, dataset: str, arch: str) -> Path:
    """Save ``chapter``'s headline rows (from :func:`headline_row`) under ``profile``."""
    if not rows:
        raise ValueError(f"chapter {chapter} recorded no headline rows; pass at least one comparison")
    rows = [dict(row, chapter=chapter, dataset=dataset, arch=arch, profile=profile) for row in rows]
    path = headline_folder(profile) / f"{chapter}.json"
    save_json(path, rows)
    readjust(profile)
    return path


def readjust(profile: str) -> None:
    """Rewrite every chapter's rows under ``profile`` with the tests adjusted across all of them
    (:func:`adjust`), so each file holds the reading the verdict gives."""
    folder = headline_folder(profile)
    chapters = sorted(f.stem for f in folder.glob("*.json") if "." not in f.stem)
    table = adjust(load(profile, chapters))
    for chapter, rows in table.groupby("chapter", sort=False):
        records = [{k: _plain(v) for k, v in row.items()} for row in rows.to_dict("records")]
        save_json(folder / f"{chapter}.json", records)


def _plain(value):
    """A JSON-ready value: numpy scalars as Python ones."""
    return value.item() if hasattr(value, "item") else value


# The columns of a chapter's curves.csv: every run's value with its state (protocol.sweep.STATE) and
# width multiplier. A file recorded before the width grid and the state lacks the optional ones.
CURVE_REQUIRED = ["chapter", "measure", "norm", "budget", "seed", "value", "test_acc", "train_acc"]
CURVE_OPTIONAL = ["width", *STATE]
CURVE_COLUMNS = CURVE_REQUIRED + CURVE_OPTIONAL


def record_curves(chapter: str, profile: str, values: dict[str, pd.DataFrame]) -> Path:
    """Save the per-run values behind ``chapter``'s curves (``{measure name: protocol.measures.measure_table}``)
    beside its headline rows, as one small CSV (what a recorded setting ships)."""
    frames = [table.assign(chapter=chapter, measure=name) for name, table in values.items()]
    if not frames:
        raise ValueError(f"chapter {chapter} recorded no curve values")
    path = headline_folder(profile) / f"{chapter}.curves.csv"

    table = pd.concat(frames, ignore_index=True).reindex(columns=CURVE_COLUMNS)
    write_atomic(path, table.to_csv(index=False).encode())
    return path


def record_cost(chapter: str, profile: str, training_seconds: float) -> Path:
    """Save how long ``chapter``'s models trained (``<chapter>.cost.json``), which a recording
    copies into its provenance even when the models were loaded from an earlier run."""
    path = headline_folder(profile) / f"{chapter}.cost.json"
    save_json(path, {"chapter": chapter, "training_seconds": round(float(training_seconds), 1)})
    return path


def record_learning_rates(chapter: str, profile: str, lr_table: pd.DataFrame) -> Path:
    """Save the family's learning-rate table (``protocol.learning_rates.choose_learning_rates``:
    every candidate's validation accuracy, nf's AGC threshold, the chosen row per norm) as
    ``<chapter>.learning_rates.json``, which a recording copies into its provenance."""
    rows = [{"norm": str(r.norm), "multiplier": float(r.multiplier), "lr": float(r.lr),
             "agc_clip": None if math.isnan(r.agc_clip) else float(r.agc_clip), "val_acc": float(r.val_acc),
             "chosen": bool(r.chosen)} for r in lr_table.itertuples()]
    path = headline_folder(profile) / f"{chapter}.learning_rates.json"
    save_json(path, rows)
    return path


def load_learning_rates(profile: str, chapters: list[str]) -> list[dict] | None:
    """The learning-rate table the first of ``chapters`` that recorded one saved, or None."""
    folder = headline_folder(profile)
    for chapter in chapters:
        path = folder / f"{chapter}.learning_rates.json"
        if path.is_file():
            return json.loads(path.read_text())
    return None


def load_cost(profile: str, chapters: list[str]) -> float | None:
    """The summed training seconds the listed chapters recorded, or None if none did."""
    folder = headline_folder(profile)
    found = [json.loads((folder / f"{c}.cost.json").read_text())["training_seconds"]
             for c in chapters if (folder / f"{c}.cost.json").is_file()]
    return float(sum(found)) if found else None


def load_curves(profile: str, chapters: list[str]) -> pd.DataFrame:
    """The curve values of the listed chapters that recorded any (an empty table if none did)."""
    folder = headline_folder(profile)
    frames = [pd.read_csv(folder / f"{c}.curves.csv") for c in chapters if (folder / f"{c}.curves.csv").is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CURVE_COLUMNS)


def load(profile: str, chapters: list[str]) -> pd.DataFrame:
    """Every listed chapter's headline rows under ``profile``, in chapter order.

    Raises FileNotFoundError naming the chapters whose rows are missing and how to produce them.
    """
    folder = headline_folder(profile)
    missing = [c for c in chapters if not (folder / f"{c}.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"no headline results of chapters {missing} under profile {profile!r} in {folder}; "
            f"execute them first, e.g. `make chapter CH={missing[0]} PROFILE={profile}` "
            f"(or `make book PROFILE={profile}` for all)"
        )
    rows = [upgraded(row) for c in chapters for row in read_rows(folder / f"{c}.json")]
    return merge_same_runs(pd.DataFrame(rows, columns=COLUMNS))


def read_rows(path: Path) -> list[dict]:
    """The headline rows of one JSON file, checked by :func:`check_rows`; a file that is not JSON
    or breaks the schema raises :class:`RowError` naming it."""
    try:
        return check_rows(json.loads(path.read_text()))
    except RowError as error:
        raise RowError(f"{path}: {error}; rerun the chapter that wrote it") from None
    except (ValueError, RecursionError) as error:
        raise RowError(f"{path} is not a headline file ({type(error).__name__}: {str(error)[:200]}); rerun the "
                       "chapter that wrote it") from None


def merge_same_runs(table: pd.DataFrame) -> pd.DataFrame:
    """One row per comparison: rows of one chapter and measure that read the same runs (same
    ``runs`` and reference; rows recorded before ``protocol.comparisons.merge_same_runs``, e.g. "matched fit"
    and "matched accuracy" on the same budgets) become the first of them, named by every setting."""
    if table.empty:
        return table
    keyed = table["runs"].fillna("").astype(str) != ""
    keys = list(zip(table["chapter"], table["measure"], table["reference"], table["runs"]))
    keep, settings = [], {}
    for index, key, has_runs in zip(table.index, keys, keyed):
        if has_runs and key in settings:
            first = settings[key]
            parts = str(table.at[first, "setting"]).split(SAME_RUNS)
            if table.at[index, "setting"] not in parts:
                table.at[first, "setting"] = SAME_RUNS.join([*parts, str(table.at[index, "setting"])])
            continue
        settings[key] = index
        keep.append(index)
    return table.loc[keep].reset_index(drop=True)


def upgraded(row: dict) -> dict:
    """A row recorded before the reference value was named ``ref`` (it was ``none``, even when the
    reference was GroupNorm), before rows had a reference, or before rows carried their tests
    (margin and p-values): its tests are derived from its interval, its ``df`` from the number of
    seeds its interval names (else read as normal), with no margin, so it can never read
    "equivalent"."""
    row = {"reference": "none", "resolution": "", "claim_sign": 1, **row}
    if "ref" not in row and "none" in row:
        row["ref"] = row.pop("none")
    if "p" not in row:
        seeds = re.search(r"over (\d+) seeds", str(row.get("interval", "")))
        df = int(seeds.group(1)) - 1 if seeds else math.inf
        numbers = [_number(row.get(k)) for k in ("diff", "lo", "hi")]
        row.update(row_tests(*numbers, df, math.nan))
    if not row.get("runs"):
        row["runs"] = _legacy_runs(row)
    return row


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _legacy_runs(row: dict) -> str:
    """The runs a row recorded without ``runs`` compares, from its budgets (empty without them)."""
    bn, ref = row.get("epochs_bn"), row.get("epochs_ref")
    if bn is None or ref is None or row.get("setting") in ("mitigation", "simulation"):
        return ""
    return f"batch@{bn} vs {row.get('reference', 'none')}@{ref}"


def from_previous_protocol(table: pd.DataFrame) -> bool:
    """Whether rows were recorded before the utility frontier and equivalence margins (issue 22):
    they carry no margin."""
    return "margin" not in table or table["margin"].isna().all()


def headline_rows(values: pd.DataFrame, comparisons: list[Comparison], measure: str, higher_means: str,
                  robust: str = "", resolution=None, *, margin: float, claim_sign: int = 1) -> list[dict]:
    """One headline row per comparison of a measure (``headlines.headline_row`` with the
    comparability fields, the equivalence ``margin`` in the measure's units, both tests and the
    ``robust`` line of :func:`protocol.measures.robustness`), for the verdict. ``resolution(comparison, difference)
    -> str`` says when the measure cannot resolve a comparison (empty when it can); ``claim_sign``
    which sign of the difference the claim under test predicts (``headlines.CLAIM_SIGNS``)."""
    check_margin(f"margin of {measure!r}", margin)
    rows = []
    for c in comparisons:
        d = difference(values, c)
        rows.append(headline_row(measure, c.setting, d["batch"], d["ref"], d["diff"], d["lo"], d["hi"],
                                 interval_words(d), higher_means, reference=c.reference, comparison=c,
                                 robustness=robust, resolution=resolution(c, d) if resolution else "",
                                 margin=margin, df=d["df"], claim_sign=claim_sign))
    return rows


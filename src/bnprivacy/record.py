"""Recorded settings: a run too long for ``make book`` is executed once and shipped as small data.

``python -m bnprivacy record --profile P --name NAME`` (``make record PROFILE=P NAME=...``)
executes the chapters whose headline rows depend on the data (:data:`RECORDED_CHAPTERS`: 01-04 and
06) under profile ``P`` and writes
``recorded/<NAME>/``:

- ``headlines.json``: every chapter's headline rows, with their comparability fields;
- ``curves.csv``: the per-run values behind the protocol's curve figures (no weights, no logits);
- ``provenance.json``: git commit (and whether the working tree was dirty, with the changed
  files), the command, the profile's parameters and overrides, package versions, hardware, wall
  time per chapter, the seconds the shadow models trained for when they were trained (also when
  the chapters loaded them from an earlier run) and the date.

A dirty working tree is recorded as such, never refused: the provenance says which files differed
from the commit. The folder is written under a temporary name and renamed into place, so an
interrupted recording never leaves a half folder. The verdict chapter reads every recorded folder
with :func:`load_all`; a folder with a missing or malformed file, or whose name
:func:`check_name` refuses, raises :class:`RecordedError` naming the folder, never dropped silently.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from . import headlines
from .protocol.comparisons import FIELDS, STATE_FIELDS
from .book import chapter_names, chapter_parameters, check_overrides, execute_chapter, profile_parameters
from .reading import code_span, markdown_text
from .training import describe_hardware

RECORDED = "recorded"
FILES = ("headlines.json", "curves.csv", "provenance.json")
PROVENANCE_FIELDS = ("name", "commit", "dirty", "changed_files", "command", "profile", "parameters",
                     "overrides", "versions", "hardware", "chapter_seconds", "date")
# Written by every recording since the references that train as well as BN (issue 39), checked
# when present: a folder recorded before them lacks it and is still read.
WRITTEN_FIELDS = (*PROVENANCE_FIELDS, "learning_rates")
LEARNING_RATE_FIELDS = {"norm": str, "multiplier": (int, float), "lr": (int, float), "agc_clip": (int, float, type(None)),
                        "val_acc": (int, float), "chosen": bool}
# The chapter that reads the recordings: executing it in one records nothing.
VERDICT_CHAPTER = "07_verdict"
# Every chapter whose headline rows depend on the profile's data. Chapter 05's headline is the
# linear simulation, the same rows under every profile (its networks carry no headline), so a
# recording would only copy the book's own rows; its cost under a profile is written there instead.
RECORDED_CHAPTERS = ("01_training", "02_canaries", "03_gradient_influence", "04_membership_inference",
                     "06_dp_mitigation")


class RecordedError(ValueError):
    """A recorded folder that cannot be read; the message names the folder and the file."""


@dataclasses.dataclass
class RecordedSetting:
    """One recorded folder: its headline rows, curve values and provenance."""

    name: str
    folder: Path
    headlines: pd.DataFrame
    curves: pd.DataFrame
    provenance: dict

    def label(self) -> str:
        """"recorded on <date>, <hardware>, commit <sha>; rerun with <command>" in Markdown, every
        recorded text escaped."""
        p = self.provenance
        dirty = " (with uncommitted changes)" if p["dirty"] else ""
        trained = (f"; its shadow models trained for {p['training_seconds'] / 60:.0f} min"
                   if p.get("training_seconds") else "")
        # Recorded text is data: escaped, so a forged provenance shows as written, never as markup.
        rates = chosen_rates_words(p)
        rates = f"; chosen learning rates: {markdown_text(rates)}" if rates else ""
        return (f"recorded on {markdown_text(p['date'][:10])}, {markdown_text(p['hardware'])}, commit "
                f"{markdown_text(p['commit'][:10])}{dirty}{trained}{rates}; rerun with {code_span(p['command'])}")


def parse_chapters(text: str) -> tuple[str, ...]:
    """The chapters of ``--chapters`` ("01_training,02_canaries"), in order, none repeated; their
    names are checked against the book by :func:`record`."""
    chapters = tuple(part.strip() for part in text.split(",") if part.strip())
    if not chapters or len(set(chapters)) != len(chapters):
        raise ValueError(f"--chapters {text!r} names no chapter or one twice; give comma-separated chapter names, "
                         f"e.g. {','.join(RECORDED_CHAPTERS[:4])}")
    return chapters


def check_folder_name(folder: Path) -> None:
    """Raise :class:`RecordedError` unless a recorded folder's name passes :func:`check_name`, the
    rule of ``record --name``: the name is the setting's name on the page and in figures."""
    try:
        check_name(folder.name)
    except ValueError as error:
        raise RecordedError(f"recorded setting {str(folder)!r}: the folder name is refused ({error}); rename the "
                            "folder to such a name") from None


def check_name(name: str) -> str:
    """A recorded setting's folder name: letters, digits, '-', '_' and '.', not starting with '.'."""
    import re

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", name):
        raise ValueError(f"name={name!r} is not allowed; allowed values: 1-64 letters, digits, '-', '_' or '.', "
                         "not starting with '.', e.g. cifar10-airbench")
    return name


def git_state(root: Path) -> dict:
    """The commit of ``root`` and whether its tracked files differ from it (and which)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return {"commit": "unknown (not a git checkout)", "dirty": True, "changed_files": []}
    status = git("status", "--porcelain", "--untracked-files=no").stdout.splitlines()
    return {"commit": head.stdout.strip(), "dirty": bool(status), "changed_files": [line[3:] for line in status]}


def versions() -> dict:
    """Versions of Python and of the packages that decide a result."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("bnprivacy", "torch", "torchvision", "numpy", "pandas", "scipy", "opacus"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


# A recording feeds headline rows: below 16 models per run the attacks' nulls are too wide to
# resolve BN's effect, and LiRA's Gaussians are fitted to 3 values a side (issue 21).
MIN_RECORDED_MODELS = 16


def check_model_count(profile: str, parameters: dict[str, dict]) -> None:
    """Refuse a recording whose chapters train fewer than :data:`MIN_RECORDED_MODELS` models per
    run (``parameters``: each chapter's profile parameters with the overrides)."""
    for chapter, values in parameters.items():
        n = values.get("n_models")
        if isinstance(n, int) and not isinstance(n, bool) and n < MIN_RECORDED_MODELS:
            raise ValueError(f"profile {profile!r} trains n_models={n} per run in {chapter}; a recording needs at "
                             f"least {MIN_RECORDED_MODELS} (attacks are calibrated and resolve differences only "
                             f"from there): pass -p n_models {MIN_RECORDED_MODELS} or raise it in book/profiles.yml")


def record(root: Path, profile: str, name: str, overrides: dict | None = None,
           chapters: tuple[str, ...] = RECORDED_CHAPTERS, command: str | None = None) -> Path:
    """Execute ``chapters`` under ``profile`` (with ``overrides``) and write ``recorded/<name>/``."""
    name = check_name(name)
    overrides = dict(overrides or {})
    unknown = [c for c in chapters if c not in chapter_names(root) or c == VERDICT_CHAPTER]
    if unknown:
        raise ValueError(f"chapters {unknown} are not chapters a recording can execute; choose among "
                         f"{[c for c in chapter_names(root) if c != VERDICT_CHAPTER]}")
    check_overrides(root, list(chapters), overrides)
    declared = {c: set(chapter_parameters(root, c)) for c in chapters}
    check_model_count(profile, {c: {**profile_parameters(root, profile, c), **overrides} for c in chapters})
    state = git_state(root)
    seconds = {}
    for chapter in chapters:
        started = time.perf_counter()
        execute_chapter(root, chapter, profile, {k: v for k, v in overrides.items() if k in declared[chapter]})
        seconds[chapter] = round(time.perf_counter() - started, 1)
    provenance = {
        "name": name, **state, "command": command or " ".join(["python -m bnprivacy", *sys.argv[1:]]),
        "profile": profile, "parameters": {c: profile_parameters(root, profile, c) for c in chapters},
        "overrides": overrides, "versions": versions(), "hardware": hardware(),
        "chapter_seconds": seconds, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        # The models' own training time, recorded when they trained: chapter_seconds is short
        # when the chapters load runs that an earlier invocation trained.
        "training_seconds": headlines.load_cost(profile, list(chapters)),
        # Every norm's learning-rate candidates, the chosen rate and nf's AGC threshold (chapter 01).
        "learning_rates": headlines.load_learning_rates(profile, list(chapters)),
    }
    return write_setting(root / RECORDED / name, headlines.load(profile, list(chapters)),
                         headlines.load_curves(profile, list(chapters)), provenance)


def hardware() -> str:
    """The device a recording ran on, in words."""
    import torch

    return describe_hardware(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def write_setting(folder: Path, rows: pd.DataFrame, curves: pd.DataFrame, provenance: dict) -> Path:
    """Write one recorded folder all or nothing: the new folder is written under a temporary name,
    the old one (if any) is renamed aside, the new one renamed into place, and only then is the old
    one deleted; a failure at any step leaves the old recording where it was."""
    missing = [f for f in WRITTEN_FIELDS if f not in provenance]
    if missing:
        raise ValueError(f"provenance lacks {missing}")
    tmp, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / "headlines.json").write_text(rows.to_json(orient="records", indent=1))
        curves.to_csv(tmp / "curves.csv", index=False)
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=1, sort_keys=True, default=str))
    except BaseException:  # a full disk: no half folder stays beside the old recording
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old.exists() and not folder.exists():
        old.rename(folder)  # an earlier swap stopped between its two renames: restore its recording first
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    try:
        tmp.rename(folder)
    except BaseException:
        if old.exists() and not folder.exists():
            old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_setting(folder: Path) -> RecordedSetting:
    """One recorded folder, checked: a name that ``record --name`` would accept (:func:`check_name`),
    every file present and parseable, provenance complete and of the right types, every headline
    row following ``headlines.check_rows`` (a real boolean ``comparable``, ``lo <= diff <= hi``,
    finite numbers, bounded text). Any violation raises :class:`RecordedError` naming the folder,
    the file and the field."""
    check_folder_name(folder)
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise RecordedError(f"recorded setting {folder}: missing {missing}; rerun its recording (see its "
                            "provenance.json, or `make record`) or delete the folder")
    try:
        provenance = check_provenance(json.loads((folder / "provenance.json").read_text()))
        raw = _headline_rows(folder)
        rows = [_with_resolution(row) for row in raw]
        rows = headlines.merge_same_runs(pd.DataFrame([headlines.upgraded(row) for row in rows]))
        curves = check_curves(pd.read_csv(folder / "curves.csv"))
    except (ValueError, RecursionError, pd.errors.ParserError) as error:
        detail = f"nested too deeply ({error})" if isinstance(error, RecursionError) else str(error)
        raise RecordedError(f"recorded setting {folder}: a file is malformed ({detail[:400]}); rerun its recording "
                            "or delete the folder") from None
    # A row recorded before the runs carried their state (clean loss, logit margins) lacks those fields.
    needed = (set(FIELDS) - set(STATE_FIELDS)) | {"chapter", "measure", "setting", "batch", "ref", "diff", "lo", "hi"}
    if rows.empty or not needed <= set(rows.columns):
        raise RecordedError(f"recorded setting {folder}: headlines.json lacks the columns "
                            f"{sorted(needed - set(rows.columns))}")
    rows = headlines.adjust(rows)
    return RecordedSetting(folder.name, folder, rows, curves, provenance)


def _headline_rows(folder: Path) -> list[dict]:
    """The rows of a recorded folder's ``headlines.json``, checked by ``headlines.check_rows``; an
    error names the file (a row's own message names only the row and field)."""
    try:
        return headlines.check_rows(json.loads((folder / "headlines.json").read_text()))
    except ValueError as error:
        raise ValueError(f"headlines.json: {error}") from None


# The curve rows that carry each run's mean IN (train) accuracy: one per norm, budget and seed.
FIT_CURVE = ("01_training", "test accuracy (%)")


def fit_lines(curves: pd.DataFrame, fit_threshold: float) -> list[str]:
    """One line per norm of a recording: the budgets at which its models fit (mean IN accuracy over
    seeds at least ``fit_threshold``), or, when it fits at none, the norm and the IN accuracy it
    reached at each budget, so that a recipe unable to fit within its ladder says so."""
    rows = curves[(curves["chapter"] == FIT_CURVE[0]) & (curves["measure"] == FIT_CURVE[1])]
    if rows.empty:
        return ["no chapter 01 accuracy curve was recorded: the fit of each norm is unknown"]
    lines = []
    for norm, by_budget in rows.groupby("norm", sort=False):
        reached = by_budget.groupby("budget")["train_acc"].mean().sort_index()
        fitting = [int(b) for b, acc in reached.items() if acc >= fit_threshold]
        accuracies = ", ".join(f"{acc:.3f} at {int(b)}" for b, acc in reached.items())
        if fitting:
            lines.append(f"{norm} fits its pool at {fitting} epochs (mean IN accuracy {accuracies})")
        else:
            lines.append(f"{norm} never fits its pool within the ladder {[int(b) for b in reached.index]}: mean IN "
                         f"accuracy {accuracies} epochs, below {fit_threshold:g}; its comparisons read "
                         "\"not comparable\". Give it longer budgets or a smaller pool")
    return lines


def fit_report(folder: Path) -> list[str]:
    """:func:`fit_lines` of a recorded folder, at the fit threshold it was recorded with."""
    setting = load_setting(folder)
    p = setting.provenance
    threshold = {**p["parameters"].get("01_training", {}), **p["overrides"]}.get("fit_threshold", 0.99)
    return fit_lines(setting.curves, float(threshold))


PROVENANCE_TYPES = {"name": str, "commit": str, "dirty": bool, "changed_files": list, "command": str,
                    "profile": str, "parameters": dict, "overrides": dict, "versions": dict, "hardware": str,
                    "chapter_seconds": dict, "date": str}


def check_provenance(provenance) -> dict:
    """``provenance`` (parsed ``provenance.json``) if it is an object with every field of
    :data:`PROVENANCE_FIELDS` of the right type (every text in it, nested ones and keys included,
    following ``headlines.check_text``; a date that parses; training seconds a number >= 0 or
    null); else ValueError naming the field."""
    if not isinstance(provenance, dict):
        raise ValueError(f"provenance.json holds {headlines.describe(provenance)}, not an object")
    lacking = [f for f in PROVENANCE_FIELDS if f not in provenance]
    if lacking:
        raise ValueError(f"provenance.json lacks {lacking}")
    for field, kind in PROVENANCE_TYPES.items():
        value = provenance[field]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"provenance.json field {field!r} is {headlines.describe(value)}; expected {kind.__name__}")
    for text, where in _texts(provenance, "provenance.json"):
        headlines.check_text(text, where)
    try:
        datetime.datetime.fromisoformat(provenance["date"])
    except ValueError:
        raise ValueError(f"provenance.json field 'date' is {provenance['date'][:40]!r}, not an ISO date") from None
    seconds = provenance.get("training_seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not 0 <= seconds < float("inf")):
        raise ValueError(f"provenance.json field 'training_seconds' is {headlines.describe(seconds)}; expected a "
                         "number of seconds >= 0 or null")
    check_learning_rates(provenance.get("learning_rates"))
    return provenance


def check_learning_rates(rows) -> None:
    """The provenance's learning-rate table (None: not recorded), else ValueError naming the row and
    field: a list of candidates with :data:`LEARNING_RATE_FIELDS` of the right types, finite rates
    > 0, validation accuracies in [0, 1], and exactly one chosen candidate per norm."""
    if rows is None:
        return
    where = "provenance.json field 'learning_rates'"
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{where} is {headlines.describe(rows)}; expected a non-empty list of candidates or null")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{where} row {index} is {headlines.describe(row)}, not an object")
        for field, kind in LEARNING_RATE_FIELDS.items():
            value = row.get(field)
            if field not in row or not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"{where} row {index} field {field!r} is {headlines.describe(value)}")
        if not (math.isfinite(row["lr"]) and row["lr"] > 0 and 0 <= row["val_acc"] <= 1):
            raise ValueError(f"{where} row {index}: lr {row['lr']!r} or val_acc {row['val_acc']!r} is out of range")
    for norm in {row["norm"] for row in rows}:
        chosen = sum(row["chosen"] for row in rows if row["norm"] == norm)
        if chosen != 1:
            raise ValueError(f"{where}: norm {norm!r} has {chosen} chosen candidates; expected exactly one")


def chosen_rates_words(provenance: dict) -> str:
    """"batch lr 0.2; nf lr 0.2, AGC 0.02; none lr 0.05" from a recording's learning-rate table, or
    "" for a folder recorded before it was kept."""
    rows = provenance.get("learning_rates") or []
    return "; ".join(f"{row['norm']} lr {row['lr']:g}" + ("" if row["agc_clip"] is None else f", AGC {row['agc_clip']:g}")
                     for row in rows if row["chosen"])


def _texts(value, where: str):
    """Every text inside a parsed JSON value (object keys included, at any depth), each with where
    it sits, so that nested provenance text follows the same rule as the top-level fields."""
    if isinstance(value, str):
        yield value, where
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key, f"{where} field name {key!r}"
            yield from _texts(item, f"{where} field {key!r}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _texts(item, f"{where} item {index}")


# The numeric columns of curves.csv; every other column (an unexpected one included) is text.
CURVE_NUMBERS = ("budget", "seed", "value", "test_acc", "train_acc", *headlines.CURVE_OPTIONAL)


def check_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """``curves.csv`` if it has the curve columns, numeric values that are numbers (finite, or
    missing), and column names and every other value text that follows ``headlines.check_text``
    (the rule of headline text); else ValueError naming the column (and the row of a bad text)."""
    lacking = sorted(set(headlines.CURVE_REQUIRED) - set(curves.columns))
    if lacking:
        raise ValueError(f"curves.csv lacks {lacking}")
    for column in (c for c in CURVE_NUMBERS if c in curves):  # the optional ones where recorded
        values = pd.to_numeric(curves[column], errors="coerce")
        if (values.isna() & curves[column].notna()).any() or values.abs().eq(float("inf")).any():
            raise ValueError(f"curves.csv column {column!r} holds a value that is not a finite number")
    for column in curves.columns:
        headlines.check_text(str(column), f"curves.csv column name {str(column)!r}")
        if column not in CURVE_NUMBERS:
            for row, value in curves[column].dropna().items():
                headlines.check_text(str(value), f"curves.csv row {row} column {column!r}")
    return curves


# Chapter 04's rows recorded before the attacks were calibrated (rows without a "resolution"):
# online LiRA without IN/OUT trimming, whose null AUC is 0.41-0.43 at the 8 models they used.
UNCALIBRATED = ("not resolved: recorded with the uncalibrated online LiRA of before issue 21 (IN and OUT "
                "references not trimmed; null AUC 0.41-0.43 at 8 models); not read until re-recorded")


def _with_resolution(row: dict) -> dict:
    """A recorded row with its resolution: as recorded, or :data:`UNCALIBRATED` for a chapter 04
    row recorded before rows carried one."""
    if isinstance(row, dict) and "resolution" not in row and row.get("chapter") == "04_membership_inference":
        return {**row, "resolution": UNCALIBRATED}
    return row


def load_all(root: Path) -> list[RecordedSetting]:
    """Every recorded folder under ``root/recorded``, by name; raises :class:`RecordedError` on any
    unreadable folder or one whose name ``record --name`` would refuse. Folders starting with '.'
    are skipped: they are :func:`write_setting`'s temporaries, never a setting."""
    base = root / RECORDED
    if not base.is_dir():
        return []
    return [load_setting(f) for f in sorted(base.iterdir()) if f.is_dir() and not f.name.startswith(".")]

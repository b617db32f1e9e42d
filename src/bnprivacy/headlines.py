"""Each chapter's headline comparison (BN against no normalisation), saved for the verdict chapter.

A chapter calls :func:`record` with one row per comparison it concludes on; chapter 07 reads every
chapter's rows back with :func:`load` and puts them in one table. The rows live in
``results/headlines/<profile>/<chapter>.json`` (written atomically), so the verdict always shows what
the chapters last measured under that profile, with the dataset and architecture they ran on.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from .reading import judge  # noqa: F401  (re-exported for the verdict)
from .store import results_dir, save_json

# The protocol's three comparisons (``protocol.py``), DP-SGD against its non-private twin, and the
# theory chapter's linear-model simulation.
SETTINGS = ("equal epochs", "matched fit", "matched accuracy", "mitigation", "simulation")
# Every row that compares trained models carries these (``protocol.Comparison.fields``).
COMPARABILITY = ("epochs_bn", "epochs_ref", "lr_bn", "lr_ref", "train_acc_bn", "train_acc_ref", "test_acc_bn",
                 "test_acc_ref", "fit_bn", "fit_ref", "comparable", "reason")
COLUMNS = ["chapter", "measure", "setting", "reference", "batch", "ref", "diff", "lo", "hi", "interval",
           "higher_means", *COMPARABILITY, "resolution", "robustness", "dataset", "arch", "profile"]


def headline_row(measure: str, setting: str, batch: float, ref: float, diff: float, lo: float,
                 hi: float, interval: str, higher_means: str, reference: str = "none", *,
                 comparison=None, robustness: str = "", resolution: str = "") -> dict:
    """One comparison of BN with a reference (no normalisation unless ``reference`` names another,
    e.g. "group"): values with BN (``batch``) and with the reference (``ref``), ``diff`` =
    BN − reference with its interval.

    ``interval`` says what the interval is over (e.g. "95% t-interval over 3 seeds");
    ``higher_means`` what a positive difference would mean (e.g. "BN memorizes more").
    ``comparison`` (a ``protocol.Comparison``) is required for every setting but "simulation": its
    comparability fields (budgets, learning rates, train and test accuracy of both sides, fit,
    ``comparable`` and the ``reason`` when not) go into the row, so the verdict never reads a row
    whose sides did not train. ``robustness`` says whether the sign holds at every pair of budgets
    at which both sides fit (``protocol.robustness``). ``resolution`` is empty, or says why the
    measure cannot resolve the comparison ("not resolvable with n non-members", "not resolved:
    within the null spread"); such a row is read as that, never as evidence.
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting {setting!r} is not one of {SETTINGS}")
    if comparison is None and setting != "simulation":
        raise ValueError(f"a {setting!r} row compares trained models and needs its comparison "
                         "(protocol.Comparison) for the comparability fields")
    values = {"batch": batch, "ref": ref, "diff": diff, "lo": lo, "hi": hi}
    row = {"measure": measure, "setting": setting, "interval": interval, "higher_means": higher_means,
           "reference": reference, "robustness": robustness, "resolution": resolution}
    row.update({key: float(value) for key, value in values.items()})
    if comparison is not None:
        fields = comparison.fields()
        row.update({k: (v.item() if hasattr(v, "item") else v) for k, v in fields.items()})
    else:
        row.update({"comparable": True, "reason": ""})
    return row


def paired_headline(measure: str, setting: str, batch_values, ref_values, higher_means: str, *,
                    comparison=None) -> dict:
    """A headline row from per-seed values paired by seed (Student-t interval of the mean difference);
    ``comparison`` as in :func:`headline_row`."""
    import numpy as np

    from .stats import paired_difference

    batch_values, ref_values = np.asarray(batch_values, float), np.asarray(ref_values, float)
    if batch_values.shape != ref_values.shape:
        raise ValueError(f"paired values need one per seed on both sides; got {batch_values.shape} "
                         f"with BN and {ref_values.shape} without")
    d = paired_difference(batch_values, ref_values)
    return headline_row(measure, setting, batch_values.mean(), ref_values.mean(), d["diff"], d["lo"],
                        d["hi"], f"95% t-interval over {d['n']} seeds", higher_means, comparison=comparison)


def readings(table: pd.DataFrame) -> list[str]:
    """The reading of every headline row: "not comparable: <reason>" for a row whose sides did not
    train to a comparable state, its ``resolution`` for a row its measure cannot resolve, else what
    its interval says (``reading.judge``)."""
    from .reading import not_comparable

    resolutions = table["resolution"] if "resolution" in table else [""] * len(table)
    return [not_comparable(reason) if not comparable else (resolution or judge(lo, hi))
            for lo, hi, comparable, reason, resolution in
            zip(table["lo"], table["hi"], table["comparable"], table["reason"], resolutions)]


def headline_folder(profile: str) -> Path:
    """``results/headlines/<profile>/``; ``profile`` must be a plain name, never a path."""
    if not isinstance(profile, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", profile) or ".." in profile:
        raise ValueError(f"profile={profile!r} is not allowed; allowed values: a profile name of book/profiles.yml "
                         "(letters, digits, '-', '_', '.'), e.g. quick")
    return results_dir() / "headlines" / profile


def record(chapter: str, profile: str, rows: list[dict], *, dataset: str, arch: str) -> Path:
    """Save ``chapter``'s headline rows (from :func:`headline_row`) under ``profile``."""
    if not rows:
        raise ValueError(f"chapter {chapter} recorded no headline rows; pass at least one comparison")
    rows = [dict(row, chapter=chapter, dataset=dataset, arch=arch, profile=profile) for row in rows]
    path = headline_folder(profile) / f"{chapter}.json"
    save_json(path, rows)
    return path


CURVE_COLUMNS = ["chapter", "measure", "norm", "budget", "seed", "value", "test_acc", "train_acc"]


def record_curves(chapter: str, profile: str, values: dict[str, pd.DataFrame]) -> Path:
    """Save the per-run values behind ``chapter``'s curves (``{measure name: protocol.measure_table}``)
    beside its headline rows, as one small CSV (what a recorded setting ships)."""
    frames = [table.assign(chapter=chapter, measure=name) for name, table in values.items()]
    if not frames:
        raise ValueError(f"chapter {chapter} recorded no curve values")
    path = headline_folder(profile) / f"{chapter}.curves.csv"
    from .store import write_atomic

    write_atomic(path, pd.concat(frames, ignore_index=True)[CURVE_COLUMNS].to_csv(index=False).encode())
    return path


def record_cost(chapter: str, profile: str, training_seconds: float) -> Path:
    """Save how long ``chapter``'s models trained (``<chapter>.cost.json``), which a recording
    copies into its provenance even when the models were loaded from an earlier run."""
    path = headline_folder(profile) / f"{chapter}.cost.json"
    save_json(path, {"chapter": chapter, "training_seconds": round(float(training_seconds), 1)})
    return path


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
    rows = [_upgraded(row) for c in chapters for row in json.loads((folder / f"{c}.json").read_text())]
    return pd.DataFrame(rows, columns=COLUMNS)


def _upgraded(row: dict) -> dict:
    """A row recorded before the reference value was named ``ref`` (it was ``none``, even when the
    reference was GroupNorm), or before rows had a reference."""
    row = {"reference": "none", "resolution": "", **row}
    if "ref" not in row and "none" in row:
        row["ref"] = row.pop("none")
    return row

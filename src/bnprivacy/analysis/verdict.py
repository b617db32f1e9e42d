"""Chapter 07's steps: gather every chapter's headline rows, read them under the protocol's guard,
and draw the conclusion from the fair comparisons (matched fit and matched accuracy) only."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd

from .. import headlines
from ..protocol import FAIR_SETTINGS
from ..reading import NO_CLEAR, NO_INTERVAL, NOT_RESOLVABLE, NOT_RESOLVED, fmt_interval

PRIVACY_CHAPTERS = ("02_canaries", "03_gradient_influence", "04_membership_inference")
READING_ORDER = ("BN higher", "BN lower", NO_CLEAR, NO_INTERVAL, NOT_RESOLVED, NOT_RESOLVABLE, "not comparable")


def gather(profile: str, chapters: list[str]) -> pd.DataFrame:
    """Every listed chapter's headline rows under ``profile`` with their ``reading`` (a row whose
    sides did not train to a comparable state reads "not comparable: <reason>")."""
    table = headlines.load(profile, chapters)
    table["comparable"] = table["comparable"].fillna(True).astype(bool)
    table["reason"] = table["reason"].fillna("")
    table["resolution"] = table["resolution"].fillna("").astype(str)
    table["reading"] = headlines.readings(table)
    return table


def _number(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def _pair(a, b, digits=3) -> str:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return ""
    return f"{a:.{digits}g} / {b:.{digits}g}"


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    """The verdict's main table: values, difference with interval, both sides' budgets and IN
    accuracy, and the reading."""
    return pd.DataFrame({
        "ch.": table["chapter"].str[:2], "measure": table["measure"], "setting": table["setting"],
        "BN": table["batch"].map(_number), "vs": table["reference"], "its value": table["ref"].map(_number),
        "BN − it [95% interval]": [fmt_interval(d, lo, hi, digits=3) for d, lo, hi in zip(table["diff"], table["lo"], table["hi"])],
        "epochs BN / ref": [_pair(a, b) for a, b in zip(table["epochs_bn"], table["epochs_ref"])],
        "IN acc BN / ref": [_pair(a, b) for a, b in zip(table["train_acc_bn"], table["train_acc_ref"])],
        "reading": table["reading"].map(_kind)})


def excluded_table(table: pd.DataFrame) -> pd.DataFrame:
    """The rows that are not evidence, with the reason the guard gave."""
    rows = table[~table.comparable]
    return pd.DataFrame({"ch.": rows["chapter"].str[:2], "measure": rows["measure"], "setting": rows["setting"],
                         "why not comparable": rows["reason"]})


def legend_table(table: pd.DataFrame) -> pd.DataFrame:
    """What a positive difference means, what the interval is over, and the data and model."""
    return pd.DataFrame({
        "ch.": table["chapter"].str[:2], "measure": table["measure"],
        "a positive difference means": table["higher_means"], "interval over": table["interval"],
        "data / model": table["dataset"] + " / " + table["arch"]}).drop_duplicates(subset=["ch.", "measure"])


def _kind(reading: str) -> str:
    for kind in ("not comparable", NOT_RESOLVABLE, NOT_RESOLVED):
        if reading.startswith(kind):
            return kind
    return reading


def count_text(table: pd.DataFrame, setting: str) -> str:
    """"at <setting>, n comparison(s): a BN higher, b not comparable, ..."."""
    rows = table[table.setting == setting]
    if rows.empty:
        return f"at {setting}, no comparison was recorded"
    counts = rows["reading"].map(_kind).value_counts()
    parts = [f"{counts[k]} {k}" for k in READING_ORDER if counts.get(k, 0)]
    return f"at {setting}, {len(rows)} comparison(s): " + ", ".join(parts)


def _meaning(row) -> str:
    """A row's reading in words: what a positive difference means, when the interval shows one."""
    if row.reading == "BN higher":
        return f"BN higher: {row.higher_means}"
    return row.reading


def _measure_lines(rows: pd.DataFrame) -> list[str]:
    """One Markdown bullet per measure: each setting's difference, interval and meaning."""
    lines = []
    for (chapter, measure), group in rows.groupby(["chapter", "measure"], sort=False):
        cells = [f"{r.setting} {fmt_interval(r.diff, r.lo, r.hi)} ({_meaning(r)})" for r in group.itertuples()]
        robust = group["robustness"].iloc[0] if "robustness" in group and isinstance(group["robustness"].iloc[0], str) else ""
        lines.append(f"- **{measure}** (ch. {chapter[:2]}): " + "; ".join(cells)
                     + (f"; across budgets: {robust}" if robust else ""))
    return lines


ROBUST_GROUPS = (("BN higher", "**BN higher, robustly**"), ("BN lower", "**BN lower, robustly**"),
                 (NO_CLEAR, "**no clear difference, robustly**"), ("mixed", "**depends on the budgets compared**"))


def robust_reading(group: pd.DataFrame) -> str:
    """One measure's fair rows in one word: their common reading when matched fit, matched
    accuracy and every pair of fitting budgets agree, else "mixed"."""
    readings = set(group["reading"])
    robust = group["robustness"].iloc[0] if "robustness" in group else ""
    if len(readings) == 1:
        (reading,) = readings
        if isinstance(robust, str) and robust.startswith(f"{reading} at all"):
            return reading
    return "mixed"


def _robust_summary(readable: pd.DataFrame) -> str:
    """The fair verdict per measure, grouped by its robust reading."""
    kinds = {}
    for (chapter, measure), group in readable.groupby(["chapter", "measure"], sort=False):
        kinds.setdefault(robust_reading(group), []).append(f"{measure} (ch. {chapter[:2]})")
    parts = [f"{label}: {', '.join(kinds[key])}" for key, label in ROBUST_GROUPS if key in kinds]
    return ("On this setting, reading matched fit, matched accuracy and every pair of budgets at which "
            "both sides fit together: " + "; ".join(parts) + ".")


def conclusion(table: pd.DataFrame) -> str:
    """The verdict in Markdown. Fair comparisons (matched fit, matched accuracy) decide; the paper's
    equal-epochs setting is reported beside them; not-comparable rows are named, never read."""
    privacy = table[table.chapter.isin(PRIVACY_CHAPTERS)]
    fair = privacy[privacy.setting.isin(FAIR_SETTINGS)]
    resolved = fair["resolution"].fillna("") == "" if "resolution" in fair else True
    readable = fair[fair.comparable & resolved]
    unresolved = fair[fair.comparable & ~resolved] if "resolution" in fair else fair.iloc[:0]
    blocks = []
    if readable.empty:
        blocks.append("**No fair comparison is readable on this setting**: in every matched-fit and "
                      "matched-accuracy row a side did not fit or did not train, or the measure cannot "
                      "resolve the difference, so this profile gives no evidence either way.")
    else:
        higher = readable[readable.reading == "BN higher"]
        lower = readable[readable.reading == "BN lower"]
        head = (f"**In the fair comparisons, BN is clearly higher in {len(higher)} and clearly lower in "
                f"{len(lower)} of {len(readable)} comparable rows**" if len(higher) else
                f"**In the fair comparisons ({len(readable)} comparable rows), BN does not clearly amplify "
                f"memorization or membership inference** (clearly lower in {len(lower)})")
        blocks.append(_robust_summary(readable))
        blocks.append(head + ". BN minus the reference, per measure:\n\n" + "\n".join(_measure_lines(readable)))
    excluded = fair[~fair.comparable]
    if not excluded.empty:
        blocks.append("Not read as evidence (a side did not train to a comparable state): "
                      + "; ".join(f"{r.measure}, {r.setting} ({r.reason})" for r in excluded.itertuples()) + ".")
    if not unresolved.empty:
        blocks.append("Not read as evidence (the measure cannot resolve the difference): "
                      + "; ".join(f"{r.measure}, {r.setting} ({r.resolution})" for r in unresolved.itertuples()) + ".")
    equal = privacy[privacy.setting == "equal epochs"]
    if not equal.empty:
        if equal.comparable.all():
            blocks.append("At equal epochs (the paper's setting, both sides fit):\n\n" + "\n".join(_measure_lines(equal)))
        else:
            reason = equal[~equal.comparable].reason.iloc[0]
            blocks.append(f"The paper's equal-epochs setting is **not comparable** here ({reason}): its "
                          "differences measure under-training, not BN.")
    others = []
    for setting, label in (("mitigation", "Against chapter 6's mitigations"),
                           ("simulation", "In the theory chapter's simulation")):
        rows = table[table.setting == setting]
        if not rows.empty:
            others.append(f"{label}: " + "; ".join(f"{r.measure}, BN vs {r.reference}: {_meaning(r)}"
                                                    for r in rows.itertuples()) + ".")
    group = table[(table.chapter == "06_dp_mitigation") & (table.setting != "mitigation")]
    if not group.empty:
        others.append("BN against GroupNorm at equal epochs (chapter 6): " + "; ".join(
            f"{r.measure}: {_meaning(r)}" for r in group.itertuples()) + ".")
    blocks.extend(others)
    return "\n\n".join(blocks)


def forest_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The forest plot's rows grouped by measure: each measure on its own scale (a ratio of 10 and
    an AUC difference of 0.01 never share an axis), not-comparable rows flagged."""
    rows = table.assign(label=[f"{s}{'' if r == 'none' else ' vs ' + r}" for s, r in zip(table.setting, table.reference)])
    rows["panel"] = rows["chapter"].str[:2] + " " + rows["measure"]
    return rows[["panel", "label", "setting", "diff", "lo", "hi", "comparable"]]


def readable_fraction(table: pd.DataFrame) -> float:
    """Fraction of the fair privacy rows that are comparable (evidence at all)."""
    fair = table[table.chapter.isin(PRIVACY_CHAPTERS) & table.setting.isin(FAIR_SETTINGS)]
    return float(fair.comparable.mean()) if len(fair) else float("nan")


@dataclasses.dataclass
class RecordedSection:
    """What the verdict shows of one recorded setting: a heading with its provenance, the
    conclusion, the table of its rows, and its curve values per measure."""

    heading: str
    conclusion: str
    table: pd.DataFrame
    curves: dict[str, pd.DataFrame]


def recorded_sections(settings) -> list[RecordedSection]:
    """One :class:`RecordedSection` per ``record.RecordedSetting``, read by the same rules as the
    live rows (the guard, the fair comparisons, robustness)."""
    from ..protocol import curves

    sections = []
    for s in settings:
        data = s.headlines[["dataset", "arch"]].drop_duplicates().astype(str).agg(" / ".join, axis=1)
        heading = f"**{s.name}** ({', '.join(data)}): {s.label()}"
        per_measure = {measure: curves(group) for measure, group in s.curves.groupby("measure", sort=False)}
        sections.append(RecordedSection(heading, conclusion(s.headlines), shown_table(s.headlines), per_measure))
    return sections

"""Chapter 07's steps: gather every chapter's headline rows, test them together (Holm across the
rows that are evidence, TOST within each measure's margin), read them under the protocol's guard,
and draw the conclusion from the fair comparisons only (equal epochs where both fit, matched fit,
matched accuracy interpolated along the utility frontier)."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd

from .. import headlines
from ..protocol.comparisons import FAIR_SETTINGS, SAME_RUNS
from ..protocol.measures import curves, percent_pair
from ..reading import EQUIVALENT, INCONCLUSIVE, NOT_RESOLVABLE, NOT_RESOLVED, fmt_interval, markdown_text

PRIVACY_CHAPTERS = ("02_canaries", "03_gradient_influence", "04_membership_inference")
EQUIVALENT_KIND = "equivalent within ±margin"
FOUR_READINGS = ("BN higher", "BN lower", EQUIVALENT_KIND, INCONCLUSIVE)
EXPLORATORY = "exploratory"  # chapter 3's rows from too few gradient probes (analysis.influence.exploratory)
READING_ORDER = (*FOUR_READINGS, NOT_RESOLVED, NOT_RESOLVABLE, EXPLORATORY, "not comparable")
# Before the utility frontier, "matched accuracy" (whole budgets) was the second fair setting.
PREVIOUS_FAIR = ("matched fit", "matched accuracy")
PREVIOUS_PROTOCOL = "recorded under the previous protocol"


def gather(profile: str, chapters: list[str]) -> pd.DataFrame:
    """Every listed chapter's headline rows under ``profile``, tested together
    (``headlines.adjust``: Holm-adjusted p-values and exactly one reading per row)."""
    return headlines.adjust(headlines.load(profile, chapters))


def is_fair(setting: str, previous: bool = False) -> bool:
    """Whether a row's setting (possibly several joined by " = ") is a fair comparison; rows
    recorded under the previous protocol are read by that protocol's fair settings."""
    fair = PREVIOUS_FAIR if previous else FAIR_SETTINGS
    return any(part in fair for part in str(setting).split(SAME_RUNS))


def fair_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The privacy chapters' rows of fair settings (all of them, comparable or not)."""
    previous = headlines.from_previous_protocol(table)
    privacy = table[table.chapter.isin(PRIVACY_CHAPTERS)]
    # A boolean Series, not a list: an empty list would select no columns instead of no rows.
    return privacy[pd.Series([is_fair(s, previous) for s in privacy.setting], index=privacy.index, dtype=bool)]


def readable_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The fair privacy rows that are evidence: comparable and resolvable by their measure."""
    fair = fair_rows(table)
    return fair[fair.comparable & (fair["resolution"].fillna("") == "")]


def is_rate(measure: str) -> bool:
    """Whether a measure is a rate a reader wants in percent (a TPR at a fixed FPR)."""
    return "TPR" in measure


def _number(value, rate: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if rate:
        return f"{100 * value:.2g}%"
    # 3 significant digits, but never more than 4 decimals (.3g prints -0.000656): 4 decimals
    # below 0.01, scientific notation below 0.0001
    if value == 0:
        return "0"
    if abs(value) < 1e-4:
        return f"{value:.2e}"
    return f"{value:.4f}" if abs(value) < 1e-2 else f"{value:.3g}"


def _pair(a, b) -> str:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return ""
    return percent_pair(a, b)


def _difference(measure: str, d, lo, hi) -> str:
    # A TPR difference in percentage points, 2 decimals: 3 decimals of a rate show 0.07% as +0.001.
    if is_rate(measure):
        return fmt_interval(d, lo, hi, digits=2, scale=100.0, unit=" points")
    return fmt_interval(d, lo, hi, digits=3)


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    """The verdict's main table: BN's value, the reference and its value, the difference with its
    interval, and the reading (what each row rests on is :func:`basis_table`; together they were
    one table too wide for the page)."""
    rates = table["measure"].map(is_rate)
    return pd.DataFrame({
        "ch.": table["chapter"].str[:2], "measure": table["measure"], "setting": table["setting"],
        "BN": [_number(v, r) for v, r in zip(table["batch"], rates)], "vs": table["reference"],
        "its value": [_number(v, r) for v, r in zip(table["ref"], rates)],
        "BN − it [95% interval]": [_difference(m, d, lo, hi) for m, d, lo, hi
                                   in zip(table["measure"], table["diff"], table["lo"], table["hi"])],
        "reading": table["reading"].map(_kind)})


def basis_table(table: pd.DataFrame) -> pd.DataFrame:
    """What each row of :func:`shown_table` rests on: the runs compared and their IN accuracy, the
    equivalence margin and the Holm-adjusted p-values of both tests."""
    return pd.DataFrame({
        "ch.": table["chapter"].str[:2], "measure": table["measure"], "setting": table["setting"],
        "runs": table["runs"].fillna("").str.replace(",", ", "),
        "IN accuracy % (BN / ref)": [_pair(a, b) for a, b in zip(table["train_acc_bn"], table["train_acc_ref"])],
        "margin": table["margin"].map(_number), "p (Holm)": table["p_holm"].map(_number),
        "p equiv. (Holm)": table["p_equivalence_holm"].map(_number)})


def styled(shown: pd.DataFrame):
    """A verdict table for the page: every cell HTML-escaped (rows can come from recorded files, and
    a cell shows as written, never as markup), no index."""
    return shown.style.format(escape="html").hide(axis="index")


def excluded_table(table: pd.DataFrame) -> pd.DataFrame:
    """The rows that are not evidence, with the reason the guard gave."""
    rows = table[~table.comparable]
    return pd.DataFrame({"ch.": rows["chapter"].str[:2], "measure": rows["measure"], "setting": rows["setting"],
                         "why not comparable": rows["reason"]})


def legend_table(table: pd.DataFrame) -> pd.DataFrame:
    """What a positive difference means, what the interval is, and the data and model."""
    return pd.DataFrame({
        "ch.": table["chapter"].str[:2], "measure": table["measure"],
        "a positive difference means": table["higher_means"], "interval": table["interval"],
        "data / model": table["dataset"] + " / " + table["arch"]}).drop_duplicates(subset=["ch.", "measure"])


def _kind(reading: str) -> str:
    for kind in ("not comparable", NOT_RESOLVABLE, NOT_RESOLVED, EXPLORATORY):
        if reading.startswith(kind):
            return kind
    return EQUIVALENT_KIND if reading.startswith(EQUIVALENT) else reading


def count_text(table: pd.DataFrame) -> str:
    """"n comparisons (k of them standing for two settings): a BN higher, b not comparable, ..."."""
    if table.empty:
        return "no comparison was recorded"
    counts = table["reading"].map(_kind).value_counts()
    parts = [f"{counts[k]} {k}" for k in READING_ORDER if counts.get(k, 0)]
    merged = int(table.setting.str.contains(SAME_RUNS, regex=False).sum())
    also = f" ({merged} of them standing for two settings that read the same runs)" if merged else ""
    return f"{len(table)} comparisons{also}: " + ", ".join(parts)


def _meaning(row) -> str:
    """A row's reading in words: what the difference means, when the test shows one."""
    if row.reading == "BN higher":
        return f"BN higher: {row.higher_means}"
    if row.reading == "BN lower":
        return f"BN lower: the opposite of \"{row.higher_means}\""
    return row.reading


def _p(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f", p(Holm) = {value:.2g}"


def _measure_lines(rows: pd.DataFrame) -> list[str]:
    """One Markdown bullet per measure: each comparison's runs, difference, interval, adjusted p
    and reading, and the range over every pair of fitting budgets."""
    lines = []
    for (chapter, measure), group in rows.groupby(["chapter", "measure"], sort=False):
        cells = [f"{r.setting} ({r.runs}) {fmt_interval(r.diff, r.lo, r.hi)}{_p(r.p_holm)}: {_meaning(r)}"
                 for r in group.itertuples()]
        robust = group["robustness"].iloc[0] if isinstance(group["robustness"].iloc[0], str) else ""
        lines.append(f"- **{measure}** (ch. {chapter[:2]}): " + "; ".join(cells)
                     + (f"; at every pair of fitting budgets: {robust}" if robust else ""))
    return lines


ROBUST_GROUPS = (("BN higher", "**BN higher in every fair comparison**"),
                 ("BN lower", "**BN lower in every fair comparison**"),
                 (EQUIVALENT_KIND, "**equivalent within the margin in every fair comparison**"),
                 (INCONCLUSIVE, "**inconclusive in every fair comparison**"),
                 ("mixed", "**the fair comparisons read differently**"))


def robust_reading(group: pd.DataFrame) -> str:
    """One measure's fair, readable rows in one word: their common reading, else "mixed"."""
    kinds = set(group["reading"].map(_kind))
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _robust_summary(readable: pd.DataFrame) -> str:
    """The fair verdict per measure, grouped by its common reading."""
    kinds = {}
    for (chapter, measure), group in readable.groupby(["chapter", "measure"], sort=False):
        kinds.setdefault(robust_reading(group), []).append(f"{measure} (ch. {chapter[:2]})")
    parts = [f"{label}: {', '.join(kinds[key])}" for key, label in ROBUST_GROUPS if key in kinds]
    return "Per measure, its fair comparisons read together: " + "; ".join(parts) + "."


def tally(readable: pd.DataFrame) -> dict[str, int]:
    """How many rows read each of the four readings."""
    kinds = readable["reading"].map(_kind)
    return {k: int((kinds == k).sum()) for k in FOUR_READINGS}


def _tally_words(counts: dict[str, int]) -> str:
    return (f"BN is higher in {counts['BN higher']}, lower in {counts['BN lower']}, equivalent to the "
            f"reference within its margin in {counts[EQUIVALENT_KIND]} and inconclusive in {counts[INCONCLUSIVE]}")


CLAIM_KINDS = ("as the claim predicts", "against the claim", EQUIVALENT_KIND, INCONCLUSIVE)


def claim_tally(readable: pd.DataFrame) -> dict[str, int]:
    """The rows that test the claim (``claim_sign`` ±1), by what they say of it: a difference in the
    direction the claim predicts (BN higher where the claim says higher, lower where it says
    lower), against it, equivalent within the margin, or inconclusive."""
    signs = readable["claim_sign"].fillna(1).astype(int) if "claim_sign" in readable else pd.Series(1, readable.index)
    kinds = readable["reading"].map(_kind)
    direction = kinds.map({"BN higher": 1, "BN lower": -1}).fillna(0) * signs
    tested = signs != 0
    return {"as the claim predicts": int((tested & (direction > 0)).sum()),
            "against the claim": int((tested & (direction < 0)).sum()),
            EQUIVALENT_KIND: int((tested & (kinds == EQUIVALENT_KIND)).sum()),
            INCONCLUSIVE: int((tested & (kinds == INCONCLUSIVE)).sum())}


def claim_status(table: pd.DataFrame) -> str:
    """What one setting's fair, readable privacy rows say of the claim: "supported" (some rows as
    the claim predicts, none against), "contradicted" (some against, none as predicted), "mixed"
    (both), "not resolved" (neither) or "not tested" (no readable fair row that tests it)."""
    counts = claim_tally(readable_rows(table))
    if not sum(counts.values()):
        return "not tested"
    with_claim, against = counts["as the claim predicts"] > 0, counts["against the claim"] > 0
    return {(True, False): "supported", (False, True): "contradicted", (True, True): "mixed"}.get(
        (with_claim, against), "not resolved")


def overall_sentence(settings: dict[str, pd.DataFrame]) -> str:
    """The verdict's one sentence across every setting (``{name: its adjusted rows}``): how the
    fair privacy comparisons that are evidence and test the claim read, summed over settings, and
    where the claim is supported, contradicted, mixed, not resolved or not tested."""
    if not settings:
        return "No setting has recorded a headline, so the book has no verdict yet."
    counts = {k: 0 for k in CLAIM_KINDS}
    for table in settings.values():
        for kind, n in claim_tally(readable_rows(table)).items():
            counts[kind] += n
    by_status: dict[str, list[str]] = {}
    for name, table in settings.items():
        by_status.setdefault(claim_status(table), []).append(name)
    places = "; ".join(f"{status} on {', '.join(map(markdown_text, names))}" for status, names in by_status.items())
    plural = "s" if len(settings) != 1 else ""
    return (f"Across {len(settings)} setting{plural}, of the {sum(counts.values())} fair comparisons of memorization "
            f"and membership inference that are evidence, {counts['as the claim predicts']} go the way the claim "
            f"predicts (BN memorizes or leaks more), {counts['against the claim']} the other way, "
            f"{counts[EQUIVALENT_KIND]} are equivalent within their margin and {counts[INCONCLUSIVE]} are "
            f"inconclusive (Holm-adjusted within each setting, 5% family-wise), so the claim that BN amplifies "
            f"them is {places}.")


def _grouped(rows: pd.DataFrame, why: str) -> str:
    """Rows that are not evidence, one clause per (setting, reason) naming its measures, so eight
    measures refused for one reason read as one clause, not eight."""
    clauses = []
    for (setting, reason), group in rows.groupby(["setting", why], sort=False):
        clauses.append(f"{setting} for {', '.join(group['measure'])} ({reason})")
    return "; ".join(clauses)


# The row texts that the verdict's Markdown shows; chapter and setting are checked against the
# book's names when read (``headlines.check_rows``) and stay as they are, since the verdict selects by them.
SHOWN_TEXT = ("measure", "reference", "runs", "interval", "higher_means", "reason", "resolution", "robustness",
              "dataset", "arch", "reading")


def markdown_safe(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with every shown text column as inert Markdown (``reading.markdown_text``)."""
    table = table.copy()
    for column in SHOWN_TEXT:
        if column in table:
            table[column] = [markdown_text(v) if isinstance(v, str) else v for v in table[column]]
    return table


def conclusion(table: pd.DataFrame) -> str:
    """The verdict of one setting in Markdown. The fair comparisons decide (tested together,
    Holm-adjusted); the paper's equal-epochs setting is reported beside them; rows that are not
    comparable or not resolvable are named, never read. Every text a row carries is escaped
    (``reading.markdown_text``): rows can come from files, and the page shows them as written."""
    table = markdown_safe(table)
    fair = fair_rows(table)
    readable = readable_rows(table)
    unresolved = fair[fair.comparable & (fair["resolution"].fillna("") != "")]
    blocks = []
    if readable.empty:
        blocks.append("**No fair comparison is readable on this setting**: in every fair row a side did not "
                      "fit or did not train, or the measure cannot resolve the difference, so this setting "
                      "gives no evidence either way.")
    else:
        blocks.append(f"**Of the {len(readable)} fair comparisons that are evidence, {_tally_words(tally(readable))}** "
                      "(each test Holm-adjusted across this setting's rows). " + _robust_summary(readable))
        blocks.append("BN minus the reference, per measure:\n\n" + "\n".join(_measure_lines(readable)))
    excluded = fair[~fair.comparable]
    if not excluded.empty:
        blocks.append("Not read as evidence (not comparable): " + _grouped(excluded, "reason") + ".")
    if not unresolved.empty:
        blocks.append("Not read as evidence (the measure cannot resolve the difference, or its rows are "
                      "exploratory): " + _grouped(unresolved, "resolution") + ".")
    privacy = table[table.chapter.isin(PRIVACY_CHAPTERS)]
    equal = privacy[privacy.setting == "equal epochs"]
    if not equal.empty:
        if equal.comparable.all():
            blocks.append("At equal epochs (the paper's setting, both sides fit):\n\n" + "\n".join(_measure_lines(equal)))
        else:
            reason = equal[~equal.comparable].reason.iloc[0]
            blocks.append(f"The paper's plain equal-epochs setting is **not comparable** here ({reason}): its "
                          "differences measure under-training, not BN.")
    for setting, label in (("mitigation", "Against chapter 6's mitigations"),
                           ("simulation", "In the theory chapter's simulation")):
        rows = table[table.setting == setting]
        if not rows.empty:
            blocks.append(f"{label}: " + "; ".join(f"{r.measure}, BN vs {r.reference}: {_meaning(r)}"
                                                   for r in rows.itertuples()) + ".")
    group = table[(table.chapter == "06_dp_mitigation") & (table.setting != "mitigation")]
    if not group.empty:
        blocks.append("BN against GroupNorm at equal epochs (chapter 6): " + "; ".join(
            f"{r.measure}: {_meaning(r)}" for r in group.itertuples()) + ".")
    return "\n\n".join(blocks)


def forest_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The forest plot's rows grouped by measure: each measure on its own scale (a ratio of 10 and
    an AUC difference of 0.01 never share an axis), not-comparable rows flagged."""
    rows = table.assign(label=[f"{s}{'' if r == 'none' else ' vs ' + r}" for s, r in zip(table.setting, table.reference)])
    rows["panel"] = rows["chapter"].str[:2] + " " + rows["measure"]
    return rows[["panel", "label", "setting", "diff", "lo", "hi", "comparable"]]


def readable_fraction(table: pd.DataFrame) -> float:
    """Fraction of the fair privacy rows that are comparable (evidence at all)."""
    fair = fair_rows(table)
    return float(fair.comparable.mean()) if len(fair) else float("nan")


def frontier_curves(curve_values: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per measure of the privacy chapters, each norm's curve against test accuracy
    (``protocol.measures.curves``: mean over seeds with its t-interval at every budget), for the frontier
    figure."""
    privacy = curve_values[curve_values.chapter.isin(PRIVACY_CHAPTERS)]
    return {measure: curves(group) for measure, group in privacy.groupby("measure", sort=False)}


@dataclasses.dataclass
class RecordedSection:
    """What the verdict shows of one recorded setting: a heading with its provenance (and
    "recorded under the previous protocol" for rows without margins), the conclusion, the table of
    its rows and what they rest on, its curve values per measure, and its adjusted rows (for the overall sentence)."""

    name: str
    heading: str
    conclusion: str
    table: pd.DataFrame
    basis: pd.DataFrame
    curves: dict[str, pd.DataFrame]
    rows: pd.DataFrame


def recorded_sections(settings) -> list[RecordedSection]:
    """One :class:`RecordedSection` per ``record.RecordedSetting``, read by the same rules as the
    live rows (the guard, the fair comparisons, Holm within the setting)."""
    sections = []
    for s in settings:
        rows = headlines.adjust(s.headlines)
        data = rows[["dataset", "arch"]].drop_duplicates().astype(str).agg(" / ".join, axis=1).map(markdown_text)
        previous = (f" **{PREVIOUS_PROTOCOL}** (no equivalence margins, no interpolated or both-fit rows; "
                    "re-record it to read it by the current rules).") if headlines.from_previous_protocol(rows) else ""
        heading = f"**{markdown_text(s.name)}** ({', '.join(data)}): {s.label()}.{previous}"
        sections.append(RecordedSection(s.name, heading, conclusion(rows), shown_table(rows), basis_table(rows),
                                        frontier_curves(s.curves), rows))
    return sections

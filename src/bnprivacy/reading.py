"""Intervals and tests into words: one reading of a difference and one way to print "value [lo, hi]".

A headline difference reads exactly one of ``BN higher``, ``BN lower`` (the difference test at the
family-wise level), ``equivalent within ±margin`` (TOST at the same level) or ``inconclusive``
(:func:`decide`); a comparison that is not comparable (a side that did not train, see
the ``protocol`` package) is read as such and never as evidence either way. An interval alone (:func:`judge`)
can say higher, lower or inconclusive, never "no difference".
"""

from __future__ import annotations

import html
import math
import re

NO_INTERVAL = "no interval"
NOT_AVAILABLE = "n/a"
INCONCLUSIVE = "inconclusive"
NO_CLEAR = INCONCLUSIVE  # an interval that holds zero is absence of evidence, never "no difference"
EQUIVALENT = "equivalent within"
ALPHA = 0.05  # the family-wise error rate of the verdict's tests
NOT_RESOLVABLE = "not resolvable"
NOT_RESOLVED = "not resolved"


def _missing(lo: float, hi: float) -> bool:
    return lo is None or hi is None or math.isnan(lo) or math.isnan(hi)


def judge(lo: float, hi: float, higher: str = "BN higher", lower: str = "BN lower") -> str:
    """What an interval of a difference says: ``higher`` when it lies above zero, ``lower`` when
    below, "inconclusive" when it contains zero, "no interval" when a bound is NaN."""
    if _missing(lo, hi):
        return NO_INTERVAL
    if lo > 0:
        return higher
    if hi < 0:
        return lower
    return NO_CLEAR


def equivalent(margin: float, *, scale: float = 1.0, unit: str = "") -> str:
    """The reading of a difference shown to lie within ±``margin``."""
    return f"{EQUIVALENT} ±{margin * scale:g}{unit}"


def decide(diff: float, p: float, p_equivalence: float, margin: float, *, higher: str = "BN higher",
           lower: str = "BN lower", alpha: float = ALPHA, scale: float = 1.0, unit: str = "") -> str:
    """Exactly one of ``higher``/``lower`` (the difference test's p below ``alpha``),
    "equivalent within ±margin" (the TOST p below ``alpha``) or "inconclusive" (neither, or a
    test that could not be made: NaN p). Pass multiplicity-adjusted p-values (``stats.holm``)."""
    if p < alpha:
        return higher if diff > 0 else lower
    if p_equivalence < alpha:
        return equivalent(margin, scale=scale, unit=unit)
    return INCONCLUSIVE


def not_comparable(reason: str) -> str:
    """The reading of a comparison that is not evidence: ``"not comparable: <reason>"``."""
    return f"not comparable: {reason}"


def not_resolvable(nonmembers: int, level: float) -> str:
    """The words for a TPR at FPR ``level`` that ``nonmembers`` pooled non-members cannot resolve."""
    need = math.ceil(10 / level - 1e-9)
    return f"{NOT_RESOLVABLE} with {int(nonmembers):,} non-members (TPR at {level * 100:g}% FPR needs {need:,})"


def not_resolved(diff: float, spread: float, *, scale: float = 1.0, unit: str = "") -> str:
    """The words for a difference inside the spread of the same difference on the attack's null,
    in the units of the value beside it (``scale`` 100 and ``unit`` " points" for rates)."""
    return f"{NOT_RESOLVED}: {diff * scale:+.4f}{unit} is within the null spread ±{spread * scale:.4f}{unit}"


def fmt_rate(value: float, lo: float, hi: float, *, nonmembers: int, level: float, digits: int = 3,
             scale: float = 1.0, unit: str = "") -> str:
    """A TPR at FPR ``level`` as ``"value [lo, hi]"``, or the "not resolvable with n non-members"
    words where it is NaN, so an unresolvable rate never reads as a number."""
    if value is None or math.isnan(value):
        return not_resolvable(nonmembers, level)
    return fmt_interval(value, lo, hi, digits=digits, scale=scale, signed=False, unit=unit)


def fmt_signed(value: float) -> str:
    """``value`` with its sign and three significant digits, but never more than 4 decimals (the
    book's pages print no longer numbers): -0.2, +0.12, -0.0094 (not -0.00937), +0.0000."""
    text = f"{value:+.3g}"
    if "e" in text or ("." in text and len(text.split(".")[1]) > 4):
        text = f"{value:+.4f}"
    return text


def fmt_bounds(lo: float, hi: float, *, digits: int = 3, scale: float = 1.0, signed: bool = True) -> str:
    """The bounds alone, ``"[+0.274, +0.618]"`` (for prose that states the value elsewhere);
    "no interval" when a bound is missing."""
    if _missing(lo, hi):
        return NO_INTERVAL
    spec = f"{'+' if signed else ''}.{digits}f"
    return f"[{lo * scale:{spec}}, {hi * scale:{spec}}]"


def fmt_interval(value: float, lo: float, hi: float, *, digits: int = 3, scale: float = 1.0,
                 signed: bool = True, unit: str = "") -> str:
    """``"+0.446 [+0.274, +0.618]"``; without bounds just the value; "n/a" without a value (a
    comparison with nothing to measure, e.g. a frontier without a common accuracy). ``scale``
    multiplies all three (e.g. 100 for percentage points); ``unit`` follows the value."""
    if value is None or math.isnan(value):
        return NOT_AVAILABLE
    spec = f"{'+' if signed else ''}.{digits}f"
    text = f"{value * scale:{spec}}{unit}"
    if _missing(lo, hi):
        return text
    return f"{text} {fmt_bounds(lo, hi, digits=digits, scale=scale, signed=signed)}"


def sentence(label: str, what: str, value: float, lo: float, hi: float, interval: str, *,
             higher: str, lower: str, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
    """One sentence on a difference: ``"<label>, <what> is +0.1 [0.05, 0.2] (<interval>): <reading>."``
    The reading is emphasised; a missing interval says it is not evidence either way."""
    reading = judge(lo, hi, higher, lower)
    if reading == NO_INTERVAL:
        tail = "with a single replicate there is no interval, so this is not evidence either way"
    elif reading == INCONCLUSIVE:
        tail = f"the interval includes zero: **{INCONCLUSIVE}** (not evidence of no difference)"
    else:
        tail = f"the interval excludes zero: **{reading}**"
    number = fmt_interval(value, lo, hi, digits=digits, scale=scale, unit=unit)
    return f"{label}, {what} is {number} ({interval}); {tail}."


NORM_WORDS = {"batch": "with BatchNorm", "group": "with GroupNorm", "layer": "with LayerNorm",
              "gn_ws": "with GroupNorm and Weight Standardization", "nf": "normalizer-free (scaled WS and AGC)",
              "none": "without normalisation"}


def norm_words(norm: str) -> str:
    """A norm layer in prose: "with GroupNorm", "without normalisation"."""
    return NORM_WORDS.get(norm, f"with norm={norm!r}")


# Characters with a meaning in CommonMark or MyST (emphasis, code, links, roles, math, tables).
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+!|~$:])")


def markdown_text(text) -> str:
    """``text`` (e.g. read from a recorded file) as inert Markdown: HTML special characters as
    entities and Markdown punctuation backslash-escaped, so it shows as written and never as markup,
    a link, a role or a script."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", html.escape(str(text), quote=False))


def code_span(text) -> str:
    """``text`` as one Markdown code span, fenced by more backticks than it holds in a row, so it
    cannot close the span early (a renderer escapes HTML inside a code span)."""
    text = " ".join(str(text).splitlines())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}"

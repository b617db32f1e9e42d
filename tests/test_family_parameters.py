"""The family parameters are declared once, in ``bnprivacy.analysis.parameters.FamilyParameters``.

Papermill needs each of chapters 01-04 to keep a literal parameters cell, and ``book/profiles.yml``
sets the parameters per profile, so both restate the declaration; these tests fail when a cell, a
profile, ``family_steps`` or the ``family`` command drifts from it. Nothing here trains.
"""

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bnprivacy import book
from bnprivacy.__main__ import family_values
from bnprivacy.analysis import family_steps, parameters
from bnprivacy.analysis.parameters import FAMILY_PARAMETERS, FamilyParameters

REPO = Path(__file__).resolve().parents[1]
FAMILY_CHAPTERS = ("01_training", "02_canaries", "03_gradient_influence", "04_membership_inference")
WHERE = "bnprivacy.analysis.parameters.FamilyParameters"


def cell_drift(root, chapter: str) -> list[str]:
    """Where ``chapter``'s parameters cell differs from FamilyParameters, one line per family
    parameter that is missing or has another default or meaning; empty when the cell agrees."""
    declared = book.chapter_parameters(root, chapter)
    expected = parameters.defaults()
    problems = []
    for name in FAMILY_PARAMETERS:
        if name not in declared:
            problems.append(f"{chapter}: {name} is not declared")
            continue
        # repr, not ==: 16.0 == 16, but a float width would be another Config, hence other runs.
        value = ast.literal_eval(declared[name]["default"])
        if repr(value) != repr(expected[name]):
            problems.append(f"{chapter}: {name} = {value!r}, but {WHERE} has {expected[name]!r}")
        # The meanings must match word for word: the book's parameter tables show each chapter's.
        if declared[name]["help"] != parameters.help_text(name):
            problems.append(f"{chapter}: {name}'s comment is {declared[name]['help']!r}, but {WHERE} "
                            f"says {parameters.help_text(name)!r}")
    return problems


def family_part(values: dict) -> dict:
    """The family parameters among ``values``, each as its repr (so 16 and 16.0 differ)."""
    return {name: repr(value) for name, value in values.items() if name in FAMILY_PARAMETERS}


def profile_drift(root) -> list[str]:
    """The profiles of ``book/profiles.yml`` that give a chapter 02-04 other family parameters than
    chapter 01 (they would name other runs), one line each; empty when every profile agrees."""
    problems = []
    for profile in book.load_profiles(root):
        first = family_part(book.profile_parameters(root, profile, FAMILY_CHAPTERS[0]))
        for chapter in FAMILY_CHAPTERS[1:]:
            values = family_part(book.profile_parameters(root, profile, chapter))
            differ = sorted(name for name in set(first) | set(values) if first.get(name) != values.get(name))
            if differ:
                problems.append(f"profile {profile}: {chapter} differs from {FAMILY_CHAPTERS[0]} in {differ}")
    return problems


def edit(path, old: str, new: str) -> None:
    """Replace the one occurrence of ``old`` in the file at ``path``."""
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} should occur once in {path}"
    path.write_text(text.replace(old, new))


# --- the declaration ---------------------------------------------------------------------------

def test_family_parameters_are_the_dataclass_fields_and_sweep_uses_them():
    assert FAMILY_PARAMETERS == tuple(field.name for field in dataclasses.fields(FamilyParameters))
    assert family_steps.FAMILY_PARAMETERS == FAMILY_PARAMETERS
    assert len(FAMILY_PARAMETERS) == len(set(FAMILY_PARAMETERS)) == 26


def test_every_family_parameter_has_a_meaning_and_an_unknown_name_is_refused():
    assert all(parameters.help_text(name).strip() for name in FAMILY_PARAMETERS)
    with pytest.raises(ValueError, match="'seedz' is not a family parameter; allowed names: dataset, arch"):
        parameters.help_text("seedz")


def test_defaults_are_fresh_on_every_call_and_the_declaration_is_frozen():
    first = parameters.defaults()
    first["norms"].append("group")
    assert parameters.defaults()["norms"] == ["batch", "gn_ws", "nf", "none"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        FamilyParameters().seeds = 5


def test_the_declaration_imports_nothing_that_trains_plots_or_stores():
    # What it loads beyond bnprivacy.config (a leaf that every module of the package loads anyway).
    code = ("import sys, bnprivacy.config; before = set(sys.modules); import bnprivacy.analysis.parameters; "
            "print((sorted(m for m in set(sys.modules) - before if m.startswith('bnprivacy')), "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pandas', 'numpy'))))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    added, heavy = ast.literal_eval(run.stdout)
    assert added == ["bnprivacy.analysis", "bnprivacy.analysis.parameters"] and heavy == []


# --- the chapters' cells ------------------------------------------------------------------------

@pytest.mark.parametrize("chapter", FAMILY_CHAPTERS)
def test_the_chapter_cell_declares_every_family_parameter_as_the_dataclass_does(chapter):
    assert cell_drift(REPO, chapter) == [], f"make the chapter's cell match {WHERE}"


def test_a_drifted_chapter_cell_is_caught(book_copy):
    chapter = book_copy / "book" / "03_gradient_influence.md"
    edit(chapter, "seeds = 3 ", "seeds = 4 ")
    edit(chapter, "width = 16 ", "width = 16.0 ")
    edit(chapter, "# training batch size", "# batch size")
    edit(chapter, 'device = "cpu"           # auto | cpu | cuda\n', "")
    assert cell_drift(book_copy, "03_gradient_influence") == [
        f"03_gradient_influence: width = 16.0, but {WHERE} has 16",
        f"03_gradient_influence: seeds = 4, but {WHERE} has 3",
        f"03_gradient_influence: batch_size's comment is 'batch size', but {WHERE} says 'training batch size'",
        "03_gradient_influence: device is not declared"]
    assert cell_drift(book_copy, "01_training") == []


# --- the profiles -------------------------------------------------------------------------------

def test_every_profile_gives_chapters_01_to_04_the_same_family_parameters():
    assert profile_drift(REPO) == [], "set the family parameters once per profile, in its YAML anchor"


def test_a_profile_that_gives_one_chapter_other_family_parameters_is_caught(book_copy):
    edit(book_copy / "book" / "profiles.yml", "  03_gradient_influence: *quick_family\n",
         "  03_gradient_influence: {<<: *quick_family, seeds: 5}\n")
    assert profile_drift(book_copy) == ["profile quick: 03_gradient_influence differs from 01_training in ['seeds']"]


def test_every_profile_names_a_valid_family():
    for profile in book.load_profiles(REPO):
        assert isinstance(family_steps.protocol_from(family_values(REPO, profile, {})), family_steps.Protocol), profile


def test_cifar_lt_is_the_cifar_recipe_on_a_long_tailed_pool():
    """The two recorded CIFAR settings are a controlled pair: comparing their rare-class readings is
    fair only if the long tail is all that differs between them."""
    balanced, long_tailed = (family_values(REPO, name, {}) for name in ("cifar", "cifar-lt"))
    assert {k for k in balanced if balanced[k] != long_tailed[k]} == {"imbalance"}
    assert balanced["imbalance"] == 1.0 and 10 <= long_tailed["imbalance"] <= 50  # the long-tail literature's range


@pytest.mark.parametrize("profile", ["cifar", "cifar-lt"])
def test_the_recorded_cifar_profiles_meet_the_recording_rules(profile):
    from bnprivacy.record import MIN_RECORDED_MODELS

    values = family_values(REPO, profile, {})
    assert values["n_models"] >= MIN_RECORDED_MODELS and values["seeds"] >= 3
    assert values["equal_epochs"] in values["budgets"] and len(values["budgets"]) >= 2


# --- family_protocol() and the family command -------------------------------------------------------------

def test_family_takes_exactly_the_family_parameters():
    assert family_steps.family_protocol(**parameters.defaults()) == family_steps.protocol_from({**parameters.defaults(), "margins": {}})
    values = {**parameters.defaults(), "seedz": 3}
    del values["seeds"]
    message = re.escape("family_protocol(): the family parameters ['seeds'] are missing; ['seedz'] are not family "
                        "parameters; pass exactly these names: dataset, arch")
    with pytest.raises(ValueError, match=message):
        family_steps.family_protocol(**values)
    with pytest.raises(ValueError, match=r"does not define the family parameters \['seeds'\]; declare them"):
        family_steps.protocol_from(values)


def test_the_family_command_takes_the_dataclass_defaults_then_the_profile():
    quick = family_values(REPO, "quick", {})
    chosen = book.profile_parameters(REPO, "quick", "01_training")
    assert quick == {**parameters.defaults(), **{k: v for k, v in chosen.items() if k in FAMILY_PARAMETERS}}
    # The quick profile is the chapters' defaults, so it changes nothing.
    assert family_part(quick) == family_part(parameters.defaults())
    smoke = family_values(REPO, "smoke", {"seeds": 5})
    assert (smoke["width"], smoke["lr"], smoke["seeds"]) == (4, FamilyParameters().lr, 5)
    with pytest.raises(ValueError, match=r"\['seedz'\] are not family parameters; allowed names: dataset"):
        family_values(REPO, "quick", {"seedz": 5})


def test_the_family_command_does_not_read_chapter_01s_cell(book_copy):
    edit(book_copy / "book" / "01_training.md", "weight_decay = 5e-4 ", "weight_decay = 1e-3 ")
    assert family_values(book_copy, "quick", {})["weight_decay"] == FamilyParameters().weight_decay

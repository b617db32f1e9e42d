"""Chapters 5 and 6 check every parameter in their first cells, before anything trains: the
parameters cell as the chapter declares it, each bad value refused with its name, and the first
cells themselves run on a bad value and stop before any data is loaded or any model trained."""

import inspect
import math
import re
import types
from pathlib import Path

import pytest
import yaml

from bnprivacy.analysis import theory_steps
from bnprivacy.config import Config

BOOK = Path(__file__).resolve().parents[1] / "book"
# Chapter 5's parameters that the Config it builds checks (batch_size and canaries are checked by both).
CONFIG_CHECKED = {"dataset", "arch", "width", "train_size", "epochs", "lr", "device", "batch_size", "canaries"}


def code_cells(chapter: str) -> list[str]:
    """The code cells of a MyST chapter, in order, without their ``:tags:`` lines."""
    text = (BOOK / f"{chapter}.md").read_text()
    cells = re.findall(r"```\{code-cell\} ipython3\n(.*?)```", text, flags=re.S)
    return ["\n".join(line for line in cell.splitlines() if not line.startswith(":tags:")) for cell in cells]


def defaults(chapter: str) -> dict:
    """The chapter's parameters cell, evaluated."""
    namespace = {}
    exec(code_cells(chapter)[0], namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


def chapter_check(**changes):
    """check_chapter_parameters with chapter 5's defaults, some of them changed."""
    parameters = {**defaults("05_theory"), **changes}
    names = inspect.signature(theory_steps.check_chapter_parameters).parameters
    theory_steps.check_chapter_parameters(**{k: v for k, v in parameters.items() if k in names})


# --- chapter 5 ------------------------------------------------------------------------------------

def test_every_parameter_of_chapter_5_is_checked_by_the_chapter_check_or_by_config():
    checked = set(inspect.signature(theory_steps.check_chapter_parameters).parameters)
    assert set(defaults("05_theory")) == checked | CONFIG_CHECKED


def profile_parameters(chapter: str):
    profiles = yaml.safe_load((BOOK / "profiles.yml").read_text())
    for name, entries in profiles.items():
        yield name, {**(entries.get("_all") or {}), **(entries.get(chapter) or {}), "profile": name}


def test_the_chapter_defaults_and_every_profile_pass_the_check():
    chapter_check()
    for profile, parameters in profile_parameters("05_theory"):
        chapter_check(**{k: v for k, v in parameters.items() if k in defaults("05_theory")})


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("name, value", [
    # The cases: each used to fail late (cells 8 to 20) or, the last, to run.
    ("sim_lr", NAN), ("max_distance", INF), ("classes", 1), ("probe_chunk", 0), ("n_distances", 0),
    ("sim_pretrain_epochs", -1),
    ("features", 0), ("features", 2.0), ("classes", True), ("per_class", 0), ("per_class", "43"),
    ("linear_batch", 2), ("linear_batch", 32.0),
    ("batch_sizes", [2, 4]), ("batch_sizes", [2, 4, 8, 200]), ("batch_sizes", [1, 4, 8]), ("batch_sizes", ["8", 16]),
    ("batch_sizes", []),
    ("max_distance", 0.1), ("max_distance", 1e9), ("max_distance", "1e7"), ("max_distance", NAN),
    ("n_distances", 1), ("n_distances", 5.0),
    ("net_distances", [1]), ("net_distances", [3, 1]), ("net_distances", [1, NAN]), ("net_distances", [0, 1]),
    ("net_distances", [1, 1e12]), ("sim_distances", []), ("sim_distances", [1, INF]), ("sim_distances", [10, 10]),
    ("sim_distances", [True]),
    ("sim_batch_sizes", [1]), ("sim_batch_sizes", [8, 200]), ("sim_batch_sizes", 8.5),
    ("sim_lr", 0), ("sim_lr", INF), ("sim_lr", True), ("sim_lr", -0.1),
    ("sim_pretrain_epochs", 0), ("sim_pretrain_epochs", 2.0), ("sim_max_epochs", 0), ("sim_max_epochs", NAN),
    ("typical_probes", 1), ("probe_chunk", 1.5), ("probe_chunk", True),
    ("seeds", 1), ("seeds", True), ("threads", 0), ("threads", 1.0),
    ("batch_size", 2), ("batch_size", 64.0), ("canaries", ""),
    ("profile", "../elsewhere"), ("profile", 3), ("norms", ["batch"])])
def test_a_bad_chapter_5_parameter_is_refused_naming_it_its_value_and_the_allowed_values(name, value):
    with pytest.raises(ValueError, match=re.escape(f"{name}={value!r} is not allowed; allowed values: ")):
        chapter_check(**{name: value})


def test_a_linear_batch_the_mixture_cannot_fill_is_refused():
    with pytest.raises(ValueError, match=r"linear_batch=200 must lie between 2 and classes \* per_class = 129"):
        chapter_check(linear_batch=200)


@pytest.mark.parametrize("name, value", [("lr", NAN), ("lr", INF), ("lr", 0), ("epochs", 0), ("epochs", 1.5),
                                         ("width", -1), ("train_size", -1), ("batch_size", True),
                                         ("device", "tpu"), ("dataset", "imagenet"), ("arch", "vit"),
                                         ("canaries", "noise")])
def test_config_refuses_the_parameters_it_checks_for_the_chapter(name, value):
    parameters = {k: v for k, v in defaults("05_theory").items() if k in CONFIG_CHECKED}
    with pytest.raises(ValueError, match=re.escape(f"Config.{name}={value!r}")):
        Config(**{**parameters, name: value})


def test_the_pool_must_hold_the_measured_batch_the_typical_probes_and_a_canary():
    pool = types.SimpleNamespace(kinds=["typical"] * 30 + ["noise"] * 2)
    theory_steps.check_pool(pool, batch_size=11, typical_probes=20)
    with pytest.raises(ValueError, match=r"batch_size=12 and typical_probes=20 need 31 typical .* has 30: lower them"):
        theory_steps.check_pool(pool, batch_size=12, typical_probes=20)
    with pytest.raises(ValueError, match="no canaries"):
        theory_steps.check_pool(types.SimpleNamespace(kinds=["typical"] * 40), batch_size=11, typical_probes=20)


def run_first_cells(chapter: str, cells: int, **changes) -> dict:
    """Run the chapter's parameters cell, with ``changes`` (as papermill injects them), and the
    ``cells`` code cells after it."""
    namespace = {}
    exec(code_cells(chapter)[0], namespace)
    namespace.update(changes)
    for cell in code_cells(chapter)[1:1 + cells]:
        exec(cell, namespace)
    return namespace


@pytest.mark.parametrize("name, value", [("sim_lr", NAN), ("max_distance", INF), ("classes", 1), ("probe_chunk", 0),
                                         ("n_distances", 0), ("sim_pretrain_epochs", -1)])
def test_chapter_5_stops_in_its_first_cell_before_loading_any_data(name, value, monkeypatch):
    import bnprivacy.data

    def must_not_run(*_, **__):
        raise AssertionError("a bad parameter passed the check: the chapter loaded its data")

    monkeypatch.setattr(bnprivacy.data, "load_dataset", must_not_run)
    with pytest.raises(ValueError, match=re.escape(f"{name}={value!r} is not allowed")):
        run_first_cells("05_theory", 1, **{name: value})


# --- chapter 6 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value, message", [
    ("epsilons", [0.001], r"epsilon=0.001 is out of reach with the rdp accountant at delta=.*Raise epsilon"),
    ("epsilons", [1e30], r"epsilon=1e\+30 is not allowed"), ("max_grad_norm", INF, r"max_grad_norm=inf is not allowed"),
    ("dp_batch_size", 0, r"dp_batch_size=0 is not allowed"), ("dp_lr", NAN, r"dp_lr=nan is not allowed")])
def test_chapter_6_stops_in_its_first_cells_before_any_training(name, value, message, monkeypatch):
    from bnprivacy.analysis import mitigation

    def must_not_run(*_, **__):
        raise AssertionError("a bad parameter passed the plan: the chapter trained")

    monkeypatch.setattr(mitigation, "train", must_not_run)
    with pytest.raises(ValueError, match=message):
        run_first_cells("06_dp_mitigation", 2, **{name: value})

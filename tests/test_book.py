"""The book pipeline: every chapter runs through papermill (smoke profile) and the HTML builds."""

import re
from pathlib import Path

import papermill
import pytest

from bnprivacy import assignments, book, htmlcheck

REPO = Path(__file__).resolve().parents[1]


def test_toc_lists_the_intro_and_the_chapters():
    files = book.toc_files(REPO)
    assert files[0] == "book/intro" and "book/01_training" in files
    assert "01_training" in book.chapter_names(REPO) and "intro" not in book.chapter_names(REPO)


@pytest.mark.parametrize("chapter", book.chapter_names(REPO))
def test_every_parameter_is_documented_and_every_profile_names_real_parameters(chapter):
    params = book.chapter_parameters(REPO, chapter)
    assert "profile" in params
    undocumented = [name for name, spec in params.items() if not spec["help"]]
    assert not undocumented, f"{chapter}: parameters without an inline comment: {undocumented}"
    for profile in book.load_profiles(REPO):
        unknown = set(book.profile_parameters(REPO, profile, chapter)) - set(params)
        assert not unknown, f"profile {profile} sets unknown parameters of {chapter}: {unknown}"


def test_every_chapter_that_trains_on_a_dataset_lets_the_reader_subsample_it():
    # A reader who brings a large dataset sets the pool size per chapter (issue 14).
    for chapter in book.chapter_names(REPO):
        params = book.chapter_parameters(REPO, chapter)
        if "dataset" in params:
            assert "train_size" in params, f"{chapter} takes a dataset but not train_size"


def test_overrides_are_typed_like_yaml():
    assert book.parse_overrides([("epochs", "5"), ("lr", "0.1"), ("dataset", "cifar10"),
                                 ("norms", "[batch, none]")]) == \
        {"epochs": 5, "lr": 0.1, "dataset": "cifar10", "norms": ["batch", "none"]}


def test_numbers_that_yaml_reads_as_text_are_numbers_and_unreadable_values_are_explained():
    assert book.parse_overrides([("lr", "1e-3"), ("delta", "-2E-5"), ("name", "e5"), ("width", "8")]) == \
        {"lr": 0.001, "delta": -2e-5, "name": "e5", "width": 8}
    with pytest.raises(ValueError, match="not a value YAML can read.*write lists like"):
        book.parse_overrides([("norms", "[batch, none")])


@pytest.mark.parametrize("name", ["epoch", 'x=1;open("pwned","w").write("x")#'])
def test_a_parameter_name_the_chapter_does_not_declare_is_refused_before_anything_runs(book_copy, name):
    with pytest.raises(ValueError, match=r"not a parameter of 01_training; allowed names: .*budgets"):
        book.execute_chapter(book_copy, "01_training", "smoke", {name: 1})
    assert not (book_copy / book.STAGE / "book" / "01_training.ipynb").exists() and not (book_copy / "pwned").exists()
    with pytest.raises(ValueError, match="not a parameter of any of the chapters"):
        book.build_book(book_copy, "smoke", ["01_training", "05_theory"], {name: 1})


def test_the_profile_is_chosen_by_name_never_by_a_parameter_or_a_path(book_copy, isolated_store):
    with pytest.raises(ValueError, match="-p profile is not allowed.*allowed profiles: .*quick"):
        book.execute_chapter(book_copy, "07_verdict", "smoke", {"profile": "../../x"})
    with pytest.raises(ValueError, match="profile '../x' is not in"):
        book.execute_chapter(book_copy, "07_verdict", "../x")
    from bnprivacy import headlines

    with pytest.raises(ValueError, match="profile='../../x' is not allowed"):
        headlines.headline_folder("../../x")
    assert not (book_copy / book.STAGE / "book" / "07_verdict.ipynb").exists()


def test_unknown_profile_is_explained():
    with pytest.raises(ValueError, match="profile 'tiny'.*allowed profiles"):
        book.profile_parameters(REPO, "tiny", "01_training")


@pytest.mark.slow
def test_every_chapter_executes_the_book_builds_and_the_teacher_notebooks_run(book_copy, isolated_store):
    index = book.build_book(book_copy, profile="smoke")
    assert index.is_file()
    html = book_copy / "_build" / "html"
    for chapter in book.chapter_names(book_copy):
        page = (html / "book" / f"{chapter}.html").read_text()
        assert "<img" in page, f"{chapter} has no figure"
        assert "Traceback" not in page
        assert 'class="solution' in page and "dropdown" in page, f"{chapter}: no solution in a dropdown"
    rerun = (html / "book" / "rerun.html").read_text()
    assert "bnprivacy: parameter tables" not in rerun and "n_targets" in rerun and "canary_references" in rerun
    assert "colab.research.google.com" in (html / "book" / "04_membership_inference.html").read_text()
    if htmlcheck.browser_available():
        htmlcheck.check_site(html, isolated_store / "screenshots", progress=False)
    # The teacher notebooks are the chapters with their solutions: they run as they are (the trained
    # models are in the results store from the build above, so this only re-runs the analyses).
    written = assignments.write_assignments(book_copy, book.chapter_names(book_copy), book_copy / "assignments")
    for notebook in written["teacher"]:
        chapter = notebook.stem
        papermill.execute_notebook(str(notebook), str(notebook.with_suffix(".out.ipynb")),
                                   parameters=book.profile_parameters(book_copy, "smoke", chapter),
                                   kernel_name=book.KERNEL, cwd=str(book_copy), progress_bar=False)


@pytest.mark.slow
def test_chapters_01_to_04_read_any_reference_norm_not_only_none(book_copy, isolated_store):
    # The recording of the cifar profile (norms batch, group, none: reference group) once failed
    # in chapter 04 because prose glued values of 'none' only; here the reference is GroupNorm and
    # no 'none' exists at all.
    import json

    chapters = ["01_training", "02_canaries", "03_gradient_influence", "04_membership_inference"]
    for chapter in chapters:
        book.execute_chapter(book_copy, chapter, "smoke", {"norms": ["batch", "group"]})
        notebook = json.loads((book_copy / book.STAGE / "book" / f"{chapter}.ipynb").read_text())
        glued = json.dumps(notebook)
        assert "with GroupNorm" in glued and "Traceback" not in glued, chapter


def test_profile_wide_settings_apply_only_to_chapters_that_have_them():
    assert book.profile_parameters(REPO, "quick", "01_training")["device"] == "cpu"
    assert "device" not in book.profile_parameters(REPO, "quick", "07_verdict")


def test_parameter_tables_list_every_parameter_with_its_meaning():
    tables = book.parameter_tables(REPO)
    for chapter in book.chapter_names(REPO):
        assert f"### {chapter}" in tables
        for name, spec in book.chapter_parameters(REPO, chapter).items():
            assert f"| `{name}` | `{spec['default']}` | {spec['help'].split('|')[0].strip()[:20]}" in tables
    chapter_04 = tables.split("### 04_membership_inference")[1].split("### ")[0]
    assert "| `n_models` | `16` |" in chapter_04  # the quick default
    assert "- `smoke`: " in chapter_04 and "`n_models` = `6`" in chapter_04.split("- `smoke`: ")[1].splitlines()[0]


@pytest.mark.slow
@pytest.mark.parametrize("chapter, overrides, message", [
    ("01_training", {"norms": ["batch", "rms"]}, r"norms \['rms'\] are not allowed; allowed values"),
    ("02_canaries", {"budgets": [2, 1]}, "budgets=.2, 1.* must be strictly increasing"),
    ("03_gradient_influence", {"fit_threshold": 1.5}, "fit_threshold=1.5 is not allowed"),
    ("04_membership_inference", {"lr_grid": [1.0, 0.0]}, "lr_grid=.* finite multipliers > 0"),
    ("01_training", {"norms": ["none", "group"]}, "must hold 'batch'"),
    ("02_canaries", {"seeds": 0}, "seeds=0 is not allowed"),
])
def test_a_bad_protocol_parameter_fails_the_chapter_before_training_and_names_the_cell(
        chapter, overrides, message, book_copy, isolated_store):
    results = isolated_store / "results"
    (results / "runs" / "done").mkdir(parents=True)
    (results / "runs" / "done" / "history.csv").write_text("kept\n")
    with pytest.raises(book.ChapterFailed, match=message) as error:
        book.execute_chapter(book_copy, chapter, "smoke", overrides)
    assert f"chapter {chapter} failed in cell" in str(error.value)
    assert sorted(p.name for p in results.iterdir()) == ["runs"]
    assert [p.name for p in (results / "runs").iterdir()] == ["done"]
    assert (results / "runs" / "done" / "history.csv").read_text() == "kept\n"


def test_a_failing_chapter_is_named_with_its_cell(book_copy):
    (book_copy / "book" / "99_broken.md").write_text(
        (book_copy / "book" / "01_training.md").read_text().split("```{code-cell}")[0]
        + "```{code-cell} ipython3\n:tags: [parameters]\n\nprofile = 'quick'  # profile\n```\n\n"
        + "```{code-cell} ipython3\nraise RuntimeError('boom in chapter 99')\n```\n")
    (book_copy / "_toc.yml").write_text((book_copy / "_toc.yml").read_text() + "      - file: book/99_broken\n")
    (book_copy / "book" / "profiles.yml").write_text("quick: {}\n")
    with pytest.raises(book.ChapterFailed, match=r"chapter 99_broken failed in cell \d+.*boom in chapter 99"):
        book.execute_chapter(book_copy, "99_broken", "quick")


@pytest.mark.slow
def test_chapter_02_refuses_a_reference_set_too_small_before_training(book_copy, isolated_store):
    with pytest.raises(book.ChapterFailed, match="resolve exposure up to.*fewer than the 8 bits"):
        book.execute_chapter(book_copy, "02_canaries", "smoke", {"exposure_bits": 8})
    assert not (isolated_store / "results" / "runs").exists()


@pytest.mark.slow
def test_book_only_builds_the_pages_of_what_ran_and_says_which_were_not_executed(book_copy, monkeypatch, capsys):
    # Issue 38: `book --only 01 02 03 04 07` trained for 38 minutes, then built no HTML because
    # chapters 05 and 06 had never been executed.
    import nbformat

    ran = []

    def execute(root, chapter, profile, overrides=None, **kwargs):  # stands in for papermill's minutes
        ran.append(chapter)
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {chapter}\n\nexecuted here")])
        notebook.metadata["kernelspec"] = {"name": book.KERNEL, "display_name": "Python 3", "language": "python"}
        nbformat.write(notebook, book.stage_static(root) / "book" / f"{chapter}.ipynb")

    monkeypatch.setattr(book, "execute_chapter", execute)
    index = book.build_book(book_copy, "smoke", ["05_theory"])
    assert ran == ["05_theory"] and index.is_file()
    said = capsys.readouterr().out
    assert said.index("note: 01_training") < said.index("HTML book")  # said before any chapter ran
    html = book_copy / "_build" / "html" / "book"
    assert "executed here" in (html / "05_theory.html").read_text()
    verdict = " ".join(re.sub(r"<[^>]+>", " ", (html / "07_verdict.html").read_text()).split())
    assert "was not executed in this build" in verdict and "python -m bnprivacy chapter 07_verdict" in verdict
    # The placeholders are gone from the stage: a plain `html` still refuses what never ran.
    assert not (book_copy / book.STAGE / "book" / "07_verdict.ipynb").exists()
    with pytest.raises(FileNotFoundError, match="have not been executed yet"):
        book.build_html(book_copy)

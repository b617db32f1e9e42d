"""The command line, ``python -m bnprivacy``: a bad path or file is one clear line, never a traceback."""

import errno
import os
import shutil
from pathlib import Path

import pytest

from bnprivacy.__main__ import main

REPO = Path(__file__).resolve().parents[1]


def test_a_results_folder_that_is_a_file_is_explained(isolated_store, monkeypatch, capsys):
    blocker = isolated_store / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("BNPRIVACY_RESULTS", str(blocker))
    monkeypatch.chdir(REPO)
    assert main(["shadow", "2", "-c", "epochs", "1", "-c", "width", "4", "--chunk-size", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "a file where a folder is expected: move the file away" in err and "Traceback" not in err
    assert "permission" not in err.lower()


@pytest.mark.parametrize("code, advice", [
    (errno.ENOSPC, "The disk is full"), (errno.EACCES, "fix its permissions"), (errno.EROFS, "read-only"),
    (errno.ENOTDIR, "a file where a folder is expected"), (errno.EIO, "input/output error"), (errno.ECONNRESET, "check it and run again"),
])
def test_a_file_system_error_is_explained_by_its_own_errno(monkeypatch, capsys, code, advice):
    from bnprivacy import book

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), "results/runs/x")

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(book, "execute_chapter", fail)
    assert main(["chapter", "07_verdict"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: [Errno {code}]") and advice in err and "Traceback" not in err
    if code != errno.EACCES:
        assert "permission" not in err.lower()


@pytest.mark.parametrize("variable", ["BNPRIVACY_RESULTS", "BNPRIVACY_DATA"])
def test_a_store_variable_set_but_empty_counts_as_unset_with_a_warning(monkeypatch, variable):
    from bnprivacy.data import data_dir
    from bnprivacy.runs.disk import results_dir

    monkeypatch.setenv(variable, "  ")
    folder = results_dir if variable == "BNPRIVACY_RESULTS" else data_dir
    with pytest.warns(UserWarning, match=f"{variable} is set but empty; using the default folder"):
        assert folder() == Path("results" if variable == "BNPRIVACY_RESULTS" else "data")


def test_an_unwritable_data_folder_is_one_line_before_the_first_cell(isolated_store, monkeypatch, capsys, tmp_path):
    import papermill

    blocker = isolated_store / "data-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("BNPRIVACY_DATA", str(blocker))
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("a cell ran"))
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("bnprivacy.book.stage_static", lambda root: tmp_path / "stage")  # keep the repo's _build
    monkeypatch.setattr("bnprivacy.book.BUILD", tmp_path / "build")
    assert main(["chapter", "05_theory", "-p", "dataset", f"imagefolder:{isolated_store}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write into {blocker}/cache") and "BNPRIVACY_DATA" in err


def test_a_malformed_profiles_file_is_explained(tmp_path, monkeypatch, capsys):
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy2(REPO / "_toc.yml", root / "_toc.yml")
    shutil.copytree(REPO / "book", root / "book", ignore=shutil.ignore_patterns("*.ipynb"))
    (root / "book" / "profiles.yml").write_text("quick: {device: [cpu\n")
    monkeypatch.chdir(root)
    assert main(["chapter", "07_verdict", "--profile", "quick"]) == 1
    assert "book/profiles.yml: not a value YAML can read" in capsys.readouterr().err


def test_outside_the_repository_the_command_says_where_to_run_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["params", "01_training"]) == 1
    assert "run this from the bnprivacy repository" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["chapter", "01_training", "-p", "epoch", "1"], "not a parameter of 01_training; allowed names"),
    (["chapter", "01_training", "-p", "profile", "../../x"], "-p profile is not allowed"),
    (["chapter", "01_training", "--profile", "../../x"], "profile '../../x' is not in"),
    (["shadow", "4", "--executor", "slurm"], "executor='slurm' is not allowed; allowed values: local, ray"),
    (["shadow", "4", "--executor", "ray", "--shard", "0/2"], "executor='ray' schedules the whole run"),
    (["family", "--executor", "dask"], "executor='dask' is not allowed; allowed values: local, ray"),
    (["family", "--executor", "ray", "--shard", "1/2"], "executor='ray' schedules the whole run"),
    (["family", "--address", "10.0.0.5:6379"], "add --executor ray"),
])
def test_bad_parameters_fail_with_one_line_before_anything_runs(argv, message, monkeypatch, capsys, isolated_store):
    monkeypatch.chdir(REPO)
    assert main(argv) == 1
    assert message in capsys.readouterr().err
    assert not (isolated_store / "results").exists()

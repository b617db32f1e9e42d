import errno
import os
import types

import pandas as pd
import pytest
import torch

from bnprivacy.runs import cache, disk
from bnprivacy.config import Config
from bnprivacy.data import load_dataset

# Per-epoch wall time differs run to run; results are compared without it.
WALL_CLOCK = "seconds"
CFG = Config(width=8, epochs=2, device="cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset(CFG)


def test_a_finished_training_loads_instead_of_retraining(digits, monkeypatch):
    first = cache.train_cached(CFG, digits)
    monkeypatch.setattr(cache, "train_model",
                        lambda *a, **k: pytest.fail("a stored result was retrained"))
    again = cache.train_cached(CFG, digits)
    assert again["history"].equals(first["history"])
    for name, tensor in first["state_dict"].items():
        assert torch.equal(tensor, again["state_dict"][name])


def test_a_corrupt_file_is_detected_and_redone(digits):
    first = cache.train_cached(CFG, digits)
    folder = cache.training_folder(CFG)
    (folder / "model.pt").write_bytes(b"torn")
    assert not disk.is_complete(folder)
    redone = cache.train_cached(CFG, digits)
    assert disk.is_complete(folder)
    assert redone["history"].drop(columns=WALL_CLOCK).equals(first["history"].drop(columns=WALL_CLOCK))


def test_a_folder_without_manifest_is_unfinished(digits):
    cache.train_cached(CFG, digits)
    folder = cache.training_folder(CFG)
    (folder / disk.MANIFEST).unlink()
    assert not disk.is_complete(folder)


def test_bad_config_fails_before_touching_results(isolated_store):
    results = isolated_store / "results" / "train" / "keep"
    results.mkdir(parents=True)
    (results / "history.csv").write_text("epoch\n1\n")
    with pytest.raises(ValueError):
        cache.train_cached(CFG.replace(epochs=0))
    with pytest.raises(ValueError):
        cache.train_cached(Config.from_dict({**CFG.to_dict(), "arch": "nope"}))
    assert (results / "history.csv").read_text() == "epoch\n1\n"
    assert sorted(p.name for p in (isolated_store / "results" / "train").iterdir()) == ["keep"]


@pytest.mark.parametrize("failing, error", [("fsync", OSError(errno.ENOSPC, "No space left on device")),
                                            ("replace", OSError(errno.ENOSPC, "No space left on device")),
                                            ("replace", KeyboardInterrupt())])
def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch, failing, error):
    path = tmp_path / "signals-eval-q2.pt"
    path.write_bytes(b"old")

    def fails(*args):
        raise error

    monkeypatch.setattr(os, failing, fails)
    with pytest.raises(type(error)):
        disk.write_atomic(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_manifest_that_omits_a_training_file_is_not_trusted(monkeypatch):
    folder = cache.training_folder(CFG)
    folder.mkdir(parents=True)
    disk.save_json(folder / "config.json", CFG.to_dict())
    disk.seal(folder, ["config.json"])  # checksums right, but history.csv and model.pt never written
    trained = []

    def train_model(cfg, data, progress=False):  # a stand-in: the test is about what is trusted
        trained.append(cfg)
        return types.SimpleNamespace(history=pd.DataFrame({"epoch": [1]}), model=torch.nn.Linear(2, 1))

    monkeypatch.setattr(cache, "train_model", train_model)
    record = cache.train_cached(CFG, data="not loaded")
    assert trained == [CFG] and disk.is_complete(folder, required=cache.TRAINING_FILES)
    assert sorted(record["state_dict"]) == ["bias", "weight"]


def test_every_kind_of_result_has_one_folder_and_an_unknown_kind_is_refused(isolated_store):
    from bnprivacy import headlines
    from bnprivacy.runs.spec import RunSpec, run_folder

    root = isolated_store / "results"
    assert cache.training_folder(Config(device="cpu")).parent == root / "train"
    assert run_folder(RunSpec(Config(device="cpu"), n_models=2)).parent == root / "runs"
    assert headlines.headline_folder("quick") == root / "headlines" / "quick"
    with pytest.raises(ValueError, match="'plots' is not a kind of result; the store holds train, runs"):
        disk.results_folder("plots")

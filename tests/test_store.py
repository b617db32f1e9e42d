import pytest
import torch

from bnprivacy import store
from bnprivacy.config import Config
from bnprivacy.data import load_dataset

# Per-epoch wall time differs run to run; results are compared without it.
WALL_CLOCK = "seconds"
CFG = Config(width=8, epochs=2, device="cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset(CFG)


def test_a_finished_training_loads_instead_of_retraining(digits, monkeypatch):
    first = store.train_cached(CFG, digits)
    monkeypatch.setattr("bnprivacy.ensemble.train_model",
                        lambda *a, **k: pytest.fail("a stored result was retrained"))
    again = store.train_cached(CFG, digits)
    assert again["history"].equals(first["history"])
    for name, tensor in first["state_dict"].items():
        assert torch.equal(tensor, again["state_dict"][name])


def test_a_corrupt_file_is_detected_and_redone(digits):
    first = store.train_cached(CFG, digits)
    folder = store.training_folder(CFG)
    (folder / "model.pt").write_bytes(b"torn")
    assert not store.is_complete(folder)
    redone = store.train_cached(CFG, digits)
    assert store.is_complete(folder)
    assert redone["history"].drop(columns=WALL_CLOCK).equals(first["history"].drop(columns=WALL_CLOCK))


def test_a_folder_without_manifest_is_unfinished(digits):
    store.train_cached(CFG, digits)
    folder = store.training_folder(CFG)
    (folder / store.MANIFEST).unlink()
    assert not store.is_complete(folder)


def test_bad_config_fails_before_touching_results(isolated_store):
    results = isolated_store / "results" / "train" / "keep"
    results.mkdir(parents=True)
    (results / "history.csv").write_text("epoch\n1\n")
    with pytest.raises(ValueError):
        store.train_cached(CFG.replace(epochs=0))
    with pytest.raises(ValueError):
        store.train_cached(Config.from_dict({**CFG.to_dict(), "arch": "nope"}))
    assert (results / "history.csv").read_text() == "epoch\n1\n"
    assert sorted(p.name for p in (isolated_store / "results" / "train").iterdir()) == ["keep"]

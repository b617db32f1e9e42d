"""Runs written before the package was reorganised (issue 24) still load, untouched.

``tests/fixtures/run-2bb32f9`` is a results folder written by the code at commit 2bb32f9, when a
shadow run lived in ``bnprivacy.store`` (command: ``RunSpec(CFG, n_models=2)`` with ``chunk_size=2``
through ``store.shadow_run``). A reader's recordings and half-finished runs are folders like it: if
a change to the code moved its cache key, a file name or the manifest format, this test fails
instead of the reader silently retraining hours of shadow models.
"""

import shutil
from pathlib import Path

import pytest
import torch

from bnprivacy.config import Config
from bnprivacy.data import load_dataset
from bnprivacy.runs import chunks, local
from bnprivacy.runs.shadow import shadow_run
from bnprivacy.runs.spec import RunSpec, run_folder

FIXTURE = Path(__file__).parent / "fixtures" / "run-2bb32f9"
CFG = Config(norm="batch", width=4, epochs=1, batch_size=16, train_size=64, device="cpu")
SPEC = RunSpec(CFG, n_models=2)
OLD_KEY = "504e8f04077b6a57"


@pytest.fixture
def old_results(tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(FIXTURE, results)
    monkeypatch.setenv("BNPRIVACY_RESULTS", str(results))
    return results


def test_a_run_keeps_the_cache_key_it_had_before_the_reorganisation():
    assert SPEC.key() == OLD_KEY


def test_an_old_run_loads_without_training_or_recomputing_its_signals(old_results, monkeypatch):
    monkeypatch.setattr(local, "train_chunk", lambda *a, **k: pytest.fail("retrained an old finished run"))
    monkeypatch.setattr(chunks, "collect_logits", lambda *a, **k: pytest.fail("recomputed old signals"))
    run = shadow_run(SPEC, load_dataset(CFG), chunk_size=2, progress=False)
    assert run_folder(SPEC) == old_results / "runs" / OLD_KEY
    assert run.logits_pool.shape == (2, 2, 64, 10)
    assert list(run.history["model"].unique()) == [0, 1]


def test_the_new_code_trains_what_the_old_code_stored(old_results, tmp_path, monkeypatch):
    data = load_dataset(CFG)
    old = shadow_run(SPEC, data, chunk_size=2, progress=False)
    monkeypatch.setenv("BNPRIVACY_RESULTS", str(tmp_path / "fresh"))
    new = shadow_run(SPEC, data, chunk_size=2, progress=False)
    assert torch.equal(old.masks, new.masks)
    assert torch.allclose(old.logits_pool, new.logits_pool, atol=1e-4)
    assert torch.allclose(old.logits_test, new.logits_test, atol=1e-4)

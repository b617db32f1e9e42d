"""Shared fixtures: every test writes results and data into its own temporary folders."""

import os
import shutil
from pathlib import Path

import pytest
import torch

# Two threads like the CI machine; fixed so that CPU results are reproducible run to run.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    """Point results/ and data/ at temporary folders so tests never touch the real ones."""
    monkeypatch.setenv("BNPRIVACY_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("BNPRIVACY_DATA", str(tmp_path / "data"))
    return tmp_path


class ChunkSpy:
    """Stands in for ``local.train_chunk``: records the models of every chunk trained and can
    raise ``KeyboardInterrupt`` at the ``kill_at``-th call (a run killed midway)."""

    def __init__(self, real):
        self.real, self.calls, self.kill_at = real, [], None

    def __call__(self, *args, **kwargs):
        self.calls.append(args[1])  # train_chunk(run, models, data, job)
        if len(self.calls) == self.kill_at:
            raise KeyboardInterrupt("simulated kill")
        return self.real(*args, **kwargs)


@pytest.fixture
def chunk_spy(monkeypatch):
    """A :class:`ChunkSpy` installed in place of the store's chunk training."""
    from bnprivacy.runs import local

    spy = ChunkSpy(local.train_chunk)
    monkeypatch.setattr(local, "train_chunk", spy)
    return spy


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def book_copy(tmp_path):
    """The book's sources in a temporary folder, so builds never touch the repository's _build."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "book", root / "book", ignore=shutil.ignore_patterns("*.ipynb"))
    return root

"""Shared fixtures: every test writes results and data into its own temporary folders."""

import os

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

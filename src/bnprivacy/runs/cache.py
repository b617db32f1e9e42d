"""The single-model cache: one trained model of a Config, stored under the Config's key."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..config import Config
from ..data import load_dataset
from ..ensemble import train_model
from ..training import resolve_device
from .disk import is_complete, load_torch, reset, results_folder, save_json, save_torch, seal, write_atomic


def training_folder(cfg: Config) -> Path:
    """Where one model of ``cfg`` is stored: ``results/train/<key>``."""
    return results_folder("train") / cfg.key()


TRAINING_FILES = ("config.json", "history.csv", "model.pt")


def train_cached(cfg: Config, data=None, *, progress: bool = False, retrain: bool = False) -> dict:
    """Train one model of ``cfg`` unless a finished result is stored; return its record.

    The record holds ``history`` (DataFrame), ``state_dict`` and the ``config``. ``data`` is loaded (on the config's device) when not given. ``retrain=True``
    discards a stored result first.
    """
    folder = training_folder(cfg)
    if retrain:
        reset(folder)
    if is_complete(folder, required=TRAINING_FILES):  # a manifest that omits a file proves nothing of it
        return _load_training(folder)
    reset(folder)
    if data is None:
        data = load_dataset(cfg, resolve_device(cfg))
    result = train_model(cfg, data, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    save_json(folder / "config.json", cfg.to_dict())
    write_atomic(folder / "history.csv", result.history.to_csv(index=False).encode())
    save_torch(folder / "model.pt", {k: v.detach().cpu() for k, v in result.model.state_dict().items()})
    seal(folder, list(TRAINING_FILES))
    return _load_training(folder)


def _load_training(folder: Path) -> dict:
    return {
        "config": Config.from_dict(json.loads((folder / "config.json").read_text())),
        "history": pd.read_csv(folder / "history.csv"),
        "state_dict": load_torch(folder / "model.pt"),
    }

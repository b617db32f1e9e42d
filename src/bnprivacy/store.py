"""Results on disk: atomic writes, checksummed manifests, and cached trainings keyed by Config.

A result folder is complete only when its ``manifest.json`` exists and every file it lists has the
recorded SHA-256; the manifest is written last, so a run killed midway leaves a folder that is
detected as unfinished and redone, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import torch

from .config import Config

RESULTS_DIR_ENV = "BNPRIVACY_RESULTS"
MANIFEST = "manifest.json"


def results_dir() -> Path:
    """Root of the results store: ``$BNPRIVACY_RESULTS`` or ``results/`` under the working folder."""
    return Path(os.environ.get(RESULTS_DIR_ENV, "results")).expanduser()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def save_torch(path: Path, obj) -> None:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def load_torch(path: Path):
    """Load tensors saved by :func:`save_torch` (``weights_only=True``: no arbitrary code)."""
    return torch.load(path, weights_only=True, map_location="cpu")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seal(folder: Path, files: list[str], extra: dict | None = None) -> None:
    """Mark ``folder`` complete: write the manifest of ``files`` with their checksums, last."""
    entries = {name: sha256(folder / name) for name in files}
    save_json(folder / MANIFEST, {"files": entries, **(extra or {})})


def is_complete(folder: Path) -> bool:
    """True when ``folder`` has a manifest and every listed file matches its checksum."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return False
    return all((folder / name).is_file() and sha256(folder / name) == digest
               for name, digest in entries.items())


def reset(folder: Path) -> None:
    """Remove an unfinished or corrupt result folder so it can be redone."""
    if folder.exists():
        shutil.rmtree(folder)


def training_folder(cfg: Config) -> Path:
    return results_dir() / "train" / cfg.key()


def train_cached(cfg: Config, data=None, *, progress: bool = False, retrain: bool = False) -> dict:
    """Train one model of ``cfg`` unless a finished result is stored; return its record.

    The record holds ``history`` (DataFrame), ``reached_target`` (bool), ``state_dict`` and the
    ``config``. ``data`` is loaded (on the config's device) when not given. ``retrain=True``
    discards a stored result first.
    """
    from .data import load_dataset
    from .training import resolve_device, train_model

    folder = training_folder(cfg)
    if retrain:
        reset(folder)
    if is_complete(folder):
        return _load_training(folder)
    reset(folder)
    if data is None:
        data = load_dataset(cfg, resolve_device(cfg))
    result = train_model(cfg, data, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    save_json(folder / "config.json", cfg.to_dict())
    write_atomic(folder / "history.csv", result.history.to_csv(index=False).encode())
    save_torch(folder / "model.pt", {k: v.detach().cpu() for k, v in result.model.state_dict().items()})
    seal(folder, ["config.json", "history.csv", "model.pt"], {"reached_target": result.reached_target})
    return _load_training(folder)


def _load_training(folder: Path) -> dict:
    manifest = json.loads((folder / MANIFEST).read_text())
    return {
        "config": Config.from_dict(json.loads((folder / "config.json").read_text())),
        "history": pd.read_csv(folder / "history.csv"),
        "reached_target": bool(manifest["reached_target"]),
        "state_dict": load_torch(folder / "model.pt"),
    }

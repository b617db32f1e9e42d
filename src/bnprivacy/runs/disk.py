"""Files of the results store: atomic writes, checksummed manifests, the store's root.

A result folder is complete only when its manifest exists and every file it lists has the
recorded SHA-256; the manifest is written last, so a run killed midway leaves a folder that is
detected as unfinished and redone, never silently used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path

import pandas as pd
import torch

RESULTS_DIR_ENV = "BNPRIVACY_RESULTS"


MANIFEST = "manifest.json"


# The store's layout, in one place (results/README.md describes each folder's files).
RESULT_KINDS = {
    "train": "one trained model per Config key (runs.cache)",
    "runs": "one shadow run per spec key (runs.spec)",
    "validation": "the validation accuracy of one learning-rate candidate (protocol)",
    "headlines": "each chapter's headline rows and curves per profile (headlines)",
}


def env_folder(variable: str, default: str) -> Path:
    """The folder the environment variable ``variable`` names, or ``default`` where it is unset. Set
    but empty (``BNPRIVACY_RESULTS=``) counts as unset, with a warning: as a path it would be the
    current folder, and the store would spill into whatever folder the command ran in."""
    value = os.environ.get(variable)
    if value is not None and not value.strip():
        warnings.warn(f"{variable} is set but empty; using the default folder {default}/ (set it to a folder, "
                      f"or unset it: `unset {variable}`)", stacklevel=3)
        value = None
    return Path(value or default).expanduser()


def results_dir() -> Path:
    """Root of the results store: ``$BNPRIVACY_RESULTS`` or ``results/`` under the working folder."""
    return env_folder(RESULTS_DIR_ENV, "results")


def results_folder(kind: str) -> Path:
    """The store's folder for one kind of result (a key of :data:`RESULT_KINDS`)."""
    if kind not in RESULT_KINDS:
        raise ValueError(f"{kind!r} is not a kind of result; the store holds {', '.join(RESULT_KINDS)}")
    return results_dir() / kind


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: all or nothing. A failed
    write (a full disk, an interruption) leaves ``path`` as it was and no temporary file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def save_torch(path: Path, obj) -> None:
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


def seal(folder: Path, files: list[str], extra: dict | None = None, manifest: str = MANIFEST) -> None:
    """Mark ``folder`` complete: write the manifest of ``files`` with their checksums, last."""
    entries = {name: sha256(folder / name) for name in files}
    save_json(folder / manifest, {"files": entries, **(extra or {})})


def is_complete(folder: Path, manifest: str = MANIFEST, required: tuple[str, ...] = ()) -> bool:
    """True when ``folder`` has the manifest, the manifest lists at least one file and every file
    of ``required``, and every listed file matches its checksum."""
    manifest = folder / manifest
    if not manifest.is_file():
        return False
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return False
    if not isinstance(entries, dict) or not entries or not set(required) <= set(entries):
        return False
    return all((folder / name).is_file() and sha256(folder / name) == digest
               for name, digest in entries.items())


def reset(folder: Path) -> None:
    """Remove an unfinished or corrupt result folder so it can be redone."""
    if folder.exists():
        shutil.rmtree(folder)


def read_csv_or_empty(path: Path) -> pd.DataFrame:
    """A recorded table, or an empty one for a run without canaries/probes (or stored before
    that table existed)."""
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, FileNotFoundError):
        return pd.DataFrame()

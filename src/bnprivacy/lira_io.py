"""Shadow runs in the on-disk layout of the LiRA reference code (Carlini et al. 2022,
``tensorflow/privacy/research/mi_lira_2021``), in both directions.

Layout of a folder ``ROOT``::

    ROOT/y_train.npy                        labels of the pool, int64 [P]
    ROOT/experiment-{k}_{N}/keep.npy        model k's inclusion mask, bool [P]
    ROOT/experiment-{k}_{N}/logits/{epoch:010d}.npy   float32 [P, 1, Q, K]: logits of model k
                                            on every pool sample under Q query views

The reference ``score.py`` turns each logits file into ``scores/{epoch:010d}.npy`` and ``plot.py``
reads ``keep.npy`` with those scores; exporting lets anyone run them on our models, importing
lets our attacks score theirs.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from .attacks import AttackInput

EXPERIMENT = re.compile(r"experiment-(\d+)_(\d+)$")


def export_lira(run, root: Path, epoch: int | None = None) -> Path:
    """Write a ShadowRun's masks and pool logits into ``root`` in the reference layout."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    epoch = int(run.history["epoch"].max()) if epoch is None else epoch
    np.save(root / "y_train.npy", run.y_pool.numpy().astype(np.int64))
    n = run.masks.shape[0]
    for k in range(n):
        folder = root / f"experiment-{k}_{n}"
        (folder / "logits").mkdir(parents=True, exist_ok=True)
        np.save(folder / "keep.npy", run.masks[k].numpy())
        logits = run.logits_pool[k].permute(1, 0, 2).unsqueeze(1).numpy().astype(np.float32)
        np.save(folder / "logits" / f"{epoch:010d}.npy", logits)
    return root


def _load_array(path: Path) -> np.ndarray:
    """An .npy file, never unpickled (object arrays are refused)."""
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{path} is not a plain numeric .npy array ({error})") from None


def _keep(path: Path, pool: int) -> np.ndarray:
    """A ``keep.npy`` membership mask: booleans (or 0/1), one per pool sample."""
    keep = _load_array(path)
    if keep.ndim != 1 or len(keep) != pool:
        raise ValueError(f"{path} has shape {keep.shape}; expected one entry per pool sample, [{pool}]")
    if keep.dtype != bool and not (keep.dtype.kind in "iuf" and np.isin(keep, (0, 1)).all()):
        raise ValueError(f"{path} holds {keep.dtype} values other than 0 and 1; keep.npy marks members "
                         "with True (or 1) and the others with False (or 0)")
    return keep.astype(bool)


def import_lira(root: Path) -> AttackInput:
    """Read a folder in the reference layout (the last logits file of every experiment).

    Raises ``ValueError`` naming what is missing or inconsistent.
    """
    root = Path(root)
    labels_file = root / "y_train.npy"
    if not labels_file.is_file():
        raise ValueError(f"{labels_file} is missing; the LiRA layout keeps the pool's labels there")
    raw_labels = _load_array(labels_file)
    if raw_labels.ndim != 1 or raw_labels.dtype.kind not in "iu" or (raw_labels < 0).any():
        raise ValueError(f"{labels_file} holds {raw_labels.dtype} of shape {raw_labels.shape}; expected the pool's "
                         "class indices, a 1-D array of integers >= 0")
    labels = torch.from_numpy(raw_labels.astype(np.int64))
    experiments = sorted((int(m.group(1)), p) for p in root.iterdir()
                         if p.is_dir() and (m := EXPERIMENT.match(p.name)))
    if not experiments:
        raise ValueError(f"no experiment-K_N folders in {root}")
    masks, logits = [], []
    for index, folder in experiments:
        files = sorted((folder / "logits").glob("*.npy"))
        if not (folder / "keep.npy").is_file() or not files:
            raise ValueError(f"{folder} needs keep.npy and at least one logits/*.npy")
        masks.append(torch.from_numpy(_keep(folder / "keep.npy", len(labels))))
        array = _load_array(files[-1])
        if array.ndim != 4 or array.shape[0] != len(labels) or array.shape[1] != 1:
            raise ValueError(f"{files[-1]} has shape {array.shape}; expected [P={len(labels)}, 1, Q, K]")
        if logits and array.shape[2:] != tuple(logits[0].shape[::2]):
            raise ValueError(f"{files[-1]} has {array.shape[2]} queries and {array.shape[3]} classes but "
                             f"{experiments[0][1]} has {logits[0].shape[0]} and {logits[0].shape[2]}; every "
                             "experiment must be scored with the same queries and classes")
        logits.append(torch.from_numpy(array[:, 0]).permute(1, 0, 2).float())
    classes = logits[0].shape[-1]
    if int(labels.max()) >= classes:
        raise ValueError(f"{labels_file} holds label {int(labels.max())} but the logits have {classes} classes "
                         f"(labels 0 ... {classes - 1})")
    return AttackInput(logits=torch.stack(logits), labels=labels, masks=torch.stack(masks))

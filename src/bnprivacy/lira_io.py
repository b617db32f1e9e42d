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


def import_lira(root: Path) -> AttackInput:
    """Read a folder in the reference layout (the last logits file of every experiment).

    Raises ``ValueError`` naming what is missing or inconsistent.
    """
    root = Path(root)
    labels_file = root / "y_train.npy"
    if not labels_file.is_file():
        raise ValueError(f"{labels_file} is missing; the LiRA layout keeps the pool's labels there")
    labels = torch.from_numpy(np.load(labels_file).astype(np.int64))
    experiments = sorted((int(m.group(1)), p) for p in root.iterdir()
                         if p.is_dir() and (m := EXPERIMENT.match(p.name)))
    if not experiments:
        raise ValueError(f"no experiment-K_N folders in {root}")
    masks, logits = [], []
    for index, folder in experiments:
        files = sorted((folder / "logits").glob("*.npy"))
        if not (folder / "keep.npy").is_file() or not files:
            raise ValueError(f"{folder} needs keep.npy and at least one logits/*.npy")
        keep = np.load(folder / "keep.npy")[: len(labels)]
        array = np.load(files[-1])
        if array.ndim != 4 or array.shape[0] != len(labels) or array.shape[1] != 1:
            raise ValueError(f"{files[-1]} has shape {array.shape}; expected [P={len(labels)}, 1, Q, K]")
        masks.append(torch.from_numpy(keep.astype(bool)))
        logits.append(torch.from_numpy(array[:, 0]).permute(1, 0, 2).float())
    return AttackInput(logits=torch.stack(logits), labels=labels, masks=torch.stack(masks))

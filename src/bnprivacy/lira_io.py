"""Shadow runs in the on-disk layout of the LiRA reference code (Carlini et al. 2022,
``tensorflow/privacy/research/mi_lira_2021``), in both directions.

Layout of a folder ``ROOT``::

    ROOT/y_train.npy                        labels of the pool, int64 [P]
    ROOT/experiment-{k}_{N}/keep.npy        model k's inclusion mask, bool [P]
    ROOT/experiment-{k}_{N}/logits/{epoch:010d}.npy   float32 [P, 1, Q, K]: logits of model k
                                            on every pool sample under Q query views
    ROOT/bnprivacy.json                     ours only: {"format": 1, "query_mode": "eval" or "train",
                                            "n_models": N, "epoch": E}

The reference ``train.py`` names a folder ``experiment-{k}_{N}`` with ``--expid k`` and
``experiment-{seed}`` without it; import reads both. The reference ``score.py`` turns each logits
file into ``scores/{epoch:010d}.npy`` and ``plot.py`` reads ``keep.npy`` with those scores; exporting
lets anyone run them on our models, importing lets our attacks score theirs. ``bnprivacy.json``
records how BatchNorm was queried (``eval``: running statistics, ``train``: the query batch's own
statistics), which the logits alone do not tell; the reference scripts ignore it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from .attacks import AttackInput

EXPERIMENT = re.compile(r"experiment-(\d+)_(\d+)$")  # train.py --expid k --num_experiments N
SEEDED = re.compile(r"experiment-(\d+)$")  # train.py without --expid: the training seed
EPOCH_FILE = re.compile(r"(\d+)\.npy")  # logits/{epoch}.npy, zero-padded or not
METADATA = "bnprivacy.json"
FORMAT = 1
QUERY_MODES = ("eval", "train")


@dataclasses.dataclass(frozen=True)
class LiraMetadata:
    """What ``export_lira`` records in ``ROOT/bnprivacy.json`` besides the reference layout."""

    query_mode: str
    n_models: int
    epoch: int
    format: int = FORMAT


# --- export ---------------------------------------------------------------------------------------

def export_lira(run, root: Path, epoch: int | None = None, *, query_mode: str | None = None,
                replace: bool = False) -> Path:
    """Write a ShadowRun's masks and pool logits into ``root`` in the reference layout.

    ``query_mode`` ("eval" or "train", how BatchNorm was queried) defaults to ``run.query_mode``
    and is recorded in ``root/bnprivacy.json``. A ``root`` that already holds the layout
    (``y_train.npy``, ``experiment*`` folders, ``bnprivacy.json``) is refused unless
    ``replace=True``, which first removes exactly those entries and leaves other files alone.
    """
    root = Path(root)
    mode = _export_mode(run, query_mode)
    epoch = int(run.history["epoch"].max()) if epoch is None else epoch
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"epoch={epoch!r}; expected an integer >= 0 (it names the logits file)")
    _clear_destination(root, replace)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "y_train.npy", run.y_pool.numpy().astype(np.int64))
    n = run.masks.shape[0]
    for k in range(n):
        folder = root / f"experiment-{k}_{n}"
        (folder / "logits").mkdir(parents=True)
        np.save(folder / "keep.npy", run.masks[k].numpy())
        logits = run.logits_pool[k].permute(1, 0, 2).unsqueeze(1).numpy().astype(np.float32)
        np.save(folder / "logits" / f"{epoch:010d}.npy", logits)
    # Written last, so a folder whose export was killed half-way carries no claim to be complete.
    _write_metadata(root, LiraMetadata(query_mode=mode, n_models=n, epoch=int(epoch)))
    return root


def _export_mode(run, query_mode: str | None) -> str:
    """The BN query mode to record: the caller's, else the run's own; both must agree."""
    own = getattr(run, "query_mode", None)
    mode = own if query_mode is None else query_mode
    if mode is None:
        raise ValueError("the run does not say how BatchNorm was queried; pass query_mode='eval' "
                         "(running statistics) or query_mode='train' (the query batch's statistics)")
    if mode not in QUERY_MODES:
        raise ValueError(f"query_mode={mode!r}; expected 'eval' or 'train'")
    if own is not None and own != mode:
        raise ValueError(f"query_mode={mode!r} but the run was queried with {own!r}; leave query_mode "
                         "out to record the run's own mode")
    return mode


def _layout_entries(root: Path) -> list[Path]:
    """The entries of ``root`` that belong to the layout (what the reference plot.py would read)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.name in ("y_train.npy", METADATA) or (p.name.startswith("experiment") and p.is_dir()))


def _clear_destination(root: Path, replace: bool) -> None:
    """Refuse a ``root`` that holds the layout, or (``replace``) remove exactly the layout's entries.

    Old experiment folders left next to new ones would be imported with them (6 then 4 models
    would read back as 10), and an old logits file would sit beside a new keep.npy.
    """
    entries = _layout_entries(root)
    if not entries:
        return
    if not replace:
        shown = ", ".join(p.name for p in entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise ValueError(f"{root} already holds a LiRA layout ({shown}); pass replace=True to remove those "
                         "entries first (other files stay), or export into another folder")
    # The metadata goes first: a removal that is interrupted leaves no file claiming a complete export.
    for path in sorted(entries, key=lambda p: p.name != METADATA):
        if path.is_symlink() or not path.is_dir():
            path.unlink()  # a link is removed, never the folder it points to
        else:
            shutil.rmtree(path)


def _write_metadata(root: Path, meta: LiraMetadata) -> None:
    """``root/bnprivacy.json``, through a temporary file and a rename."""
    temporary = root / f".{METADATA}.tmp"
    temporary.write_text(json.dumps(dataclasses.asdict(meta), indent=1, sort_keys=True) + "\n")
    os.replace(temporary, root / METADATA)


# --- metadata -------------------------------------------------------------------------------------

def lira_metadata(root: Path) -> LiraMetadata | None:
    """What ``root/bnprivacy.json`` records (the BN query mode among it), or None for a folder
    without it, such as one written by the reference code, whose query mode is unknown.

    Raises ``ValueError`` naming the file when it is not the JSON object ``export_lira`` writes.
    """
    path = Path(root) / METADATA
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-export the run with replace=True, "
                         f"or delete {path.name} to import the folder without a recorded query mode") from None
    expected = {field.name for field in dataclasses.fields(LiraMetadata)}
    if not isinstance(raw, dict) or set(raw) != expected:
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{path} holds {found}; expected an object with exactly the keys {sorted(expected)}")
    return _checked_metadata(path, raw)


def _checked_metadata(path: Path, raw: dict) -> LiraMetadata:
    """The fields of ``raw`` with their types and ranges checked."""
    for name in ("format", "n_models", "epoch"):
        if isinstance(raw[name], bool) or not isinstance(raw[name], int):
            raise ValueError(f"{path}: {name} is {raw[name]!r}; expected an integer")
    if raw["format"] != FORMAT:
        raise ValueError(f"{path} has format {raw['format']}; this version reads format {FORMAT} only")
    if raw["query_mode"] not in QUERY_MODES:
        raise ValueError(f"{path}: query_mode is {raw['query_mode']!r}; expected 'eval' or 'train'")
    if raw["n_models"] < 1 or raw["epoch"] < 0:
        raise ValueError(f"{path}: n_models {raw['n_models']} and epoch {raw['epoch']}; expected n_models >= 1 "
                         "and epoch >= 0")
    return LiraMetadata(**raw)


# --- import ---------------------------------------------------------------------------------------

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


def _experiments(root: Path) -> list[Path]:
    """The experiment folders of ``root`` ordered by their number (k, or the seed).

    Folders named ``experiment*`` in neither style are skipped with a warning naming each;
    two folders with the same number, ``experiment-k_N`` folders that disagree on N, and
    folders without keep.npy or logits are refused, all of them named.
    """
    numbered, odd, sizes = [], [], {}
    for path in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("experiment")):
        match = EXPERIMENT.match(path.name) or SEEDED.match(path.name)
        if match is None:
            odd.append(path.name)
            continue
        numbered.append((int(match.group(1)), path))
        if match.re is EXPERIMENT:
            sizes.setdefault(int(match.group(2)), []).append(path.name)
    if odd:
        warnings.warn(f"skipped {len(odd)} folder(s) in {root} named neither experiment-K_N nor "
                      f"experiment-SEED: {', '.join(odd)}; rename or move them to import them", stacklevel=3)
    if not numbered:
        raise ValueError(f"no experiment-K_N or experiment-SEED folders in {root}")
    _refuse_clashes(root, numbered, sizes)
    _refuse_incomplete(root, [path for _, path in numbered])
    return [path for _, path in sorted(numbered)]


def _refuse_clashes(root: Path, numbered: list[tuple[int, Path]], sizes: dict[int, list[str]]) -> None:
    """Refuse folders that cannot come from one run: a number used twice, or several values of N."""
    by_number: dict[int, list[str]] = {}
    for number, path in numbered:
        by_number.setdefault(number, []).append(path.name)
    clashes = [names for names in by_number.values() if len(names) > 1]
    if clashes:
        raise ValueError(f"{root} has several folders for the same model: "
                         f"{'; '.join(' and '.join(names) for names in clashes)}; they come from different "
                         "exports or trainings, move one set to another folder")
    if len(sizes) > 1:
        listed = "; ".join(f"N={n}: {', '.join(names)}" for n, names in sorted(sizes.items()))
        raise ValueError(f"{root} mixes experiment-K_N folders of runs with different N ({listed}); "
                         "move each run to its own folder")


def _refuse_incomplete(root: Path, folders: list[Path]) -> None:
    """Name every experiment folder that lacks keep.npy or a logits file named by its epoch."""
    incomplete = [folder.name for folder in folders
                  if not (folder / "keep.npy").is_file() or not _logits_by_epoch(folder)]
    if incomplete:
        raise ValueError(f"{len(incomplete)} experiment folder(s) in {root} lack keep.npy or logits/*.npy: "
                         f"{', '.join(incomplete)}; finish them (the reference inference.py writes the logits) "
                         "or move them out of the folder")


def _check_against_metadata(root: Path, meta: LiraMetadata, folders: list[Path], query_mode: str | None) -> None:
    """Refuse a query mode other than the recorded one, and a folder that no longer matches its export."""
    path = root / METADATA
    if query_mode is not None and query_mode != meta.query_mode:
        raise ValueError(f"asked for query_mode={query_mode!r} but {path} records {meta.query_mode!r}; "
                         "these logits were queried with the other BatchNorm statistics")
    if len(folders) != meta.n_models:
        raise ValueError(f"{path} records {meta.n_models} models but {root} holds {len(folders)} experiment "
                         "folders; re-export the run with replace=True")
    name = f"{meta.epoch:010d}.npy"
    stale = [folder.name for folder in folders if max(_logits_by_epoch(folder)) != meta.epoch]
    if stale:
        raise ValueError(f"{path} records epoch {meta.epoch} but the last logits file of {', '.join(stale)} is "
                         f"not logits/{name}; re-export the run with replace=True")


def _logits_by_epoch(folder: Path) -> dict[int, list[Path]]:
    """The logits files of ``folder`` by the epoch their name gives (``0000000010.npy`` and
    ``10.npy`` both give 10); files not named by an epoch are left out."""
    epochs: dict[int, list[Path]] = {}
    for path in sorted((folder / "logits").glob("*.npy")):
        match = EPOCH_FILE.fullmatch(path.name)
        if match:
            epochs.setdefault(int(match.group(1)), []).append(path)
    return epochs


def _last_logits(root: Path, folders: list[Path]) -> list[Path]:
    """The logits file of the latest epoch of every folder, by the epoch's number, not by string
    order (``10.npy`` comes after ``0000000009.npy``). Two files of one epoch in a folder are
    refused, all named; ``.npy`` files not named by an epoch are skipped with a warning naming each."""
    last, clashes, odd = [], [], []
    for folder in folders:
        epochs = _logits_by_epoch(folder)
        clashes += [" and ".join(f"{folder.name}/logits/{p.name}" for p in paths)
                    for paths in epochs.values() if len(paths) > 1]
        odd += [f"{folder.name}/logits/{p.name}" for p in sorted((folder / "logits").glob("*.npy"))
                if not EPOCH_FILE.fullmatch(p.name)]
        last.append(epochs[max(epochs)][0])
    if clashes:
        raise ValueError(f"{root} has several logits files for the same epoch: {'; '.join(clashes)}; they "
                         "come from different scorings, keep one of each")
    if odd:
        warnings.warn(f"skipped {len(odd)} logits file(s) in {root} not named by an epoch (EPOCH.npy): "
                      f"{', '.join(odd)}; rename or move them to import them", stacklevel=3)
    return last


def _checked_logits(file: Path, pool: int) -> np.ndarray:
    """A logits file's array ``[P, 1, Q, K]`` of finite real numbers."""
    array = _load_array(file)
    if array.ndim != 4 or array.shape[0] != pool or array.shape[1] != 1:
        raise ValueError(f"{file} has shape {array.shape}; expected [P={pool}, 1, Q, K]")
    if array.dtype.kind == "c":
        nonreal = np.argwhere(array.imag != 0)
        example = f", first {array[_at(nonreal)]} at {_position(nonreal)}" if len(nonreal) else ""
        raise ValueError(f"{file} holds complex numbers ({array.dtype}{example}); logits are real numbers "
                         "(float32 as the reference inference.py writes them): re-score that model")
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{file} holds {array.dtype} values; logits are real numbers (float32 as the "
                         "reference inference.py writes them): re-score that model")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range reads as inf, and is refused
        bad = np.argwhere(~np.isfinite(array.astype(np.float32)))
    if len(bad):
        raise ValueError(f"{file} holds {array[_at(bad)]} at {_position(bad)}, not a finite float32 ({len(bad)} "
                         "such value(s) in all); the model diverged or the file is damaged: retrain or re-score "
                         "that model, or move its experiment folder out")
    return array


def _at(positions: np.ndarray) -> tuple[int, ...]:
    """The first of ``np.argwhere``'s positions, as an index."""
    return tuple(int(i) for i in positions[0])


def _position(positions: np.ndarray) -> str:
    return f"[sample, 0, query, class] = {list(_at(positions))}"


def _labels(root: Path) -> torch.Tensor:
    """``y_train.npy``: the pool's class indices."""
    labels_file = root / "y_train.npy"
    if not labels_file.is_file():
        raise ValueError(f"{labels_file} is missing; the LiRA layout keeps the pool's labels there")
    raw_labels = _load_array(labels_file)
    if raw_labels.ndim != 1 or raw_labels.dtype.kind not in "iu" or (raw_labels < 0).any():
        raise ValueError(f"{labels_file} holds {raw_labels.dtype} of shape {raw_labels.shape}; expected the pool's "
                         "class indices, a 1-D array of integers >= 0")
    return torch.from_numpy(raw_labels.astype(np.int64))


def import_lira(root: Path, query_mode: str | None = None) -> AttackInput:
    """Read a folder in the reference layout (the last logits file of every experiment), models
    ordered by the number in their folder's name (``experiment-K_N`` or ``experiment-SEED``).

    With ``query_mode`` ("eval" or "train"), a folder whose ``bnprivacy.json`` records the other
    BN query mode is refused. A folder without ``bnprivacy.json`` (as the reference code writes
    it) is accepted with any ``query_mode``: its mode is unknown, and ``lira_metadata(root)``
    returns None. Folders named ``experiment*`` in neither style are skipped with a warning. The
    last logits file is the one of the highest epoch number (``10.npy`` is after ``0000000009.npy``).
    Raises ``ValueError`` naming what is missing or inconsistent: among it two folders or two logits
    files of one number (``experiment-1`` and ``experiment-01``), and logits that are not finite
    real numbers (the file and the first bad position).
    """
    root = Path(root)
    if query_mode is not None and query_mode not in QUERY_MODES:
        raise ValueError(f"query_mode={query_mode!r}; expected 'eval', 'train' or None (do not check)")
    labels = _labels(root)
    meta = lira_metadata(root)
    folders = _experiments(root)
    files = _last_logits(root, folders)
    if meta is not None:
        _check_against_metadata(root, meta, folders, query_mode)
    masks, logits = [], []
    for folder, file in zip(folders, files):
        masks.append(torch.from_numpy(_keep(folder / "keep.npy", len(labels))))
        array = _checked_logits(file, len(labels))
        if logits and array.shape[2:] != tuple(logits[0].shape[::2]):
            raise ValueError(f"{file} has {array.shape[2]} queries and {array.shape[3]} classes but "
                             f"{folders[0]} has {logits[0].shape[0]} and {logits[0].shape[2]}; every "
                             "experiment must be scored with the same queries and classes")
        logits.append(torch.from_numpy(array[:, 0]).permute(1, 0, 2).float())
    classes = logits[0].shape[-1]
    if int(labels.max()) >= classes:
        raise ValueError(f"{root / 'y_train.npy'} holds label {int(labels.max())} but the logits have {classes} "
                         f"classes (labels 0 ... {classes - 1})")
    return AttackInput(logits=torch.stack(logits), labels=labels, masks=torch.stack(masks))

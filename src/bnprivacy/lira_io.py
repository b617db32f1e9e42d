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
import itertools
import json
import math
import os
import re
import shutil
import stat
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
METADATA_LIMIT = 4096  # bytes; export_lira writes about 90, so a larger file is not ours
LISTED = 10  # names or numbers an error shows before "and N more"


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

    Raises ``ValueError`` naming the file when it is not the JSON object ``export_lira`` writes,
    and when it is not a regular file of at most ``METADATA_LIMIT`` bytes (it is never read then).
    """
    path = Path(root) / METADATA
    if not os.path.lexists(path):
        return None
    raw = _read_json(path)
    expected = {field.name for field in dataclasses.fields(LiraMetadata)}
    if not isinstance(raw, dict) or set(raw) != expected:
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{path} holds {found}; expected an object with exactly the keys {sorted(expected)}")
    return _checked_metadata(path, raw)


def _read_json(path: Path):
    """The JSON value in ``path``, read only when it is a regular file of at most METADATA_LIMIT bytes.

    The bound keeps a huge file out of memory and, with it, the nesting depth low enough that the
    parser's RecursionError (``[[[[...``) is the only deep-nesting failure left to catch.
    """
    with _open_regular(path) as handle:
        data = handle.read(METADATA_LIMIT + 1)
    redo = (f"re-export the run with replace=True, or delete {path.name} to import the folder without a "
            "recorded query mode")
    if len(data) > METADATA_LIMIT:
        raise ValueError(f"{path} is larger than {METADATA_LIMIT} bytes, far more than the few lines export_lira "
                         f"writes, so it is not bnprivacy's metadata; {redo}")
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON (nested too deeply); {redo}") from None
    except ValueError as error:  # also UnicodeDecodeError, and ints beyond Python's digit limit
        raise ValueError(f"{path} is not valid JSON ({error}); {redo}") from None


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

def _open_regular(path: Path):
    """``path`` opened for binary reading, when it is a regular file (or a link to one).

    Reading a FIFO blocks until someone writes to it, and a device may never end, so the type is
    checked before the open; the open itself cannot block (O_NONBLOCK), and the type is checked
    again on what was opened, in case the entry was swapped in between.
    """
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode):
            descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            mode = os.fstat(descriptor).st_mode
            if not stat.S_ISREG(mode):
                os.close(descriptor)
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror}); fix or replace it, or re-export the "
                         "run") from None
    if not stat.S_ISREG(mode):
        raise ValueError(_not_regular(path, mode))
    return os.fdopen(descriptor, "rb")


def _not_regular(path: Path, mode: int) -> str:
    """Why ``path``, of file type ``mode``, is not read."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))
    kind = next((name for test, name in kinds if test(mode)), "not a file")
    return (f"{path} is {kind}, not a regular file; only regular files are read (a pipe or device could "
            "block or never end): put the file itself there, or re-export the run")


def _load_array(path: Path, check) -> np.ndarray:
    """An .npy file, read only after its header passed ``check(shape, dtype)`` (which raises a
    ``ValueError`` naming the file) and promised no more data than the file holds. Never unpickled:
    object dtypes are refused from the header alone."""
    with _open_regular(path) as handle:
        shape, fortran_order, dtype = _npy_header(path, handle)
        _refuse_unplain(path, dtype)
        check(shape, dtype)
        _refuse_wrong_size(path, handle, shape, dtype)
        flat = np.fromfile(handle, dtype=dtype, count=math.prod(shape))
    if flat.size != math.prod(shape):  # the file shrank since its size was checked
        raise ValueError(f"{path} ended early while it was read; re-export or re-score that model")
    array = flat.reshape(shape, order="F" if fortran_order else "C")
    return array.astype(dtype.newbyteorder("="), copy=False)  # torch reads native byte order only


def _npy_header(path: Path, handle) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The shape, Fortran order and dtype an .npy header declares; the data is not read."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(handle)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(handle)
    except (ValueError, TypeError, SyntaxError, OverflowError) as error:
        raise ValueError(f"{path} is not a valid .npy file ({error}); re-export or re-score that model") from None
    raise ValueError(f"{path} is .npy format {version[0]}.{version[1]}; only 1.0 and 2.0, which np.save writes "
                     "for plain numeric arrays, are read: save it again with np.save")


def _refuse_unplain(path: Path, dtype: np.dtype) -> None:
    """Refuse what a plain numeric array is not: Python objects (only unpickling reads them), fields."""
    if dtype.hasobject:
        raise ValueError(f"{path} is not a plain numeric .npy array: it holds Python objects ({dtype}), which "
                         "only unpickling could read, and bnprivacy never unpickles; save it with a numeric dtype")
    if dtype.names is not None or dtype.subdtype is not None:
        raise ValueError(f"{path} is not a plain numeric .npy array: its dtype {dtype} has fields or sub-arrays; "
                         "save a plain array of numbers")


def _refuse_wrong_size(path: Path, handle, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse a header that promises other than the bytes the file holds, before anything is allocated
    (a damaged header can claim terabytes)."""
    held = os.fstat(handle.fileno()).st_size - handle.tell()
    promised = math.prod(shape) * dtype.itemsize
    if min(shape, default=0) < 0 or promised != held:
        raise ValueError(f"{path}'s header promises shape {shape} of {dtype} ({_bytes(promised)}) but the file "
                         f"holds {_bytes(held)} of data; it is damaged or truncated: re-export or re-score that model")


def _bytes(count: int) -> str:
    """``count`` bytes, readably."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count} bytes" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024


def _listed(items: list) -> str:
    """The first LISTED of ``items``, comma-separated, and how many more there are."""
    shown = ", ".join(str(item) for item in items[:LISTED])
    return shown + (f" and {len(items) - LISTED} more" if len(items) > LISTED else "")


def _keep(path: Path, pool: int) -> np.ndarray:
    """A ``keep.npy`` membership mask: booleans (or 0/1), one per pool sample."""
    def check(shape, dtype):
        if len(shape) != 1 or shape[0] != pool:
            raise ValueError(f"{path} has shape {shape}; expected one entry per pool sample, [{pool}]")
        if dtype.kind not in "biuf":
            raise ValueError(f"{path} holds {dtype} values; keep.npy marks members with True (or 1) and the "
                             "others with False (or 0)")
    keep = _load_array(path, check)
    if keep.dtype != bool and not np.isin(keep, (0, 1)).all():
        raise ValueError(f"{path} holds {keep.dtype} values other than 0 and 1; keep.npy marks members "
                         "with True (or 1) and the others with False (or 0)")
    return keep.astype(bool)


def _experiment_entries(root: Path) -> list[tuple[Path, str | None]]:
    """The entries of ``root`` named ``experiment*`` that are folders, with None, or that cannot be
    looked at at all (a link to itself or to nothing), with the reason: ``Path.is_dir`` is False for
    those, which would drop a model without a word. Plain files are left out, as before."""
    entries = []
    for path in sorted(p for p in root.iterdir() if p.name.startswith("experiment")):
        try:
            if stat.S_ISDIR(os.stat(path).st_mode):
                entries.append((path, None))
        except OSError as error:
            entries.append((path, error.strerror or type(error).__name__))
    return entries


def _experiments(root: Path) -> list[Path]:
    """The experiment folders of ``root`` ordered by their number (k, or the seed).

    Folders named ``experiment*`` in neither style are skipped with a warning naming each;
    two folders with the same number, ``experiment-k_N`` folders that disagree on N or do not
    number exactly 0 .. N-1, entries named as experiments that cannot be opened (a symlink loop),
    and folders without keep.npy or logits are refused, all of them named.
    """
    numbered, odd, broken, sizes = [], [], [], {}
    for path, problem in _experiment_entries(root):
        match = EXPERIMENT.match(path.name) or SEEDED.match(path.name)
        if match is None:
            odd.append(path.name)
        elif problem is not None:
            broken.append(f"{path.name} ({problem})")
        else:
            numbered.append((int(match.group(1)), path))
            if match.re is EXPERIMENT:
                sizes.setdefault(int(match.group(2)), []).append(path.name)
    if odd:
        warnings.warn(f"skipped {len(odd)} folder(s) in {root} named neither experiment-K_N nor "
                      f"experiment-SEED: {', '.join(odd)}; rename or move them to import them", stacklevel=3)
    if broken:
        raise ValueError(f"{len(broken)} experiment folder(s) in {root} cannot be opened: {_listed(broken)}; "
                         "fix or remove the link(s), or re-export the run")
    if not numbered:
        raise ValueError(f"no experiment-K_N or experiment-SEED folders in {root}")
    _refuse_clashes(root, numbered, sizes)
    _refuse_gaps(root, sizes)
    _refuse_incomplete(root, [path for _, path in numbered])
    return [path for _, path in sorted(numbered)]


def _refuse_gaps(root: Path, sizes: dict[int, list[str]]) -> None:
    """Refuse ``experiment-K_N`` folders that do not number exactly 0 .. N-1: an export or training
    that stopped part-way leaves some of them, which would import as a smaller run without a word.
    (``experiment-SEED`` folders promise no count, so they are not checked.)"""
    for n, names in sizes.items():
        numbers = {int(EXPERIMENT.match(name).group(1)) for name in names}
        beyond = sorted(name for name in names if int(EXPERIMENT.match(name).group(1)) >= n)
        if beyond:
            raise ValueError(f"{root} has experiment-K_{n} folders numbered past N-1={n - 1}: {_listed(beyond)}; "
                             f"a run of N={n} models numbers them 0 .. {n - 1}: move those to the run they came from")
        # range(n) is lazy and n comes from a folder name: look only as far as the first LISTED gaps
        missing = list(itertools.islice((k for k in range(n) if k not in numbers), LISTED))
        if missing:
            more = f" and {n - len(numbers) - len(missing)} more" if n - len(numbers) > len(missing) else ""
            raise ValueError(f"{root} holds {len(numbers)} of the N={n} experiment-K_{n} folders and lacks K = "
                             f"{', '.join(map(str, missing))}{more}; the export or training stopped part-way: "
                             "re-export the run (export_lira with replace=True), or copy the missing folders in")


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
    """Name every experiment folder that lacks keep.npy or a logits file named by its epoch (a
    keep.npy that is there but is no regular file is left for the loader to name)."""
    incomplete = [folder.name for folder in folders
                  if not os.path.lexists(folder / "keep.npy") or not _logits_by_epoch(folder)]
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


def _checked_logits(file: Path, pool: int, like: tuple[Path, int, int] | None = None) -> np.ndarray:
    """A logits file's array ``[P, 1, Q, K]`` of finite real numbers; with ``like`` (the first
    experiment's folder, Q and K), Q and K must be the same as there."""
    def check(shape, dtype):
        if len(shape) != 4 or shape[0] != pool or shape[1] != 1 or 0 in shape[2:]:
            raise ValueError(f"{file} has shape {shape}; expected [P={pool}, 1, Q, K] with Q, K >= 1")
        if like is not None and shape[2:] != like[1:]:
            raise ValueError(f"{file} has {shape[2]} queries and {shape[3]} classes but {like[0]} has {like[1]} "
                             f"and {like[2]}; every experiment must be scored with the same queries and classes")
        if dtype.kind not in "iufc":  # complex is read, to show its first non-real value
            raise ValueError(f"{file} holds {dtype} values; logits are real numbers (float32 as the "
                             "reference inference.py writes them): re-score that model")
    array = _load_array(file, check)
    if array.dtype.kind == "c":
        nonreal = np.argwhere(array.imag != 0)
        example = f", first {array[_at(nonreal)]} at {_position(nonreal)}" if len(nonreal) else ""
        raise ValueError(f"{file} holds complex numbers ({array.dtype}{example}); logits are real numbers "
                         "(float32 as the reference inference.py writes them): re-score that model")
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


def _labels(root: Path) -> np.ndarray:
    """``y_train.npy``: the pool's class indices, >= 0, in the file's own integer dtype (a cast
    first would turn uint64 2**64-1 into -1); ``_labels_within`` bounds them once K is known."""
    labels_file = root / "y_train.npy"
    if not os.path.lexists(labels_file):
        raise ValueError(f"{labels_file} is missing; the LiRA layout keeps the pool's labels there")

    def check(shape, dtype):
        if len(shape) != 1 or dtype.kind not in "iu":
            raise ValueError(f"{labels_file} holds {dtype} of shape {shape}; expected the pool's class indices, "
                             "a 1-D array of integers >= 0")
        if shape[0] == 0:
            raise ValueError(f"{labels_file} holds no labels, so the pool is empty; export a run with at least "
                             "one pool sample, or import the folder that holds its labels")
    labels = _load_array(labels_file, check)
    if labels.min() < 0:
        raise ValueError(f"{labels_file} holds label {labels.min()}; class indices are >= 0: the file is "
                         "damaged or not the pool's labels, re-export the run")
    return labels


def _labels_within(labels_file: Path, labels: np.ndarray, classes: int) -> torch.Tensor:
    """The labels as int64, once every one is below the logits' number of classes (compared in the
    labels' own dtype, so nothing wraps before the check)."""
    if labels.max() >= classes:
        raise ValueError(f"{labels_file} holds label {labels.max()} but the logits have {classes} classes "
                         f"(labels 0 ... {classes - 1}); the labels and logits come from different runs: "
                         "re-export the run")
    return torch.from_numpy(labels.astype(np.int64))


def import_lira(root: Path, query_mode: str | None = None) -> AttackInput:
    """Read a folder in the reference layout (the last logits file of every experiment), models
    ordered by the number in their folder's name (``experiment-K_N`` or ``experiment-SEED``).

    With ``query_mode`` ("eval" or "train"), a folder whose ``bnprivacy.json`` records the other
    BN query mode is refused. A folder without ``bnprivacy.json`` (as the reference code writes
    it) is accepted with any ``query_mode``: its mode is unknown, and ``lira_metadata(root)``
    returns None. Folders named ``experiment*`` in neither style are skipped with a warning. The
    last logits file is the one of the highest epoch number (``10.npy`` is after ``0000000009.npy``).
    Raises ``ValueError`` naming what is missing or inconsistent: among it two folders or two logits
    files of one number (``experiment-1`` and ``experiment-01``), ``experiment-K_N`` folders that
    do not number exactly 0 .. N-1 (a partial export), logits that are not finite real numbers (the
    file and the first bad position), labels outside 0 .. K-1, an empty pool, and any file that is
    not a regular file or whose .npy header does not match the shape expected or the file's size
    (checked before any array is allocated; nothing is ever unpickled).
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
    masks, logits, like = [], [], None
    for folder, file in zip(folders, files):
        masks.append(torch.from_numpy(_keep(folder / "keep.npy", len(labels))))
        array = _checked_logits(file, len(labels), like)
        like = like or (folders[0], *array.shape[2:])
        logits.append(torch.from_numpy(array[:, 0]).permute(1, 0, 2).float())
    labels = _labels_within(root / "y_train.npy", labels, classes=like[2])
    return AttackInput(logits=torch.stack(logits), labels=labels, masks=torch.stack(masks))

"""A shadow run's chunks: the grid of models trained together, planning and opening a run,
training and sealing a chunk, its signals, and the claim-and-poll loop every executor runs.

A run folder holds ``spec.json``, ``masks.pt``, ``chunking.json``, ``pool.json`` and one folder
``models-FIRST-LAST`` per chunk of consecutive models, complete when its manifest is (``disk``).
The grid splits models ``0 .. n-1`` into chunks of ``chunk_size``; a chunk of the grid that is
partly done is trained as its missing consecutive ranges (:func:`contiguous_parts`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from ..checks import check_whole
from ..ensemble import check_masks, fixed_test_subset
from ..signals import collect_logits
from .disk import is_complete, load_torch, read_csv_or_empty, reset, save_json, save_torch, seal, write_atomic
from .locks import say_who_holds
from .spec import ShadowSpec, run_folder


# Test samples a run's signals cover, for RMIA's population. On CIFAR-10, querying all 10,000 test
# images took three quarters of the signals' time (BENCHMARKS.md); RMIA's population needs a few
# thousand (its paper: AUC flat from about 1,000 z samples), and test accuracy is measured on the
# whole split by the training's last epoch.
POPULATION_SAMPLES = 2500


@dataclasses.dataclass(eq=False)
class RunChunks:
    """One run's share of the work: its spec, folder, masks and chunk size."""

    spec: ShadowSpec
    folder: Path
    masks: torch.Tensor
    chunk_size: int

    def missing(self) -> list[list[int]]:
        """The missing models, as consecutive ranges within the chunks of the grid."""
        return [part for models in missing_chunks(self.folder, self.spec.n_models, self.chunk_size)
                for part in contiguous_parts(models)]

    def chunk(self, models: list[int]) -> Path:
        """The folder of the chunk that holds the consecutive models ``models``."""
        return self.folder / chunk_name(models)


CHUNK_FILES = ("states.pt", "history.csv")


def check_chunk_size(chunk_size: int) -> None:
    """A chunk holds a whole number >= 1 of models."""
    check_whole("chunk_size", chunk_size)


def plan_run(spec: ShadowSpec, data) -> tuple[Path, torch.Tensor]:
    """The run's folder and its checked masks; nothing is written yet."""
    masks = spec.masks(len(data.y_train))
    check_masks(masks, len(data.y_train), spec.config.batch_size)
    return run_folder(spec), masks


def open_run(spec: ShadowSpec, folder: Path, masks: torch.Tensor, chunk_size: int, pool_key: str | None) -> None:
    """Write the run's description (spec, masks, chunk size, the pool it trains on) before any
    chunk trains; refuse data other than the pool its chunks were trained on."""
    _pin_pool(folder, pool_key)
    if missing_chunks(folder, spec.n_models, chunk_size):
        _pin_chunk_size(folder, chunk_size)
    _write_masks(spec, folder, masks)


def _pin_pool(folder: Path, pool_key: str | None) -> None:
    """The run's key covers its recipe, not the data it is handed: a family trains every seed on the
    one pool its base config draws, so a run of seed 1 holds models of the seed-0 pool. Record the
    pool's key (``Config.data_key``) and refuse another, rather than score the models on samples
    they were never assigned."""
    if pool_key is None:  # data built by hand, not by load_dataset: nothing to compare
        return
    stored = _pinned(folder / "pool.json", "pool_key")
    if stored is None:
        save_json(folder / "pool.json", {"pool_key": pool_key})
    elif stored != pool_key:
        raise ValueError(
            f"the run in {folder} was trained on another pool (data key {stored}; this data's is {pool_key}). "
            "A family draws one pool with its base config (seed included) for all of its runs: pass the data "
            "of that config (load_dataset(family_base_config)), or delete the folder to train this pool afresh")


def _pinned(path: Path, field: str):
    """The ``field`` of a small JSON file a run pinned, or None where it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())[field]
    except (ValueError, KeyError, TypeError):
        return None


def is_run_complete(folder: Path, n_models: int, chunk_size: int) -> bool:
    """Whether every model of the run in ``folder`` is in a sealed chunk."""
    return not missing_chunks(folder, n_models, chunk_size)


def _pin_chunk_size(folder: Path, chunk_size: int) -> None:
    """The chunk size is part of a run's identity while it trains: shards with different sizes
    would each wait for models that the other's grid assigns to nobody."""
    stored = _pinned(folder / "chunking.json", "chunk_size")
    if stored is None:
        save_json(folder / "chunking.json", {"chunk_size": chunk_size})
    elif stored != chunk_size:
        raise ValueError(f"the run in {folder} trains in chunks of {stored} models; pass --chunk-size "
                         f"{stored} (chunk_size={stored}) to every process of this run, not {chunk_size}")


def _write_masks(spec: ShadowSpec, folder: Path, masks: torch.Tensor) -> None:
    path = folder / "masks.pt"
    if not (folder / "spec.json").is_file():
        save_json(folder / "spec.json", spec.to_dict())
    if path.is_file():
        try:
            if torch.equal(load_torch(path), masks):
                return
        except Exception:
            pass
    save_torch(path, masks)


# A chunk folder's name, exactly as :func:`chunk_name` writes it. Anything else in a run folder
# (a hand-made copy such as ``models-00000-00001.bak`` or ``... (copy)``) is not a chunk.
CHUNK_NAME = re.compile(r"models-(\d{5,})-(\d{5,})")


def chunk_folders(folder: Path) -> list[Path]:
    """The chunk folders of the run in ``folder``: folders named exactly ``models-FIRST-LAST``
    (FIRST <= LAST). Any other ``models-*`` entry (lock files aside) is ignored, with a warning naming it."""
    chunks = []
    for path in sorted(folder.glob("models-*")):
        if path.is_dir() and _parsed_range(path.name) is not None:
            chunks.append(path)
        elif not path.name.endswith(".lock") and not path.name.startswith("."):
            _warn_stray(path)
    return chunks


def _parsed_range(name: str) -> tuple[int, int] | None:
    match = CHUNK_NAME.fullmatch(name)
    if match is None or int(match.group(1)) > int(match.group(2)):
        return None
    return int(match.group(1)), int(match.group(2))


def _warn_stray(path: Path) -> None:
    # Python shows a warning once per message, and the message names the path: once per stray entry.
    warnings.warn(f"{path} is not a chunk of this run (a chunk folder is named exactly models-FIRST-LAST, "
                  "e.g. models-00000-00015), so it is ignored; move it out of the run folder to silence this",
                  stacklevel=1)


def chunk_range(chunk: Path) -> tuple[int, int]:
    """The first and last model of the chunk folder ``chunk``; ValueError naming it when its name
    is not a chunk's."""
    parsed = _parsed_range(Path(chunk).name)
    if parsed is None:
        raise ValueError(f"{chunk} is not a chunk folder (named exactly models-FIRST-LAST, FIRST <= LAST); "
                         "move it out of the run folder")
    return parsed


def missing_chunks(folder: Path, n_models: int, chunk_size: int) -> list[list[int]]:
    """Models without a complete chunk, grouped into chunks of the run's grid."""
    done = set()
    for chunk in chunk_folders(folder):
        if is_complete(chunk, required=CHUNK_FILES):
            first, last = chunk_range(chunk)
            done.update(range(first, last + 1))
    chunks = []
    for start in range(0, n_models, chunk_size):
        models = [m for m in range(start, min(start + chunk_size, n_models)) if m not in done]
        if models:
            chunks.append(models)
    return chunks


def chunk_name(models: list[int]) -> str:
    """The folder name of the chunk that holds the consecutive models ``models``."""
    return f"models-{models[0]:05d}-{models[-1]:05d}"


def train_and_seal(spec: ShadowSpec, data, masks, models: list[int], chunk: Path, strategy: str,
                   progress: bool) -> None:
    """Train the models ``models`` and write them into ``chunk`` with their tables, sealed last."""
    reset(chunk)
    result = spec.train(data, masks, models, strategy=strategy, progress=progress)
    save_torch(chunk / "states.pt", {str(m): s for m, s in zip(models, result.states)})
    write_atomic(chunk / "history.csv", result.history.to_csv(index=False).encode())
    tables = {"canaries": result.canary_history, "probes": result.probe_history, **result.tables}
    for name, table in tables.items():
        write_atomic(chunk / f"{name}.csv", table.to_csv(index=False).encode())
    seal(chunk, ["states.pt", "history.csv", *(f"{name}.csv" for name in tables)])


def population_index(test_size: int) -> torch.Tensor:
    """The test samples a run's signals cover (RMIA's population): the whole test split up to
    POPULATION_SAMPLES, else a fixed random POPULATION_SAMPLES of it, the same for every run."""
    return fixed_test_subset(test_size, POPULATION_SAMPLES)


def signals_name(query_mode: str, queries: int, test_size: int) -> str:
    """The chunk file of the signals: it names the population's size where that is a subset, so a
    different POPULATION_SAMPLES is computed afresh rather than read."""
    population = len(population_index(test_size))
    subset = f"-z{population}" if population < test_size else ""
    return f"signals-{query_mode}-q{queries}{subset}"


def chunk_signals(spec: ShadowSpec, chunk: Path, data, queries: int, query_mode: str) -> dict:
    """The logits of ``chunk``'s models on every pool sample, the population's test samples
    (:func:`population_index`) and every reference sample, computed once and sealed in the chunk."""
    name = signals_name(query_mode, queries, len(data.y_test))
    if is_complete(chunk, f"{name}.json"):
        return load_torch(chunk / f"{name}.pt")
    states = load_torch(chunk / "states.pt")
    ordered = [states[k] for k in sorted(states, key=int)]
    population = population_index(len(data.y_test)).to(data.x_test.device)
    sets = {"pool": data.x_train, "test": data.x_test[population]}
    if data.x_ref is not None:
        sets["ref"] = data.x_ref
    signals = {name: collect_logits(spec.config, data, ordered, x, queries=queries, mode=query_mode)
               for name, x in sets.items()}
    save_torch(chunk / f"{name}.pt", signals)
    seal(chunk, [f"{name}.pt"], manifest=f"{name}.json")
    return signals


def chunk_table(run, name: str) -> pd.DataFrame:
    """A table every chunk of a finished run recorded (e.g. ``"privacy"`` of a DP run), concatenated
    over the run's chunks in model order."""
    tables = [read_csv_or_empty(chunk / f"{name}.csv") for chunk in sealed_chunks(run.folder)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def sealed_chunks(folder: Path) -> list[Path]:
    """The complete chunks that make up a run, in model order, without overlaps."""
    chunks = sorted((c for c in chunk_folders(folder) if is_complete(c, required=CHUNK_FILES)), key=chunk_range)
    kept, covered = [], -1
    for chunk in chunks:
        first, last = chunk_range(chunk)
        if first <= covered:
            continue  # an overlapping chunk left by an earlier grid: the first one wins
        kept.append(chunk)
        covered = last
    return kept


# Seconds between looks at a chunk that another process is training.
CHUNK_POLL_SECONDS = 2.0



def contiguous_parts(models: list[int]) -> list[list[int]]:
    """``models`` (ascending) split into runs of consecutive models: a chunk folder names one range."""
    parts, start = [], 0
    for i in range(1, len(models) + 1):
        if i == len(models) or models[i] != models[i - 1] + 1:
            parts.append(models[start:i])
            start = i
    return parts


def train_seal_and_signal(spec: ShadowSpec, data, masks, models: list[int], chunk: Path, *, strategy: str,
                          queries: int, query_mode: str, progress: bool) -> None:
    """Train the chunk ``models`` into ``chunk`` and compute its signals: what every executor does
    with a chunk it holds."""
    train_and_seal(spec, data, masks, models, chunk, strategy, progress)
    chunk_signals(spec, chunk, data, queries, query_mode)


def poll_until_sealed(runs: list[RunChunks], train_missing, *, select=None) -> None:
    """The loop every executor runs: ``train_missing([(run, models), ...])`` trains the missing
    chunks it can claim and returns those another process holds; while any is held, say once who
    holds it (:func:`locks.say_who_holds`), wait ``CHUNK_POLL_SECONDS``, and look again, until every
    chunk (that ``select(run, models)`` keeps) is sealed, by this process or another."""
    reported: set = set()
    while True:
        missing = [(run, models) for run in runs for models in run.missing()
                   if select is None or select(run, models)]
        if not missing:
            return
        held = train_missing(missing)
        if held:
            say_who_holds([run.chunk(models) for run, models in held], reported)
            time.sleep(CHUNK_POLL_SECONDS)

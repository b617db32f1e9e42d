"""Results on disk: atomic writes, checksummed manifests, and cached trainings keyed by Config.

A result folder is complete only when its ``manifest.json`` exists and every file it lists has the
recorded SHA-256; the manifest is written last, so a run killed midway leaves a folder that is
detected as unfinished and redone, never silently used.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
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


def training_folder(cfg: Config) -> Path:
    return results_dir() / "train" / cfg.key()


TRAINING_FILES = ("config.json", "history.csv", "model.pt")


def train_cached(cfg: Config, data=None, *, progress: bool = False, retrain: bool = False) -> dict:
    """Train one model of ``cfg`` unless a finished result is stored; return its record.

    The record holds ``history`` (DataFrame), ``state_dict`` and the ``config``. ``data`` is loaded (on the config's device) when not given. ``retrain=True``
    discards a stored result first.
    """
    from .data import load_dataset
    from .ensemble import train_model
    from .training import resolve_device

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


# --- shadow runs ----------------------------------------------------------------------------------

MASK_KINDS = ("balanced", "fraction")


def spec_key(described: dict, config: Config) -> str:
    """Cache key of a run described by ``described`` (its Config replaced by the Config's key)."""
    blob = json.dumps({**described, "config": config.key()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A shadow run: ``n_models`` models of ``config``, each on its inclusion mask of the pool.

    ``mask="balanced"`` puts every pool sample IN for exactly half of the models (LiRA; needs an
    even ``n_models``); ``mask="fraction"`` gives each model a random ``fraction`` of the pool
    (Feldman & Zhang). The pool is the training split of ``config.dataset``.
    """

    config: Config
    n_models: int
    mask: str = "balanced"
    fraction: float = 0.5
    mask_seed: int = 0
    probe_every: int = 0
    probe_typical: int = 20
    probe_models: int = 2

    def __post_init__(self):
        if isinstance(self.n_models, bool) or not isinstance(self.n_models, int) or self.n_models < 1:
            raise ValueError(f"n_models={self.n_models!r} is not allowed; allowed values: an integer >= 1")
        if self.mask not in MASK_KINDS:
            raise ValueError(f"mask={self.mask!r} is not allowed; allowed values: {', '.join(MASK_KINDS)}")
        if self.mask == "balanced" and self.n_models % 2:
            raise ValueError(f"mask='balanced' needs an even n_models, got {self.n_models}")
        if not 0 < self.fraction < 1:
            raise ValueError(f"fraction={self.fraction!r} is not allowed; allowed values: a number in (0, 1)")
        if self.probe_every < 0:
            raise ValueError(f"probe_every={self.probe_every!r} is not allowed; allowed values: 0 (off) "
                             "or a number of steps >= 1")
        self.probe()

    def to_dict(self) -> dict:
        described = {"config": self.config.to_dict(), "n_models": self.n_models, "mask": self.mask,
                     "fraction": self.fraction if self.mask == "fraction" else None,
                     "mask_seed": self.mask_seed}
        if self.probe_every:  # runs without probes keep the keys they had before probes existed
            described.update(probe_every=self.probe_every, probe_typical=self.probe_typical,
                             probe_models=self.probe_models)
        return described

    def probe(self):
        """The gradient probes of this run (``ensemble.ProbeSpec``), or None."""
        from .ensemble import ProbeSpec

        if not self.probe_every:
            return None
        return ProbeSpec(self.probe_every, self.probe_typical, self.probe_models, self.mask_seed)

    def key(self) -> str:
        return spec_key(self.to_dict(), self.config)

    def train(self, data, masks, models: list[int], *, strategy: str = "batched", progress: bool = False):
        """Train the models ``models`` of this run (an ``ensemble.EnsembleResult``)."""
        from .ensemble import train_ensemble

        return train_ensemble(self.config, data, masks, models, strategy=strategy, progress=progress,
                              probe=self.probe())

    def masks(self, pool_size: int):
        from .ensemble import balanced_masks, fraction_masks

        if self.mask == "balanced":
            return balanced_masks(self.n_models, pool_size, self.mask_seed)
        return fraction_masks(self.n_models, pool_size, self.fraction, self.mask_seed)


@dataclasses.dataclass
class ShadowRun:
    """A finished shadow run: masks, histories and the signals of every model on every sample.

    ``logits_pool [N, Q, P, K]`` and ``logits_test [N, Q, T, K]`` hold the logits of model n under
    query view q (0 identity, 1 mirror, ...) on pool sample p or test sample t. With canaries,
    ``kinds[p]`` flags pool sample p, ``logits_ref [N, Q, R, K]`` covers the never-trained reference
    candidates, and ``canary_history`` holds every model's prediction on every canary per epoch.
    With gradient probes (``RunSpec.probe_every``), ``probe_history`` holds the probed samples'
    gradient norms (``own``, ``loo``) per model and step.
    """

    spec: RunSpec
    folder: Path
    masks: torch.Tensor
    history: pd.DataFrame
    logits_pool: torch.Tensor
    logits_test: torch.Tensor
    y_pool: torch.Tensor
    y_test: torch.Tensor
    query_mode: str
    queries: int
    kinds: list[str] = dataclasses.field(default_factory=list)
    canary_history: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    probe_history: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    logits_ref: torch.Tensor | None = None
    y_ref: torch.Tensor | None = None
    ref_kinds: list[str] = dataclasses.field(default_factory=list)

    def final_accuracy(self) -> pd.DataFrame:
        """One row per model: epochs trained, final train and test accuracy."""
        last = self.history.sort_values("epoch").groupby("model").tail(1).set_index("model").sort_index()
        return pd.DataFrame({"epochs": last["epoch"], "train_acc": last["train_acc"],
                             "test_acc": last["test_acc"]})

    def state_dict(self, model: int) -> dict[str, torch.Tensor]:
        """The trained weights and buffers of model ``model``."""
        for folder in _chunk_folders(self.folder):
            first, last = chunk_range(folder)
            if first <= model <= last:
                return load_torch(folder / "states.pt")[str(model)]
        raise ValueError(f"model {model} is outside the run's {self.spec.n_models} models")


def parse_shard(shard: str) -> tuple[int, int]:
    """``"i/k"`` -> ``(i, k)`` with ``0 <= i < k``."""
    try:
        index, count = (int(part) for part in str(shard).split("/"))
    except ValueError:
        index = count = -1
    if not 0 <= index < count:
        raise ValueError(f"shard={shard!r} is not allowed; allowed values: 'i/k' with 0 <= i < k, "
                         "e.g. '0/4' for the first of four shards")
    return index, count


def run_folder(spec: RunSpec) -> Path:
    return results_dir() / "runs" / spec.key()


def shadow_run(spec: RunSpec, data=None, *, chunk_size: int = 16, shard: str = "0/1",
               queries: int = 2, query_mode: str = "eval", strategy: str = "batched",
               progress: bool = True, executor: str = "local", address: str | None = None,
               cpus_per_task: int | None = None, max_retries: int = 2) -> ShadowRun | None:
    """Train (or resume, or load) the shadow run ``spec`` and return it with its signals.

    Models are trained ``chunk_size`` at a time as one batched computation; each finished chunk
    is written atomically with a checksummed manifest, so a killed run resumes from the chunks it
    finished. ``shard="i/k"`` trains only the chunks ``c`` with ``c % k == i`` (run the k shards in
    separate processes or machines on the same ``results/`` folder, or copy their chunk folders
    together); it returns ``None`` while other shards' models are missing. Signals (logits under
    ``queries`` views, BN ``query_mode``) are computed once per chunk and cached.

    ``executor="ray"`` trains the missing chunks as tasks on a Ray cluster instead (see
    :mod:`bnprivacy.executors`): the cluster at ``address`` (``auto``, ``HOST:PORT``,
    ``ray://HOST:PORT``), the one this process already joined, or a new local instance. Each task
    takes one GPU when the cluster has any, else ``cpus_per_task`` CPUs and as many torch threads
    (by default this process's thread count: on a CPU, results are bit-identical to a local run
    only with the same thread count, since the thread count changes float summation order);
    a failing task is retried ``max_retries`` times. Ray schedules the whole run, so ``shard`` must
    stay ``"0/1"``.
    """
    from . import executors
    from .data import load_dataset
    from .training import resolve_device

    shard_index, shard_count = parse_shard(shard)
    executors.check_executor(executor, shard, address, cpus_per_task, max_retries)
    check_chunk_size(chunk_size)
    if data is None:
        data = load_dataset(spec.config, resolve_device(spec.config))
    if executor == "ray":
        (run,) = executors.train_runs_on_ray([spec], data, chunk_size, address=address, strategy=strategy,
                                             queries=queries, query_mode=query_mode, cpus_per_task=cpus_per_task,
                                             max_retries=max_retries, progress=progress)
        folder, masks = run.folder, run.masks
    else:
        folder, masks = plan_run(spec, data)
        open_run(spec, folder, masks, chunk_size)
        _train_my_chunks(spec, data, masks, folder, chunk_size, shard_index, shard_count, strategy, progress)
    if not is_run_complete(folder, spec.n_models, chunk_size):
        return None
    return _load_run(spec, folder, data, masks, queries, query_mode)


def check_chunk_size(chunk_size: int) -> None:
    """A chunk holds a whole number >= 1 of models."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} is not allowed; allowed values: an integer >= 1")


def plan_run(spec: RunSpec, data) -> tuple[Path, torch.Tensor]:
    """The run's folder and its checked masks; nothing is written yet."""
    from .ensemble import check_masks

    masks = spec.masks(len(data.y_train))
    check_masks(masks, len(data.y_train), spec.config.batch_size)
    return run_folder(spec), masks


def open_run(spec: RunSpec, folder: Path, masks: torch.Tensor, chunk_size: int) -> None:
    """Write the run's description (spec, masks, chunk size) before any chunk trains."""
    if missing_chunks(folder, spec.n_models, chunk_size):
        _check_chunk_size(folder, chunk_size)
    _run_masks(spec, folder, masks)


def is_run_complete(folder: Path, n_models: int, chunk_size: int) -> bool:
    """Whether every model of the run in ``folder`` is in a sealed chunk."""
    return not missing_chunks(folder, n_models, chunk_size)


# Seconds between looks at a chunk that another process is training.
CHUNK_POLL_SECONDS = 2.0


def _train_my_chunks(spec: RunSpec, data, masks, folder: Path, chunk_size: int, shard_index: int,
                     shard_count: int, strategy: str, progress: bool) -> None:
    """Train this shard's missing chunks. A chunk that another process holds (its lock) is left to
    it: this process trains the others, then waits until that chunk is sealed, or takes it over
    when the holder died; while it waits it says once who holds the chunk (:func:`say_who_holds`)."""
    from tqdm.auto import tqdm

    first_pass = True
    reported: set = set()
    while True:
        todo = [models for models in missing_chunks(folder, spec.n_models, chunk_size)
                if (models[0] // chunk_size) % shard_count == shard_index]
        if not todo:
            return
        held_elsewhere = 0
        for models in tqdm(todo, desc=f"chunks ({spec.config.arch}/{spec.config.norm}, {spec.n_models} models)",
                           unit="chunk", disable=not progress or not first_pass or len(todo) < 2):
            held_elsewhere += not _train_chunk(spec, data, masks, models, folder, strategy, progress)
        first_pass = False
        if held_elsewhere:
            say_who_holds([folder / chunk_name(part) for models in todo for part in _chunk_parts(models)],
                          reported)
            time.sleep(CHUNK_POLL_SECONDS)


def say_who_holds(chunks: list[Path], reported: set) -> None:
    """Print, once per chunk and holder (``reported`` remembers them), which process holds the lock
    of each of ``chunks`` and which file to delete if that process is gone: a hung process, or one
    on another machine (whose liveness cannot be checked from here), would otherwise keep this run
    waiting without a word."""
    for chunk in chunks:
        lock = chunk_lock(chunk)
        try:
            holder = _read_lock(lock)
        except FileNotFoundError:
            continue  # freed meanwhile
        if holder is None or (lock, holder["pid"], holder["host"]) in reported:
            continue  # a malformed lock is taken over when old enough, with a warning of its own
        reported.add((lock, holder["pid"], holder["host"]))
        print(f"waiting for {chunk.name} of {chunk.parent}: process {holder['pid']} on {holder['host']} "
              f"holds its lock{_since(holder)}. If that process is gone, delete {lock} and this run trains "
              "the chunk (a lock from another machine is never taken over automatically)",
              file=sys.stderr, flush=True)


def _since(holder: dict) -> str:
    created = holder.get("created")
    if isinstance(created, bool) or not isinstance(created, (int, float)):
        return ""  # written before locks recorded their time
    try:
        return time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(created))
    except (OverflowError, OSError, ValueError):
        return ""  # not a time this machine can show


def _check_chunk_size(folder: Path, chunk_size: int) -> None:
    """The chunk size is part of a run's identity while it trains: shards with different sizes
    would each wait for models that the other's grid assigns to nobody."""
    path = folder / "chunking.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text())["chunk_size"]
        except (ValueError, KeyError, TypeError):
            stored = None
        if stored is not None and stored != chunk_size:
            raise ValueError(f"the run in {folder} trains in chunks of {stored} models; pass --chunk-size "
                             f"{stored} (chunk_size={stored}) to every process of this run, not {chunk_size}")
        if stored is not None:
            return
    save_json(path, {"chunk_size": chunk_size})


def _run_masks(spec: RunSpec, folder: Path, masks: torch.Tensor) -> None:
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


def _chunk_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("models-*") if p.is_dir())


def chunk_range(chunk: Path) -> tuple[int, int]:
    """The first and last model of the chunk folder ``chunk``."""
    first, last = chunk.name.split("-")[1:3]
    return int(first), int(last)


def missing_chunks(folder: Path, n_models: int, chunk_size: int) -> list[list[int]]:
    """Models without a complete chunk, grouped into chunks of the run's grid."""
    done = set()
    for chunk in _chunk_folders(folder):
        if is_complete(chunk, required=CHUNK_FILES):
            first, last = chunk_range(chunk)
            done.update(range(first, last + 1))
    chunks = []
    for start in range(0, n_models, chunk_size):
        models = [m for m in range(start, min(start + chunk_size, n_models)) if m not in done]
        if models:
            chunks.append(models)
    return chunks


CHUNK_FILES = ("states.pt", "history.csv")


def _train_chunk(spec: RunSpec, data, masks, models: list[int], folder: Path, strategy: str,
                 progress: bool) -> bool:
    """Train and seal one chunk; False when another live process holds it."""
    chunk = folder / chunk_name(models)
    parts = _chunk_parts(models)
    if len(parts) > 1:
        return all([_train_chunk(spec, data, masks, part, folder, strategy, progress) for part in parts])
    if not claim_chunk(chunk):
        return False
    try:
        if not is_complete(chunk, required=CHUNK_FILES):  # sealed by another process meanwhile
            train_and_seal(spec, data, masks, models, chunk, strategy, progress)
    finally:
        chunk_lock(chunk).unlink(missing_ok=True)
    return True


def _chunk_parts(models: list[int]) -> list[list[int]]:
    """The chunk folders that ``models`` go into: one for a contiguous range, else one per model
    (a chunk folder always holds a contiguous range of models)."""
    if models == list(range(models[0], models[-1] + 1)):
        return [models]
    return [[model] for model in models]


def chunk_name(models: list[int]) -> str:
    """The folder name of the chunk that holds the consecutive models ``models``."""
    return f"models-{models[0]:05d}-{models[-1]:05d}"


def chunk_lock(chunk: Path) -> Path:
    """The lock file of ``chunk``: held by the process that trains (or submits) it."""
    return chunk.with_name(chunk.name + ".lock")


# An empty or malformed lock file older than this is taken over, with a warning. This code writes
# a lock whole or not at all (:func:`_create_lock`), so it never leaves one: only a crash of an
# earlier version while it wrote its lock (a full disk), an interrupted write on a file system
# without hard links (where the lock is written in place), or a foreign write does. A minute is far
# longer than writing a few bytes takes, so a lock still being written is never taken from its writer.
LOCK_TAKEOVER_SECONDS = 60.0

# os.link's errors on file systems without hard links (FAT, some network and FUSE file systems).
NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


def claim_chunk(chunk: Path) -> bool:
    """Take ``chunk``'s lock file, written whole or not at all. A lock whose process has died on
    this machine is taken over, and so is an empty or malformed one older than
    ``LOCK_TAKEOVER_SECONDS`` (with a warning naming it). False when a live process holds the lock,
    or a malformed one is younger than that."""
    lock = chunk_lock(chunk)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while not _create_lock(lock):
        if not _stale(lock):
            return False
        lock.unlink(missing_ok=True)
    return True


def _create_lock(lock: Path) -> bool:
    """Create ``lock`` holding this process's ``{pid, host, created}``; False when it exists. The
    record is written into a temporary file of the same folder, then hard-linked to the lock's name
    (which fails when that name exists): exclusive and atomic, so no process ever reads a lock half
    written, even when the disk fills up midway."""
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "created": time.time()}).encode()
    handle, tmp = tempfile.mkstemp(dir=lock.parent, prefix=f".{lock.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(record)
            out.flush()
            os.fsync(out.fileno())  # the lock's name never points at bytes still only in memory
        return _link_lock(Path(tmp), lock, record)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _link_lock(tmp: Path, lock: Path, record: bytes) -> bool:
    """Give the written ``tmp`` the lock's name; False when the lock exists."""
    try:
        os.link(tmp, lock)
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in NO_HARD_LINKS:
            raise
        return _create_lock_in_place(lock, record)
    return True


def _create_lock_in_place(lock: Path, record: bytes) -> bool:
    """:func:`_create_lock` where hard links are not supported: created exclusively, then written;
    a failed write removes it (only a crash midway leaves a malformed lock, taken over after
    ``LOCK_TAKEOVER_SECONDS``)."""
    try:
        handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(record)
    except BaseException:
        lock.unlink(missing_ok=True)  # ours: created exclusively just now
        raise
    return True


def _read_lock(lock: Path) -> dict | None:
    """The ``{pid, host}`` (and ``created``) that ``lock`` records, or None when it is empty,
    unreadable, or not a JSON object with an integer pid and a host name. Raises
    ``FileNotFoundError`` when there is no lock."""
    try:
        holder = json.loads(lock.read_bytes())
    except FileNotFoundError:
        raise
    except (OSError, ValueError):  # unreadable, empty, not JSON, not UTF-8
        return None
    pid = holder.get("pid") if isinstance(holder, dict) else None
    # pid 0 and negative pids name process groups for os.kill, which would always look alive.
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**31:
        return None
    return holder if isinstance(holder.get("host"), str) else None


def _stale(lock: Path) -> bool:
    """Whether ``lock`` may be taken over: it is gone, its process died on this machine, or it is
    malformed and old (:func:`_abandoned`). Whether a process on another machine lives is not
    knowable here: its lock is left to that machine, or to a person who deletes it."""
    try:
        holder = _read_lock(lock)
    except FileNotFoundError:
        return True
    if holder is None:
        return _abandoned(lock)
    if holder["host"] != socket.gethostname():
        return False
    return not _alive(holder["pid"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _abandoned(lock: Path) -> bool:
    """Whether the malformed ``lock`` is older than ``LOCK_TAKEOVER_SECONDS``, then said in a
    warning; a younger one may still be being written."""
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return True
    if age < LOCK_TAKEOVER_SECONDS:
        return False
    warnings.warn(f"taking over the lock {lock}: it is {age:.0f} s old and empty or not the {{pid, host}} record "
                  "a run writes (left by a crash while it was written, or written by something else)",
                  stacklevel=4)
    return True


def train_and_seal(spec: RunSpec, data, masks, models: list[int], chunk: Path, strategy: str,
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


def chunk_table(run: "ShadowRun", name: str) -> pd.DataFrame:
    """A table every chunk of a finished run recorded (e.g. ``"privacy"`` of a DP run), concatenated
    over the run's chunks in model order."""
    tables = [_read_csv_or_empty(chunk / f"{name}.csv") for chunk in _run_chunks(run.folder)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def chunk_signals(spec: RunSpec, chunk: Path, data, queries: int, query_mode: str) -> dict:
    """The logits of ``chunk``'s models on every pool, test (and reference) sample, computed once
    and sealed in the chunk."""
    from .signals import collect_logits

    name = f"signals-{query_mode}-q{queries}"
    if is_complete(chunk, f"{name}.json"):
        return load_torch(chunk / f"{name}.pt")
    states = load_torch(chunk / "states.pt")
    ordered = [states[k] for k in sorted(states, key=int)]
    sets = {"pool": data.x_train, "test": data.x_test}
    if data.x_ref is not None:
        sets["ref"] = data.x_ref
    signals = {name: collect_logits(spec.config, data, ordered, x, queries=queries, mode=query_mode)
               for name, x in sets.items()}
    save_torch(chunk / f"{name}.pt", signals)
    seal(chunk, [f"{name}.pt"], manifest=f"{name}.json")
    return signals


def _load_run(spec: RunSpec, folder: Path, data, masks, queries: int, query_mode: str) -> ShadowRun:
    histories, canary_histories, probe_histories, pool, test, ref = [], [], [], [], [], []
    for chunk in _run_chunks(folder):
        histories.append(pd.read_csv(chunk / "history.csv"))
        canary_histories.append(_read_csv_or_empty(chunk / "canaries.csv"))
        probe_histories.append(_read_csv_or_empty(chunk / "probes.csv"))
        signals = chunk_signals(spec, chunk, data, queries, query_mode)
        pool.append(signals["pool"])
        test.append(signals["test"])
        if "ref" in signals:
            ref.append(signals["ref"])
    return ShadowRun(
        spec=spec, folder=folder, masks=masks,
        history=pd.concat(histories, ignore_index=True),
        logits_pool=torch.cat(pool), logits_test=torch.cat(test),
        y_pool=data.y_train.cpu(), y_test=data.y_test.cpu(), query_mode=query_mode, queries=queries,
        kinds=list(data.kinds) if data.kinds else ["typical"] * len(data.y_train),
        canary_history=pd.concat(canary_histories, ignore_index=True),
        probe_history=pd.concat(probe_histories, ignore_index=True),
        logits_ref=torch.cat(ref) if ref else None,
        y_ref=data.y_ref.cpu() if data.y_ref is not None else None,
        ref_kinds=list(data.ref_kinds or []),
    )


def training_seconds(run: ShadowRun) -> float:
    """Wall time the run's models trained for, when they were trained (each chunk's history
    records every epoch's seconds, the same for all models of the chunk): the cost of the run even
    when it is loaded from disk."""
    total = 0.0
    for chunk in _run_chunks(run.folder):
        history = pd.read_csv(chunk / "history.csv")
        total += float(history[history.model == history.model.min()].seconds.sum())
    return total


def _run_chunks(folder: Path) -> list[Path]:
    """The complete chunks that make up a run, in model order, without overlaps."""
    chunks = sorted((c for c in _chunk_folders(folder) if is_complete(c, required=CHUNK_FILES)), key=chunk_range)
    kept, covered = [], -1
    for chunk in chunks:
        first, last = chunk_range(chunk)
        if first <= covered:
            continue  # an overlapping chunk left by an earlier grid: the first one wins
        kept.append(chunk)
        covered = last
    return kept


def _read_csv_or_empty(path: Path) -> pd.DataFrame:
    """A recorded table, or an empty one for a run without canaries/probes (or stored before
    that table existed)."""
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, FileNotFoundError):
        return pd.DataFrame()

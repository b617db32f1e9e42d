"""A shadow run end to end: ``shadow_run`` plans it, opens its folder, has an executor train the
missing chunks, and loads the finished run with its signals (:class:`ShadowRun`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import torch

from ..data import load_dataset
from ..progress import PlannedRun
from ..training import resolve_device
from . import local, ray
from .chunks import (RunChunks, check_chunk_size, chunk_range, chunk_signals, is_run_complete,
                     missing_chunks, open_run, plan_run, population_index, sealed_chunks)
from .disk import load_torch, read_csv_or_empty
from .executor import ChunkJob, Executor, ExecutorOptions, parse_shard
from .spec import ShadowSpec, run_folder

# Every executor, by name: a new one is a module with an ``EXECUTOR`` and a line here.
EXECUTORS: dict[str, Executor] = {executor.name: executor for executor in (local.EXECUTOR, ray.EXECUTOR)}
DEFAULT_CHUNK_SIZE = 16


@dataclasses.dataclass
class ShadowRun:
    """A finished shadow run: masks, histories and the signals of every model on every sample.

    ``logits_pool [N, Q, P, K]`` and ``logits_test [N, Q, T, K]`` hold the logits of model n under
    query view q (0 identity, 1 mirror, ...) on pool sample p or test sample t of the run's
    population (:func:`chunks.population_index`: the test split, or a fixed subset of a large one;
    ``y_test`` holds its labels). Test accuracy on the whole split is in ``history``
    (:meth:`final_accuracy`). With canaries,
    ``kinds[p]`` flags pool sample p, ``logits_ref [N, Q, R, K]`` covers the never-trained reference
    candidates, and ``canary_history`` holds every model's prediction on every canary per epoch.
    With gradient probes (``spec.RunSpec.probe_every``), ``probe_history`` holds the probed samples'
    gradient norms (``own``, ``loo``) per model and step.
    """

    spec: ShadowSpec
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
        for folder in sealed_chunks(self.folder):  # never a half-written or stray folder
            first, last = chunk_range(folder)
            if first <= model <= last:
                return load_torch(folder / "states.pt")[str(model)]
        raise ValueError(f"model {model} is outside the run's {self.spec.n_models} models")


def load_run(spec: ShadowSpec, folder: Path, data, masks, queries: int, query_mode: str) -> ShadowRun:
    histories, canary_histories, probe_histories, pool, test, ref = [], [], [], [], [], []
    for chunk in sealed_chunks(folder):
        histories.append(pd.read_csv(chunk / "history.csv"))
        canary_histories.append(read_csv_or_empty(chunk / "canaries.csv"))
        probe_histories.append(read_csv_or_empty(chunk / "probes.csv"))
        signals = chunk_signals(spec, chunk, data, queries, query_mode)
        pool.append(signals["pool"])
        test.append(signals["test"])
        if "ref" in signals:
            ref.append(signals["ref"])
    population = population_index(len(data.y_test))
    return ShadowRun(
        spec=spec, folder=folder, masks=masks,
        history=pd.concat(histories, ignore_index=True),
        logits_pool=torch.cat(pool), logits_test=torch.cat(test),
        y_pool=data.y_train.cpu(), y_test=data.y_test.cpu()[population], query_mode=query_mode, queries=queries,
        kinds=list(data.kinds) if data.kinds else ["typical"] * len(data.y_train),
        canary_history=pd.concat(canary_histories, ignore_index=True),
        probe_history=pd.concat(probe_histories, ignore_index=True),
        logits_ref=torch.cat(ref) if ref else None,
        y_ref=data.y_ref.cpu() if data.y_ref is not None else None,
        ref_kinds=list(data.ref_kinds or []),
    )


def planned_run(label: str, spec: ShadowSpec, pool_size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> PlannedRun:
    """What training ``spec`` still costs, for a progress estimate: its models that are not yet in
    a sealed chunk of the store (none for a finished run) and the images each trains on."""
    folder = run_folder(spec)
    missing = spec.n_models
    if folder.is_dir():
        missing = sum(len(models) for models in missing_chunks(folder, spec.n_models, chunk_size))
    images = float(spec.masks(pool_size).sum(1).float().mean())
    return PlannedRun(label, missing, images, int(spec.config.epochs))


def training_seconds(run: ShadowRun) -> float:
    """Wall time the run's models trained for, when they were trained (each chunk's history
    records every epoch's seconds, the same for all models of the chunk): the cost of the run even
    when it is loaded from disk."""
    total = 0.0
    for chunk in sealed_chunks(run.folder):
        history = pd.read_csv(chunk / "history.csv")
        total += float(history[history.model == history.model.min()].seconds.sum())
    return total



def executor_for(name: str, options: ExecutorOptions) -> Executor:
    """The executor ``name``, with ``options`` checked for it: an unknown executor, a bad shard,
    options it cannot take, and bad task options are refused before anything runs."""
    parse_shard(options.shard)
    if name not in EXECUTORS:
        raise ValueError(f"executor={name!r} is not allowed; allowed values: {', '.join(EXECUTORS)}")
    executor = EXECUTORS[name]
    executor.check(options)
    options.check_task_options()
    return executor


def train_runs(specs: list[ShadowSpec], data, chunk_size: int, executor: Executor, options: ExecutorOptions,
               job: ChunkJob) -> list[RunChunks]:
    """Plan the runs of ``specs`` (masks checked, nothing written), let the executor prepare (Ray
    joins its cluster, so an unreachable one leaves no trace), write the runs' descriptions, and
    have the executor train every missing chunk (with its signals) of all of them."""
    runs = [RunChunks(spec, *plan_run(spec, data), chunk_size) for spec in specs]
    executor.prepare(runs, options)
    for run in runs:
        open_run(run.spec, run.folder, run.masks, chunk_size, getattr(data, "pool_key", None))
    executor.train(runs, data, job, options)
    return runs


def shadow_run(spec: ShadowSpec, data=None, *, chunk_size: int = DEFAULT_CHUNK_SIZE, shard: str = "0/1",
               queries: int = 2, query_mode: str = "eval", strategy: str = "batched",
               progress: bool = True, executor: str = "local", address: str | None = None,
               cpus_per_task: int | None = None, max_retries: int = 2) -> ShadowRun | None:
    """Train (or resume, or load) the shadow run ``spec`` and return it with its signals.

    Models are trained ``chunk_size`` at a time as one batched computation; each finished chunk
    is written atomically with a checksummed manifest, so a killed run resumes from the chunks it
    finished. ``shard="i/k"`` trains only the chunks ``c`` with ``c % k == i`` (run the k shards in
    separate processes or machines on the same ``results/`` folder, or copy their chunk folders
    together); it returns ``None`` while other shards' models are missing. Signals (logits under
    ``queries`` views, BN ``query_mode``) are computed once per chunk and sealed with it.

    ``executor="ray"`` trains the missing chunks as tasks on a Ray cluster instead (see
    :mod:`bnprivacy.runs.ray`): the cluster at ``address`` (``auto``, ``HOST:PORT``,
    ``ray://HOST:PORT``), the one this process already joined, or a new local instance. Each task
    takes one GPU when the cluster has any, else ``cpus_per_task`` CPUs and as many torch threads
    (by default this process's thread count: on a CPU, results are bit-identical to a local run
    only with the same thread count, since the thread count changes float summation order);
    a failing task is retried ``max_retries`` times. Ray schedules the whole run, so ``shard`` must
    stay ``"0/1"``.
    """
    options = ExecutorOptions(shard, address, cpus_per_task, max_retries)
    runner = executor_for(executor, options)
    check_chunk_size(chunk_size)
    if data is None:
        data = load_dataset(spec.config, resolve_device(spec.config))
    job = ChunkJob(strategy=strategy, queries=queries, query_mode=query_mode, progress=progress)
    (run,) = train_runs([spec], data, chunk_size, runner, options, job)
    if not is_run_complete(run.folder, spec.n_models, chunk_size):
        return None
    return load_run(spec, run.folder, data, run.masks, queries, query_mode)

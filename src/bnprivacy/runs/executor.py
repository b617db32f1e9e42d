"""The interface every executor offers, and the options a run gives it.

An executor trains the missing chunks of opened runs (:class:`chunks.RunChunks`) somewhere: in
this process (:mod:`.local`), as Ray tasks (:mod:`.ray`), ... It is registered by name in
``runs.shadow.EXECUTORS``; adding one touches only its own module and that registry.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from ..checks import check_whole


@dataclasses.dataclass(frozen=True)
class ExecutorOptions:
    """Where and how an executor runs: ``shard`` (``"i/k"``, local only), ``address`` (a Ray
    cluster), ``cpus_per_task`` and ``max_retries`` (Ray tasks)."""

    shard: str = "0/1"
    address: str | None = None
    cpus_per_task: int | None = None
    max_retries: int = 2

    def check_task_options(self) -> None:
        """Refuse task options that no executor can take."""
        if self.cpus_per_task is not None:
            check_whole("cpus_per_task", self.cpus_per_task,
                        allowed="an integer >= 1, or None for as many as this process's torch threads")
        check_whole("max_retries", self.max_retries, 0)


@dataclasses.dataclass(frozen=True)
class ChunkJob:
    """What every chunk of a run is trained with: the engine's ``strategy``, the signals' ``queries``
    and BN ``query_mode`` (computed with the chunk), and whether to show progress bars."""

    strategy: str = "batched"
    queries: int = 2
    query_mode: str = "eval"
    progress: bool = True


class Executor(Protocol):
    """Trains the missing chunks of opened runs."""

    name: str

    def check(self, options: ExecutorOptions) -> None:
        """Refuse, before anything runs, options this executor cannot honour."""

    def prepare(self, runs: list, options: ExecutorOptions) -> None:
        """Called after planning and before the runs' folders are written (e.g. join a cluster,
        so that an unreachable one leaves no trace)."""

    def train(self, runs: list, data, job: ChunkJob, options: ExecutorOptions) -> None:
        """Train every missing chunk of ``runs`` that this process is responsible for (sealed,
        with its signals), waiting for chunks other processes hold."""


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

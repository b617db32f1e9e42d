"""The local executor: this process trains the missing chunks, one batched computation per chunk.

``shard="i/k"`` trains only the chunks ``c`` of the grid with ``c % k == i``: run the k shards in
separate processes or machines on the same ``results/`` folder (or copy their chunk folders
together). Processes that share a folder split its chunks through the chunks' locks.
"""

from __future__ import annotations

from .chunks import CHUNK_FILES, RunChunks, poll_until_sealed, train_seal_and_signal
from .disk import is_complete
from .executor import ChunkJob, ExecutorOptions, parse_shard
from .locks import claim_chunk, release_chunk


class LocalExecutor:
    """Trains in this process (:mod:`bnprivacy.runs.local`)."""

    name = "local"

    def check(self, options: ExecutorOptions) -> None:
        if options.address is not None:
            raise ValueError(f"address={options.address!r} names a Ray cluster, but executor='local'; "
                             "add --executor ray, or drop --address")

    def prepare(self, runs: list[RunChunks], options: ExecutorOptions) -> None:
        return None

    def train(self, runs: list[RunChunks], data, job: ChunkJob, options: ExecutorOptions) -> None:
        """Train this shard's missing chunks of each run in turn. A chunk that another process holds
        is left to it: this process trains the others, then waits until that chunk is sealed, or
        takes it over when the holder died."""
        index, count = parse_shard(options.shard)
        for run in runs:
            mine = lambda run, models: (models[0] // run.chunk_size) % count == index  # noqa: E731
            poll_until_sealed([run], _trainer(data, job), select=mine)


def _trainer(data, job: ChunkJob):
    """``train_missing`` of :func:`chunks.poll_until_sealed` for this process: train each chunk
    it can claim (a progress bar over chunks on the first pass), return the ones held elsewhere."""
    from tqdm.auto import tqdm

    passes = []

    def train_missing(missing: list) -> list:
        run = missing[0][0]
        bar = tqdm(missing, desc=f"chunks ({run.spec.config.arch}/{run.spec.config.norm}, {run.spec.n_models} models)",
                   unit="chunk", disable=not job.progress or bool(passes) or len(missing) < 2)
        passes.append(len(missing))
        return [(run, models) for run, models in bar if not train_chunk(run, models, data, job)]

    return train_missing


def train_chunk(run: RunChunks, models: list[int], data, job: ChunkJob) -> bool:
    """Claim, train and seal the chunk ``models`` of ``run``; False when another live process holds it."""
    chunk = run.chunk(models)
    if not claim_chunk(chunk):
        return False
    try:
        if not is_complete(chunk, required=CHUNK_FILES):  # sealed by another process meanwhile
            train_seal_and_signal(run.spec, data, run.masks, models, chunk, strategy=job.strategy,
                                  queries=job.queries, query_mode=job.query_mode, progress=job.progress)
    finally:
        release_chunk(chunk)
    return True


EXECUTOR = LocalExecutor()

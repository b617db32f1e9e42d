"""The Ray executor: the missing chunks of one or more runs train as tasks on a Ray cluster.

The driver (the process that calls ``shadow_run``) submits one task per missing chunk. A task
trains its chunk on one GPU (or ``cpus_per_task`` CPUs), computes the chunk's signals, and
returns every file of the sealed chunk as bytes; the driver writes them into the run folder, the
manifest last, and checks their checksums. No shared disk is needed, and the run folder is the
same as a local run's: resume, loading and every chapter work unchanged.

Ray is an optional dependency (``pip install bnprivacy[ray]``); it is imported only here, and only
when this executor runs.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import tempfile
from pathlib import Path

import torch

from ..training import resolve_device
from .chunks import (CHUNK_FILES, RunChunks, chunk_name, chunk_range, poll_until_sealed,
                     train_seal_and_signal)
from .disk import is_complete, reset, write_atomic
from .executor import ChunkJob, ExecutorOptions
from .locks import claim_chunk, release_chunk


class RayExecutor:
    """Trains as Ray tasks (:mod:`bnprivacy.runs.ray`)."""

    name = "ray"

    def check(self, options: ExecutorOptions) -> None:
        if str(options.shard) != "0/1":
            raise ValueError(f"executor='ray' schedules the whole run, so shard={options.shard!r} cannot go with it; "
                             "drop --shard (Ray spreads the chunks over the cluster), or use --executor local "
                             "with --shard to schedule shards by hand")
        address, named = cluster_address(options.address)
        if address is not None:
            _host_port(address, named)

    def prepare(self, runs: list[RunChunks], options: ExecutorOptions) -> None:
        """Join the cluster when a chunk is missing, before any run folder is written."""
        if any(run.missing() for run in runs):
            connect(options.address)

    def train(self, runs: list[RunChunks], data, job: ChunkJob, options: ExecutorOptions) -> None:
        train_on_ray(runs, data, job, cpus_per_task=options.cpus_per_task, max_retries=options.max_retries)


EXECUTOR = RayExecutor()


# Seconds to wait for a Ray head to accept a connection and answer, before calling it unreachable
# (``ray.init`` itself retries an unreachable or silent address for minutes).
CONNECT_TIMEOUT_SECONDS = 10.0


class ChunksFailed(RuntimeError):
    """Chunks whose Ray tasks failed after every retry; the chunks that finished stay sealed."""


def cluster_address(address: str | None) -> tuple[str | None, str]:
    """The address ``ray.init`` will join and how the user gave it (for messages): ``address``, else
    the ``RAY_ADDRESS`` environment variable, which ``ray.init`` reads in its place; ``(None, "")``
    without either (a new local instance)."""
    if address:
        return address, f"address={address!r}"
    from_env = os.environ.get("RAY_ADDRESS", "").strip()
    if from_env:
        return from_env, f"RAY_ADDRESS={from_env!r} (from the environment)"
    return None, ""


def _host_port(address: str, named: str | None = None) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT`` or ``ray://HOST:PORT``; None for ``auto`` (and ``local``,
    which Ray reads as a new local instance). ``named`` says where the address came from."""
    if address in ("auto", "local"):
        return None
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{named or f'address={address!r}'} is not allowed; allowed values: auto (the cluster started on "
                         "this machine by `ray start --head`), HOST:PORT (the head's GCS address, e.g. "
                         "10.0.0.5:6379) or ray://HOST:PORT (Ray Client, port 10001)")
    return host.strip("[]"), int(port)


def _import_ray():
    try:
        import ray
    except ImportError as error:
        raise RuntimeError("executor='ray' needs Ray, which is not installed: run "
                           "`pip install 'bnprivacy[ray]'` (or `pip install 'ray>=2.9'`) in this environment, "
                           "or use --executor local") from error
    return ray


def connect(address: str | None = None):
    """The ``ray`` module, connected to a cluster: the one this process already joined, the one at
    ``address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``), or, without an address, what Ray
    finds (``RAY_ADDRESS``, then a cluster started on this machine by ``ray start``) or else a new
    local instance. An address, given or in ``RAY_ADDRESS``, where nothing listens or nothing answers fails within
    ``CONNECT_TIMEOUT_SECONDS`` (:func:`probe_grpc`), one where another gRPC server answers when Ray
    gives up (about 20 s), each with what to do."""
    ray = _import_ray()
    target, named = cluster_address(address)
    where = _host_port(target, named) if target else None
    if ray.is_initialized():
        joined = ray.get_runtime_context().gcs_address
        if where is not None and not target.startswith("ray://") and joined.rsplit(":", 1)[-1] != str(where[1]):
            raise ValueError(f"this process already joined the Ray cluster at {joined}, not {named}; "
                             "a process joins one cluster: drop the address, or run in a new process")
        return ray
    if where is not None:
        try:
            probe_grpc(where)
        except OSError as error:
            raise RuntimeError(_unreachable(named, error)) from error
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except ConnectionError as error:
        raise RuntimeError(_unreachable(named or "a new local instance", error) + (
            "; if a Ray cluster does run there, it may want its token (Ray >= 2.59 turns token authentication "
            "on for clusters started by `ray start`): set RAY_AUTH_MODE=token and copy the head's "
            "~/.ray/auth_token here, or set RAY_AUTH_TOKEN" if where is not None else "")) from error
    return ray


# An HTTP/2 client's opening: the connection preface and an empty SETTINGS frame.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def probe_grpc(where: tuple[str, int]) -> None:
    """Raise ``OSError`` unless a gRPC server (a Ray head's GCS, or Ray Client) answers at ``where``
    within ``CONNECT_TIMEOUT_SECONDS``: it must send a SETTINGS frame back. ``ray.init`` waits for
    minutes on a port where nothing, or something silent, listens. With ``RAY_USE_TLS=1`` only the
    TCP connection is checked (the server then expects TLS first)."""
    try:
        with socket.create_connection(where, timeout=CONNECT_TIMEOUT_SECONDS) as conn:
            if os.environ.get("RAY_USE_TLS", "0") not in ("0", ""):
                return
            conn.sendall(HTTP2_PREFACE)
            reply = conn.recv(9)
    except TimeoutError as error:
        raise OSError(f"{where[0]}:{where[1]} did not answer within {CONNECT_TIMEOUT_SECONDS:g} s") from error
    if len(reply) < 9 or reply[3] != 4:
        raise OSError(f"{where[0]}:{where[1]} accepts connections but does not answer as a gRPC server, "
                      "so it is not a Ray head")


def _unreachable(named: str, error: Exception) -> str:
    """Why joining failed and what to do; ``named`` is the address as the user gave it."""
    instead = ("or unset RAY_ADDRESS to start a Ray instance on this machine" if named.startswith("RAY_ADDRESS")
               else "or drop --address to start a Ray instance on this machine")
    return (f"no Ray cluster could be reached at {named} ({error}); start one with "
            f"`ray start --head` on the head machine and pass the address it prints (HOST:6379), {instead}")


def task_threads(ray, cpus_per_task: int | None) -> int:
    """The CPUs and torch threads of one task: ``cpus_per_task``, or by default this process's torch
    thread count (what a local run uses, so that CPU results are bit-identical to it), capped at the
    largest node of the cluster so that the task can be placed."""
    if cpus_per_task is not None:
        return cpus_per_task
    largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=1)
    return max(1, min(torch.get_num_threads(), int(largest)))


def chunk_resources(ray, cfg, threads: int) -> dict:
    """What one task asks of the cluster: one GPU when the cluster has any and the config may use
    CUDA, else ``threads`` CPUs."""
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.device == "cuda" and gpus < 1:
        raise ValueError("Config.device='cuda' but the Ray cluster has no GPU; use device='auto' or 'cpu', "
                         "or start the Ray workers on machines with GPUs")
    if cfg.device != "cpu" and gpus >= 1:
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_gpus": 0, "num_cpus": threads}


@functools.cache
def code_digest() -> str:
    """SHA-256 of this package's Python sources: a worker trains only for a driver with the same code."""
    root = Path(__file__).resolve().parents[1]  # the whole package, not only runs/
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def train_chunk_files(spec, data, masks, models: list[int], *, strategy: str, queries: int,
                      query_mode: str, threads: int, code: str) -> dict[str, bytes]:
    """Train one chunk, compute its signals, and return every file of the sealed chunk folder as
    bytes (what a Ray task sends back to the driver). Runs on a Ray worker; exactly the code of a
    local run, in a temporary folder. ``code`` is the driver's :func:`code_digest`."""
    if code != code_digest():
        raise RuntimeError(f"the Ray worker on {socket.gethostname()} runs bnprivacy code that differs from the "
                           "driver's; install the driver's commit there (git checkout, then make venv) and "
                           "restart its Ray worker (ray stop; ray start --address HEAD:6379)")
    torch.set_num_threads(threads)  # CPU results depend on the thread count; fix it per task
    data = data.to(resolve_device(spec.config))
    with tempfile.TemporaryDirectory(prefix="bnprivacy-chunk-") as tmp:
        chunk = Path(tmp) / chunk_name(models)
        train_seal_and_signal(spec, data, masks, models, chunk, strategy=strategy, queries=queries,
                              query_mode=query_mode, progress=False)
        return {path.name: path.read_bytes() for path in sorted(chunk.iterdir()) if path.is_file()}


def write_chunk_files(chunk: Path, files: dict[str, bytes]) -> None:
    """Write a chunk that a task returned: every file atomically, the manifests last, then check
    that the chunk is complete (the checksums cover the transfer). A result that is not a dict of
    file names to bytes is refused with a ``RuntimeError`` naming the chunk."""
    _check_returned_files(chunk, files)
    for name in files:
        if Path(name).name != name or name.startswith(".") or not name:
            raise RuntimeError(f"a Ray task returned a file named {name!r} for {chunk.name}; refused "
                               "(chunk files are plain names)")
    reset(chunk)
    manifests = sorted(name for name in files if name.endswith(".json"))
    for name in [n for n in sorted(files) if n not in manifests] + manifests:
        write_atomic(chunk / name, files[name])
    if not is_complete(chunk, required=CHUNK_FILES):
        reset(chunk)
        raise RuntimeError(f"the files of {chunk.name} arrived incomplete or corrupt; run the same command "
                           "again to retrain that chunk")


def _check_returned_files(chunk: Path, files) -> None:
    """Refuse a task result that is not what :func:`train_chunk_files` returns (a dict of file names
    to bytes), e.g. None from a task that was replaced or cut short, with the chunk's name."""
    if isinstance(files, dict) and all(isinstance(n, str) and isinstance(b, bytes) for n, b in files.items()):
        return
    if isinstance(files, dict):
        shown = "a dict that does not map file names to bytes"
    else:
        shown = "None" if files is None else f"a {type(files).__name__}"
    raise RuntimeError(f"the Ray task of {chunk.name} returned {shown} instead of the chunk's files (a dict of "
                       "file names to bytes); check that every Ray worker runs this commit of bnprivacy, then run "
                       "the same command again to retrain that chunk")


def train_on_ray(runs: list[RunChunks], data, job: ChunkJob, *, cpus_per_task: int | None,
                 max_retries: int) -> None:
    """Train every missing chunk of ``runs`` as Ray tasks (all runs' chunks at once), writing each
    chunk as its task finishes. Chunks another process holds (their lock) are left to it and
    waited for. Tasks that fail after ``max_retries`` retries raise :class:`ChunksFailed` once the
    others finished; Ctrl-C cancels the outstanding tasks and keeps every chunk already written."""
    ray = connect()
    threads = task_threads(ray, cpus_per_task)
    options = dict(strategy=job.strategy, queries=job.queries, query_mode=job.query_mode, threads=threads,
                   code=code_digest())
    data_ref = ray.put(data.to("cpu"))
    tasks = {}  # one remote function per resource request

    def prepare(run: RunChunks):
        resources = chunk_resources(ray, run.spec.config, threads)
        key = tuple(sorted(resources.items()))
        if key not in tasks:
            tasks[key] = ray.remote(train_chunk_files).options(max_retries=max_retries, retry_exceptions=True,
                                                               **resources)
        return ray.put(run.masks.cpu()), tasks[key]

    prepared = {id(run): prepare(run) for run in runs}  # a bad request fails here, before any lock is taken

    def train_missing(missing: list) -> list:
        """Submit every chunk this process can claim, write them as they finish; the rest are held."""
        claimed = [claim_chunk(run.chunk(models)) for run, models in missing]
        mine = [pair for pair, ours in zip(missing, claimed) if ours]
        pending = {}
        try:
            for run, models in mine:
                masks_ref, task = prepared[id(run)]
                pending[submit_chunk(task, run.spec, data_ref, masks_ref, models, options)] = (run, models)
        except BaseException:
            _abandon(ray, pending, mine)
            raise
        _collect(ray, pending, job.progress)
        return [pair for pair, ours in zip(missing, claimed) if not ours]

    poll_until_sealed(runs, train_missing)


def submit_chunk(task, spec, data_ref, masks_ref, models: list[int], options: dict):
    """One Ray task for the chunk ``models``; returns its object reference."""
    return task.remote(spec, data_ref, masks_ref, models, **options)


# Seconds one ray.wait blocks: Python raises a Ctrl-C only when the main thread runs Python code,
# and inside one long ray.wait that is up to Ray's own signal checks, which a loaded CI machine
# was seen to miss for minutes; short waits bound the delay whatever Ray does.
WAIT_SECONDS = 1.0


def _collect(ray, pending: dict, progress: bool) -> None:
    """Write each chunk as its task finishes; on any interruption cancel the rest and free their
    locks; report the tasks that failed."""
    from tqdm.auto import tqdm

    failures = []
    bar = tqdm(total=len(pending), desc="chunks on Ray", unit="chunk", disable=not progress)
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_SECONDS)
            if not done:
                continue  # back in Python between waits, so a Ctrl-C is raised here within a second
            run, models = pending.pop(done[0])
            chunk = run.chunk(models)
            try:
                write_chunk_files(chunk, ray.get(done[0]))
            except (ray.exceptions.RayError, RuntimeError) as error:  # the task failed, or its files
                failures.append((chunk, error))
            finally:
                release_chunk(chunk)
            bar.update()
    except BaseException:
        _abandon(ray, pending, list(pending.values()))
        raise
    finally:
        bar.close()
    if failures:
        raise ChunksFailed(_failure_report(failures))


def _abandon(ray, pending: dict, claimed: list) -> None:
    """Cancel the submitted tasks and free the locks of the chunks claimed for them."""
    for ref in pending:
        ray.cancel(ref, force=True)
    for run, models in claimed:
        release_chunk(run.chunk(models))


def _failure_report(failures: list) -> str:
    lines = [f"{len(failures)} chunk(s) failed on Ray after every retry (the other chunks are sealed and stay; "
             "run the same command again to retry only these):"]
    for chunk, error in failures:
        first, last = chunk_range(chunk)
        cause = getattr(error, "cause", None) or error  # a RayTaskError carries the task's exception
        message = (str(cause).strip().splitlines() or [""])[-1]
        lines.append(f"  models {first}-{last} of {chunk.parent}: {type(cause).__name__}: {message}")
    return "\n".join(lines)

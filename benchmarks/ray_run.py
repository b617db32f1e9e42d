"""A shadow run on the local executor against the same run on a 2-worker local Ray cluster, in one run.

    python benchmarks/ray_run.py                  # 16 models (cnn width 16, 30 epochs, digits), chunks of 4
    python benchmarks/ray_run.py --epochs 10 --chunk-size 2

Three ways to train the same 16-model run, each into its own empty results folder:

- local: ``shadow_run(..., executor="local")``, this process, every torch thread;
- ray, 1 task at a time: a 2-CPU Ray cluster, ``cpus_per_task`` = this process's thread count, so
  each task computes exactly what the local run computes (bit-identical results, checked);
  the difference in wall time is Ray's overhead;
- ray, 2 tasks at once: the same cluster, ``cpus_per_task=1``: two chunks train side by side with
  one thread each (results differ from the local run in the last bits, then by SGD's chaos).

Ray's overhead per chunk is reported two ways: (Ray wall - local wall) / chunks for the
identical-computation mode, and per worker, (workers x wall - the chunks' recorded training
seconds) / chunks, for every mode (what a worker spends on a chunk besides training it: start-up,
data from the object store, signals, shipping and writing files). Starting the cluster is timed
apart. Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bnprivacy.config import Config  # noqa: E402
from bnprivacy.data import load_dataset  # noqa: E402
from bnprivacy.runs.shadow import shadow_run, training_seconds  # noqa: E402
from bnprivacy.runs.spec import RunSpec  # noqa: E402


def run_into(folder: Path, spec: RunSpec, data, chunk_size: int, **executor) -> tuple[float, object]:
    os.environ["BNPRIVACY_RESULTS"] = str(folder)
    started = time.perf_counter()
    run = shadow_run(spec, data, chunk_size=chunk_size, progress=False, **executor)
    return time.perf_counter() - started, run


def report(name: str, wall: float, run, chunks: int, workers: int) -> None:
    trained = training_seconds(run)
    per_worker = (workers * wall - trained) / chunks
    print(f"  {name:34} {wall:7.2f} s wall; chunks' training {trained:6.2f} s; "
          f"per chunk besides training: {per_worker:5.2f} s per worker")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()
    import ray

    cfg = Config(dataset="digits", arch="cnn", norm="batch", width=args.width, epochs=args.epochs, device="cpu")
    spec = RunSpec(cfg, n_models=args.models)
    data = load_dataset(cfg)
    chunks = -(-args.models // args.chunk_size)
    threads = torch.get_num_threads()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"ray {ray.__version__}; {args.models} models ({cfg.arch} width {cfg.width}, norm {cfg.norm}, "
          f"{cfg.epochs} epochs, {cfg.dataset}) in {chunks} chunks of {args.chunk_size}; {threads} torch threads")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shadow_run(RunSpec(cfg.replace(epochs=1), n_models=2), data, chunk_size=2, progress=False)  # warm-up
        local_wall, local = run_into(root / "local", spec, data, args.chunk_size)
        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        print(f"  Ray cluster start (2 CPUs):         {time.perf_counter() - started:7.2f} s (not counted below)")
        serial_wall, serial = run_into(root / "ray-serial", spec, data, args.chunk_size, executor="ray",
                                       cpus_per_task=min(threads, 2))
        parallel_wall, parallel = run_into(root / "ray-parallel", spec, data, args.chunk_size, executor="ray",
                                           cpus_per_task=1)
        ray.shutdown()
        report("local (this process)", local_wall, local, chunks, 1)
        report(f"ray, 1 task at a time x {min(threads, 2)} threads", serial_wall, serial, chunks, 1)
        report("ray, 2 tasks at once x 1 thread", parallel_wall, parallel, chunks, 2)
        identical = torch.equal(local.logits_pool, serial.logits_pool) and torch.equal(local.logits_test,
                                                                                       serial.logits_test)
        print(f"  ray (same threads) logits identical to local: {identical}")
        print(f"  Ray's overhead per chunk (same computation): {(serial_wall - local_wall) / chunks:.2f} s")
        print(f"speedup: {local_wall / parallel_wall:.2f} (local wall / 2-worker Ray wall)")


if __name__ == "__main__":
    main()

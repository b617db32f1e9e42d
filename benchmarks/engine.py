"""Throughput of the shadow-model engine against the obvious baseline, in one run.

    python benchmarks/engine.py --quick        # CPU: 16 small CNNs (width 16) on digits
    python benchmarks/engine.py --gpu          # GPU: the same at N = 32, plus images/s and MFU

Both strategies train the same models (same initialisations, data order and augmentations): the
engine as one wide network (``strategy="batched"``), the baseline one model at a time
(``strategy="loop"``). The last line is ``speedup: X.XX`` (baseline time / engine time). Prints
figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bnprivacy.config import Config  # noqa: E402
from bnprivacy.data import load_dataset  # noqa: E402
from bnprivacy.ensemble import balanced_masks, train_ensemble  # noqa: E402
from timing import timed  # noqa: E402


def compare(cfg: Config, n_models: int, repeats: int) -> float:
    data = load_dataset(cfg, "cuda" if cfg.device == "cuda" else "cpu")
    masks = balanced_masks(n_models, len(data.y_train), seed=0)
    warm = cfg.replace(epochs=1)
    train_ensemble(warm, data, masks, strategy="batched")  # first-call set-up (kernels, oneDNN plans)
    train_ensemble(warm, data, masks[:2], strategy="loop")
    engine, baseline = [], []
    for _ in range(repeats):
        engine.append(timed(lambda: train_ensemble(cfg, data, masks, strategy="batched")))
        baseline.append(timed(lambda: train_ensemble(cfg, data, masks, strategy="loop")))
    best_engine, best_baseline = min(engine), min(baseline)
    images = n_models * (int(masks.sum(1).min()) // cfg.batch_size) * cfg.batch_size * cfg.epochs
    print(f"{cfg.arch} width {cfg.width} norm {cfg.norm}, N = {n_models}, {cfg.epochs} epochs, "
          f"batch {cfg.batch_size}, {cfg.device}, {torch.get_num_threads()} threads")
    print(f"  engine (one wide network):  {best_engine:7.2f} s  ({images / best_engine:,.0f} train images/s)")
    print(f"  baseline (one at a time):   {best_baseline:7.2f} s  ({images / best_baseline:,.0f} train images/s)")
    print(f"  best of {repeats}; all engine runs {[round(t, 2) for t in engine]}, "
          f"baseline {[round(t, 2) for t in baseline]}")
    return best_baseline / best_engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU comparison at N = 16 (default)")
    parser.add_argument("--gpu", action="store_true", help="GPU comparison at N = 32")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    if args.gpu:
        if not torch.cuda.is_available():
            sys.exit("--gpu needs a CUDA GPU; run --quick on a CPU")
        cfg = Config(arch="cnn", norm="batch", width=16, epochs=args.epochs, batch_size=64, device="cuda")
        speedup = compare(cfg, 32, args.repeats)
    else:
        speedups = []
        for norm in ("none", "batch"):
            cfg = Config(arch="cnn", norm=norm, width=16, epochs=args.epochs, batch_size=64, device="cpu")
            speedups.append(compare(cfg, 16, args.repeats))
            print(f"  ratio for norm={norm}: {speedups[-1]:.2f}")
        speedup = min(speedups)
        print("(speedup below: the smaller of the two norms)")
    print(f"speedup: {speedup:.2f}")


if __name__ == "__main__":
    main()

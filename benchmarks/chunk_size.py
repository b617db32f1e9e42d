"""Training rate against the number of models trained as one wide network (a run's chunk size), for
the recorded CIFAR recipe, on this machine.

    python benchmarks/chunk_size.py                       # airbench width 32, batch 64, bf16 where native
    python benchmarks/chunk_size.py --sizes 2 4 --epochs 1 --arch cnn --width 8   # smaller, quicker

Synthetic CIFAR-shaped pixels (the cost does not depend on them), a 4,000-image pool with each
model on half of it, no augmentation, as in the ``cifar`` profile. One warm-up epoch per size, then
``--epochs`` timed epochs (each ending with an evaluation on a 1,024-image test split). Prints train
images/s per size and its ratio to the largest size; the chunk size that runs fastest is the
``--chunk-size`` to give ``python -m bnprivacy family`` on this machine. Prints figures; asserts
nothing about time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bnprivacy.config import Config  # noqa: E402
from bnprivacy.ensemble import balanced_masks, train_ensemble  # noqa: E402
from bnprivacy.training import cpu_supports_bf16  # noqa: E402
from engine import synthetic_cifar  # noqa: E402
from timing import timed  # noqa: E402


def rate(cfg: Config, n_models: int, pool: int) -> float:
    """Train images/s of ``n_models`` models as one wide network, after a warm-up epoch."""
    data = synthetic_cifar(pool, 1024)  # a small test split: the rate of training, not of the final evaluation
    masks = balanced_masks(n_models, pool, seed=0)
    train_ensemble(cfg.replace(epochs=1), data, masks)
    seconds = timed(lambda: train_ensemble(cfg, data, masks))
    return n_models * (pool // 2 // cfg.batch_size) * cfg.batch_size * cfg.epochs / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--arch", default="airbench")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--pool", type=int, default=4000)
    args = parser.parse_args()
    precision = "bf16" if cpu_supports_bf16() else "fp32"
    cfg = Config(arch=args.arch, width=args.width, norm="batch", batch_size=64, augment="none", label_smoothing=0.2,
                 lr=0.1, epochs=args.epochs, precision=precision, device="cpu")
    print(f"{args.arch} width {args.width}, pool {args.pool}, batch 64, {precision}, {torch.get_num_threads()} threads")
    rates = {n: rate(cfg, n, args.pool) for n in args.sizes}
    largest = rates[max(args.sizes)]
    for n, r in rates.items():
        print(f"  {n:3} models per network: {r:8,.0f} train images/s ({r / largest:.2f}x the {max(args.sizes)}-model rate)")


if __name__ == "__main__":
    main()

"""The cost of a profile's family (chapters 01-04), estimated from FLOPs, for a profile that cannot
be timed where it was written (the ``gpu`` profile, cut on a CPU).

    python benchmarks/gpu_profile.py              # the gpu profile on CIFAR-10's shape
    python benchmarks/gpu_profile.py --profile full

Prints image passes, FLOPs per image (torch.utils.flop_counter) and minutes at several achieved
throughputs. Assumptions, stated because nothing here is measured on a GPU:
- 300 TFLOP/s is 30% of an H100/H200's dense bf16 peak (989 TFLOP/s), what airbench94 achieves on
  an A100 (about 3.4e14 FLOP in 3.8 s against a 312 TFLOP/s peak);
- 100 TFLOP/s is the case where the engine's 64-way grouped convolutions run no faster than that;
- the per-epoch test evaluation of training and the gradient probes are left out (a few percent).
Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bnprivacy.__main__ import family_values  # noqa: E402
from bnprivacy.analysis import family_steps  # noqa: E402
from bnprivacy.config import parse_canaries  # noqa: E402
from bnprivacy.cost import family_cost  # noqa: E402

# CIFAR-10: 50,000 training and 10,000 test images of 3x32x32, 10 classes.
CIFAR10 = {"train": 50_000, "test": 10_000, "shape": (3, 32, 32), "classes": 10}
THROUGHPUTS = (100, 200, 300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="gpu")
    args = parser.parse_args()
    values = family_values(ROOT, args.profile, {"device": "cpu"})
    p = family_steps.protocol_from({**values, "margins": {}})
    canaries = parse_canaries(p.base.canaries)
    pool = (p.base.train_size or CIFAR10["train"]) + sum(canaries.values())  # an upper bound: sources leave the pool
    references = p.base.canary_references * len(canaries)
    cost = family_cost(p, pool, CIFAR10["test"], references, CIFAR10["shape"], CIFAR10["classes"])
    print(f"profile {args.profile}: {p.base.arch} width {p.base.width}, {len(p.norms)} norms x {len(p.budgets)} "
          f"budgets {list(p.budgets)} x {p.seeds} seeds x {p.n_models} models, pool {pool:,}")
    print(f"FLOPs per image: {cost.train_flops_per_image / 1e9:.3f} G training (forward + backward), "
          f"{cost.forward_flops_per_image / 1e9:.3f} G forward")
    print(f"learning-rate grid: {cost.lr_grid_image_epochs:.3g} image-epochs; shadow runs: "
          f"{cost.shadow_image_epochs:.3g} image-epochs; signals: {cost.signal_forwards:.3g} forward passes")
    print(f"total: {cost.total_flops:.3g} FLOP")
    for tflops in THROUGHPUTS:
        print(f"  at {tflops} TFLOP/s achieved: {cost.minutes_at(tflops):.1f} min")


if __name__ == "__main__":
    main()

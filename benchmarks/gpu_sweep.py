"""Where the GPU time of a CIFAR recording goes: the engine's training rate against models per
wide network (N) and batch size, and a kernel profile of the recorded setting.

    python benchmarks/gpu_sweep.py                  # on a CUDA GPU
    python benchmarks/gpu_sweep.py --device cpu --tiny   # the same code path at toy size (no timing value)

Synthetic CIFAR-shaped pixels (the cost does not depend on them), each model on half of the pool,
as in a shadow run. Per case: train images/s over the timed epochs (after a warm-up epoch that pays
for cuDNN's autotuning), achieved TFLOP/s (FLOPs of ``bnprivacy.cost``) and their share of the
H200's measured bf16 matrix-product rate (790 TFLOP/s, /work/.library/device/KINDS.md). Then a
``torch.profiler`` table of one epoch of the first case, with the share of the wall time in which
the GPU ran a kernel at all (low means the step is bound by Python and kernel launches, not by
arithmetic). Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bnprivacy.config import Config  # noqa: E402
from bnprivacy.cost import flops_per_image  # noqa: E402
from bnprivacy.ensemble import balanced_masks, train_ensemble  # noqa: E402
from engine import synthetic_cifar  # noqa: E402
from timing import timed  # noqa: E402

MEASURED_PEAK_TFLOPS = 790.0
# (arch, width, models per wide network, batch per model, pool): the cifar profile's setting first.
CASES = (("airbench", 32, 16, 64, 4000), ("airbench", 32, 48, 64, 4000), ("airbench", 32, 16, 256, 4000),
         ("airbench", 64, 16, 512, 50000), ("cnn", 32, 16, 64, 4000))
TINY = (("airbench", 4, 2, 8, 64), ("cnn", 4, 2, 8, 64))


def warmed_up(arch: str, width: int, n_models: int, batch: int, pool: int, device: str):
    """``(cfg, data, masks)`` of one case, after one epoch that pays for cuDNN's autotuning."""
    data = synthetic_cifar(pool, 1024).to(device)  # on the device, as load_dataset puts it
    cfg = Config(arch=arch, width=width, norm="batch", batch_size=batch, device=device, epochs=1,
                 augment="flip-crop", label_smoothing=0.2, lr=0.05)
    masks = balanced_masks(n_models, pool, seed=0)
    train_ensemble(cfg, data, masks)
    return cfg, data, masks


def case(arch: str, width: int, n_models: int, batch: int, pool: int, device: str, epochs: int) -> None:
    cfg, data, masks = warmed_up(arch, width, n_models, batch, pool, device)
    seconds = timed(lambda: train_ensemble(cfg.replace(epochs=epochs), data, masks))
    images = n_models * (pool // 2 // batch) * batch * epochs
    tflops = images / seconds * flops_per_image(cfg, (3, 32, 32), 10)[0] / 1e12
    print(f"{arch:8} width {width:3}  N {n_models:3}  batch {batch:4}  pool {pool:6,}: {images / seconds:10,.0f} "
          f"train images/s, {tflops:7.2f} TFLOP/s ({tflops / MEASURED_PEAK_TFLOPS:.1%} of {MEASURED_PEAK_TFLOPS:.0f})",
          flush=True)


def profile(arch: str, width: int, n_models: int, batch: int, pool: int, device: str) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    cfg, data, masks = warmed_up(arch, width, n_models, batch, pool, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        wall = timed(lambda: train_ensemble(cfg, data, masks))
    averages = prof.key_averages()
    sort = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    print(averages.table(sort_by=sort, row_limit=15, max_name_column_width=60))
    if device == "cuda":
        kernel_us = sum(getattr(e, "self_device_time_total", 0) for e in averages
                        if getattr(getattr(e, "device_type", None), "name", "") == "CUDA")
        print(f"one epoch of {arch} width {width}, N {n_models}, batch {batch} under the profiler: {wall:.2f} s wall, "
              f"GPU kernels {kernel_us / 1e6:.2f} s ({kernel_us / 1e6 / wall:.0%} of the wall time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="toy sizes: checks the code path, measures nothing")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda needs a CUDA GPU; use --device cpu --tiny to check the code path")
    cases = TINY if args.tiny else CASES
    print(f"torch {torch.__version__}, " + (torch.cuda.get_device_name() if args.device == "cuda" else "CPU"))
    for arch, width, n_models, batch, pool in cases:
        case(arch, width, n_models, batch, pool, args.device, args.epochs)
    profile(*cases[0], args.device)


if __name__ == "__main__":
    main()

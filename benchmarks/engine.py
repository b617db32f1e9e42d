"""Throughput of the shadow-model engine against the obvious baseline, in one run.

    python benchmarks/engine.py --quick        # CPU: 16 small CNNs (width 16) on digits, then the CIFAR case
    python benchmarks/engine.py --cifar        # CPU: only the CIFAR-shaped case
    python benchmarks/engine.py --gpu          # GPU: the same at N = 32, plus images/s and MFU
    python benchmarks/engine.py --norms        # each norm's training rate against BN's, same run

The CIFAR-shaped case (3x32x32 images, cnn width 32, N = 8, pool 5,000, test 10,000, batch 128,
synthetic pixels: throughput does not depend on them) measures the engine end to end, evaluation
included, against the engine as it was before it measured each epoch on a fixed test subset and
before it used bf16 on CPUs that support it ("today's engine" of issue 14), in the same run. It
prints images/s, achieved GFLOP/s of the training step (FLOPs from torch.utils.flop_counter) and
their share of an estimated peak of this CPU.

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
from bnprivacy.cost import flops_per_image  # noqa: E402
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


def synthetic_cifar(pool: int = 5000, test: int = 10000):
    """A CIFAR-shaped Dataset of random pixels (the engine's cost does not depend on them)."""
    from bnprivacy.data import Dataset

    generator = torch.Generator().manual_seed(0)
    image = lambda n: torch.randn(n, 3, 32, 32, generator=generator)
    label = lambda n: torch.randint(0, 10, (n,), generator=generator)
    return Dataset("synthetic-cifar", image(pool), label(pool), image(test), label(test),
                   [str(c) for c in range(10)], torch.zeros(3), torch.ones(3), natural_images=True)


def train_flops_per_image(cfg: Config, data) -> float:
    """Forward + backward FLOPs of one training image through one model (``bnprivacy.cost``)."""
    return flops_per_image(cfg, data.input_shape, data.num_classes)[0]


def cpu_peak_gflops(bf16: bool) -> float:
    """Estimated peak of this CPU: cores x clock x 32 fp32 FLOP/cycle (two 256-bit FMA pipes, as on
    AVX-512 Zen 4 / most AVX2 cores), twice that for bf16 dot products. An estimate, not a reading."""
    import os

    mhz = 0.0
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("cpu MHz"):
                mhz = float(line.split(":")[1])
                break
    except OSError:
        pass
    cores = min(os.cpu_count() or 1, torch.get_num_threads())
    return cores * (mhz or 2500.0) / 1000 * 32 * (2 if bf16 else 1)


def cifar_case(epochs: int) -> float:
    """The CIFAR-shaped end-to-end case: today's engine against the engine now; returns the ratio."""
    import bnprivacy.ensemble as engine
    from bnprivacy.training import cpu_supports_bf16

    data, n_models = synthetic_cifar(), 8
    masks = balanced_masks(n_models, len(data.y_train), seed=0)
    base = Config(arch="cnn", width=32, norm="batch", epochs=epochs, batch_size=128, device="cpu")
    now = base.replace(precision="bf16") if cpu_supports_bf16() else base
    flops = train_flops_per_image(base, data)
    images = n_models * (int(masks.sum(1).min()) // base.batch_size) * base.batch_size * epochs
    kept = engine.EPOCH_EVAL_SAMPLES
    results = {}
    for name, cfg, subset in (("today's engine (fp32, whole test split every epoch)", base, 10**9),
                              (f"engine now ({now.precision}, test subset per epoch)", now, kept)):
        engine.EPOCH_EVAL_SAMPLES = subset
        train_ensemble(cfg.replace(epochs=1), data, masks[:2])  # warm-up
        history = []
        seconds = timed(lambda: history.append(train_ensemble(cfg, data, masks).history))
        steady = history[0].groupby("epoch")["seconds"].max().iloc[:-1]  # epochs before the last
        per_epoch = history[0].groupby("epoch")["seconds"].max()
        results[name] = (seconds, per_epoch)
        peak = cpu_peak_gflops(cfg.precision == "bf16")
        print(f"  {name}: {seconds:.1f} s for {epochs} epochs = {images / seconds:,.0f} train images/s end to end, "
              f"{images / seconds * flops / 1e9:.1f} GFLOP/s achieved ({images / seconds * flops / 1e9 / peak:.0%} of "
              f"an estimated {peak:.0f} GFLOP/s peak)"
              + (f"; a steady epoch {images / epochs / steady.mean():,.0f} images/s" if len(steady) else ""))
    engine.EPOCH_EVAL_SAMPLES = kept
    (first, first_epochs), (second, second_epochs) = results.values()
    projected = [29 * e.iloc[:-1].mean() + e.iloc[-1] for e in (first_epochs, second_epochs)]
    print(f"  cnn width 32, N = {n_models}, pool 5,000, test 10,000, batch 128, {flops / 1e9:.3f} GFLOP per "
          f"training image (forward + backward)")
    print(f"  projected from the per-epoch times, a 30-epoch run end to end: {projected[0] / projected[1]:.2f}x")
    print(f"cifar speedup: {first / second:.2f}")
    return first / second


def norm_rates(cfg: Config, data, n_models: int, repeats: int) -> dict[str, float]:
    """Train images/s of the engine (one wide network of ``n_models``) under every norm of
    :data:`bnprivacy.config.NORMS`, ``cfg`` otherwise; prints each with its cost relative to BN's."""
    from bnprivacy.config import NORMS

    masks = balanced_masks(n_models, len(data.y_train), seed=0)
    images = n_models * (int(masks.sum(1).min()) // cfg.batch_size) * cfg.batch_size * cfg.epochs
    flops = train_flops_per_image(cfg.replace(norm="batch"), data)
    rates = {}
    print(f"{cfg.arch} width {cfg.width}, N = {n_models}, {cfg.epochs} epochs, batch {cfg.batch_size}, "
          f"{cfg.precision}, {torch.get_num_threads()} threads; {flops / 1e9:.3f} GFLOP per training image (BN)")
    for norm in NORMS:
        run = cfg.replace(norm=norm)
        train_ensemble(run.replace(epochs=1), data, masks)  # warm-up
        seconds = min(timed(lambda: train_ensemble(run, data, masks)) for _ in range(repeats))
        rates[norm] = images / seconds
        print(f"  {norm:>6}: {seconds:6.2f} s  {rates[norm]:8,.0f} train images/s  "
              f"cost x{rates['batch'] / rates[norm]:.2f} of BN's", flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU comparison at N = 16 (default)")
    parser.add_argument("--gpu", action="store_true", help="GPU comparison at N = 32")
    parser.add_argument("--cifar", action="store_true", help="only the CIFAR-shaped end-to-end case (CPU)")
    parser.add_argument("--norms", action="store_true", help="each norm's training rate against BN's (digits cnn "
                        "and the cifar profile's airbench on CIFAR-shaped data)")
    parser.add_argument("--cifar-epochs", type=int, default=3, help="epochs of the CIFAR-shaped case")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    if args.cifar:
        cifar_case(args.cifar_epochs)
        return
    if args.norms:
        from bnprivacy.training import cpu_supports_bf16

        device = "cuda" if torch.cuda.is_available() else "cpu"
        digits = Config(arch="cnn", width=16, epochs=args.epochs, batch_size=64, device=device)
        norm_rates(digits, load_dataset(digits, device), 16, args.repeats)
        precision = "bf16" if device == "cuda" or cpu_supports_bf16() else "fp32"
        cifar = Config(arch="airbench", width=32, epochs=1, batch_size=64, device=device, precision=precision,
                       label_smoothing=0.2, augment="none")
        data = synthetic_cifar(pool=3000, test=1000).to(device)
        norm_rates(cifar, data, 8, args.repeats)
        return
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
        print("CIFAR-shaped case, end to end:")
        cifar_case(args.cifar_epochs)
        print("(speedup below: the smaller of the two norms of the digits case)")
    print(f"speedup: {speedup:.2f}")


if __name__ == "__main__":
    main()

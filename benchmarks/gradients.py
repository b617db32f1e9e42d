"""Per-sample gradient norms on the small CNN at batch 128: vectorised against the obvious loops.

    python benchmarks/gradients.py

- norm none / group / layer (no coupling): ``per_sample_grad_norms`` (vmap over samples of
  ``torch.func.grad``) against a loop of forward+backward passes over batches of one.
- norm batch (train mode couples the batch): definition (a) as one batched Jacobian
  (``method="jacobian"``) against a loop of backward passes through the shared batch graph
  (``method="loop"``), and definition (b), the leave-one-out influence, for a probe set of 16.
- vmap against Opacus's hooks (``GradSampleModule``) for the uncoupled norms, at the 8x8 digits
  shape and at the CIFAR shape (3x32x32, cnn width 16, batch 64): ``method="auto"`` takes the
  faster one per device.
The last line is ``speedup: X.XX`` (the smallest vectorised-vs-loop ratio of the uncoupled norms).
Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bnprivacy.gradients import per_sample_grad_norms  # noqa: E402
from bnprivacy.models import build_model  # noqa: E402
from timing import timed  # noqa: E402

BATCH, WIDTH, REPEATS = 128, 16, 3


def best_time(fn) -> float:
    fn()  # warm-up
    return min(timed(fn) for _ in range(REPEATS))


def loop_of_ones(model, x, y):
    params = list(model.parameters())
    return torch.stack([torch.sqrt(sum(g.pow(2).sum() for g in torch.autograd.grad(
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), params))) for i in range(len(x))])


def vmap_against_hooks(device: str) -> None:
    """torch.func's vmap against Opacus's per-layer hooks, for samples without coupling."""
    for shape, width, batch in (((1, 8, 8), WIDTH, BATCH), ((3, 32, 32), 16, 64)):
        x = torch.randn(batch, *shape, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        for norm in ("none", "group"):
            model = build_model("cnn", norm, width, shape, 10).to(device)
            vm = best_time(lambda: per_sample_grad_norms(model, x, y, "own", method="vmap"))
            hk = best_time(lambda: per_sample_grad_norms(model, x, y, "own", method="hooks"))
            print(f"  {'x'.join(map(str, shape))} width {width} batch {batch} norm={norm:5s} vmap {vm * 1e3:8.1f} ms"
                  f"   Opacus hooks {hk * 1e3:8.1f} ms   hooks/vmap time {hk / vm:5.2f}"
                  f"   -> faster here: {'vmap' if vm < hk else 'hooks'}")


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    x = torch.randn(BATCH, 1, 8, 8, device=device)
    y = torch.randint(0, 10, (BATCH,), device=device)
    print(f"cnn width {WIDTH}, batch {BATCH}, 8x8 inputs, {device}, {torch.get_num_threads()} threads, "
          f"best of {REPEATS}")
    ratios = []
    for norm in ("none", "group", "layer"):
        model = build_model("cnn", norm, WIDTH, (1, 8, 8), 10).to(device)
        fast = best_time(lambda: per_sample_grad_norms(model, x, y, "own"))
        slow = best_time(lambda: loop_of_ones(model, x, y))
        ratios.append(slow / fast)
        print(f"  norm={norm:5s} vectorised {fast * 1e3:8.1f} ms   loop of batches of one {slow * 1e3:8.1f} ms"
              f"   ratio {slow / fast:5.2f}   ({BATCH / fast:,.0f} per-sample gradients/s)")
    model = build_model("cnn", "batch", WIDTH, (1, 8, 8), 10).to(device)
    jac = best_time(lambda: per_sample_grad_norms(model, x, y, "own", method="jacobian"))
    loop = best_time(lambda: per_sample_grad_norms(model, x, y, "own", method="loop"))
    loo = best_time(lambda: per_sample_grad_norms(model, x, y, "loo", samples=range(16)))
    print(f"  norm=batch (a) one batched Jacobian {jac * 1e3:8.1f} ms   loop through the batch graph "
          f"{loop * 1e3:8.1f} ms   -> faster here: {'jacobian' if jac < loop else 'loop'}")
    print(f"  norm=batch (b) leave-one-out influence of 16 probes {loo * 1e3:8.1f} ms")
    vmap_against_hooks(device)
    print(f"speedup: {min(ratios):.2f}")


if __name__ == "__main__":
    main()

"""Time to score a LiRA-sized run: 64 models x 50,000 samples x 2 queries, every model a target.

    python benchmarks/attacks.py [--models 64 --samples 50000]

Synthetic logits (10 classes) with a planted membership signal; prints the seconds of each attack
for all targets (leave-one-model-out, IN and OUT references trimmed to equal counts), of one null
calibration draw of the book's attacks (``attacks.calibrate``: every attack scored again with
shuffled masks), and of the obvious baseline for LiRA online: refitting the trimmed Gaussians from
the other models for every target (O(N^2)) instead of reading them from prefix sums over each
side's models (O(N)). Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bnprivacy.analysis.membership import SHOWN_ATTACKS  # noqa: E402
from bnprivacy.attacks import ATTACKS, AttackInput, attack_scores, calibrate, logit_confidence  # noqa: E402
from bnprivacy.ensemble import balanced_masks  # noqa: E402


def refit_per_target(phi: torch.Tensor, masks: torch.Tensor, targets) -> torch.Tensor:
    """LiRA online the obvious way: mean and variance of each side's first k references (k =
    min(#IN, #OUT) per sample, the target left out), refitted for every target."""
    out = []
    for t in targets:
        keep = torch.ones(phi.shape[0], dtype=torch.bool)
        keep[t] = False
        sides = [masks & keep[:, None], ~masks & keep[:, None]]
        k = torch.minimum(sides[0].sum(0), sides[1].sum(0))
        stats = []
        for side in sides:
            w = (side & (side.long().cumsum(0) <= k)).double().unsqueeze(1)
            count = w.sum(0)
            mean = (w * phi).sum(0) / count
            var = (w * (phi - mean) ** 2).sum(0) / (count - 1)
            stats.append((mean, var))
        (mi, vi), (mo, vo) = stats
        x = phi[t]
        out.append((-0.5 * (torch.log(vi) + (x - mi) ** 2 / vi) + 0.5 * (torch.log(vo) + (x - mo) ** 2 / vo)).mean(0))
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=64)
    parser.add_argument("--samples", type=int, default=50000)
    parser.add_argument("--population", type=int, default=10000)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    n, p = args.models, args.samples
    masks = balanced_masks(n, p, seed=1)
    labels = torch.randint(0, 10, (p,), generator=generator)
    logits = torch.randn(n, 2, p, 10, generator=generator)
    logits[:, :, torch.arange(p), labels] += 2 + masks.float().unsqueeze(1)
    population = torch.randn(n, 2, args.population, 10, generator=generator)
    data = AttackInput(logits, labels, masks, population, torch.randint(0, 10, (args.population,), generator=generator))
    print(f"{n} models x {p} samples x 2 queries, every model a target, {torch.get_num_threads()} threads")
    total = 0.0
    for attack in ATTACKS:
        started = time.perf_counter()
        attack_scores(data, attack, range(n))
        seconds = time.perf_counter() - started
        total += seconds
        print(f"  {attack:20s} {seconds:6.2f} s")
    print(f"  every attack        {total:6.2f} s")
    started = time.perf_counter()
    calibrate(data, SHOWN_ATTACKS, range(n), draws=1)
    print(f"  one null draw of the book's attacks ({', '.join(SHOWN_ATTACKS)}) {time.perf_counter() - started:6.2f} s")
    fresh = AttackInput(logits, labels, masks)  # nothing cached: the engine from the logits
    started = time.perf_counter()
    fast = attack_scores(fresh, "lira_online", range(n))
    engine = time.perf_counter() - started
    started = time.perf_counter()
    slow = refit_per_target(logit_confidence(logits, labels), masks, range(n))
    baseline = time.perf_counter() - started
    assert torch.allclose(fast, slow, atol=1e-6)  # the same scores, not a timing assertion
    print(f"  lira_online refit per target (baseline) {baseline:6.2f} s")
    print(f"speedup: {baseline / engine:.2f}")


if __name__ == "__main__":
    main()

"""Long-tailed pools: natural outliers as rare classes.

The canaries of chapter 02 are artificial outliers. Samples of a rare class are natural ones: the
long-tail literature (Cao et al. 2019, LDAM; Cui et al. 2019) builds CIFAR-10-LT by keeping
``n_k = n_max * imbalance ** (-k / (C - 1))`` images of class ``k`` (``k = 0`` the most frequent),
with an imbalance factor (``n_0 / n_{C-1}``) of 10 to 100, and evaluates on the balanced test split.
:func:`long_tail_pool` does the same at any pool size; :func:`frequency_buckets` names every pool
sample's class-frequency bucket so that the chapters can read memorization and membership
inference on rare classes against frequent ones.

This module imports only torch and numpy, so the data loader and the analyses may both use it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Names of the class-frequency buckets, most frequent first, and the label of a canary (a canary's
# class is not a natural frequency: a mislabeled one carries a random label).
BUCKETS = ("frequent classes", "middle classes", "rare classes")
CANARY = "canary"

# What a chapter says where the pool is balanced, instead of a table of buckets that differ by chance.
BALANCED_POOL = ("The pool is balanced (`imbalance = 1.0`): its classes differ in size only by chance, so "
                 "there are no rare classes to read. Rerun with `-p imbalance 10` for a long-tailed pool (the "
                 "most frequent class ten times the rarest).")


def long_tail_sizes(num_classes: int, imbalance: float, total: int) -> list[int]:
    """Class sizes ``n_k`` proportional to ``imbalance ** (-k / (num_classes - 1))`` that sum to
    exactly ``total`` (largest remainders get the rounding), class 0 the most frequent.

    ``imbalance`` is ``n_0 / n_{C-1}`` before rounding; every class keeps at least one image.
    """
    if num_classes < 2:
        raise ValueError(f"a long tail needs at least 2 classes, got {num_classes}")
    if isinstance(imbalance, bool) or not (isinstance(imbalance, (int, float)) and math.isfinite(imbalance)
                                           and imbalance >= 1):
        raise ValueError(f"imbalance={imbalance!r} is not allowed; allowed values: a number >= 1 "
                         "(1 keeps the pool as drawn; the long-tail literature uses 10 to 100)")
    if total < num_classes:
        raise ValueError(f"a long-tailed pool of {total} images cannot hold one image of each of "
                         f"{num_classes} classes; use a train_size of at least {num_classes}")
    weights = np.array([imbalance ** (-k / (num_classes - 1)) for k in range(num_classes)])
    exact = weights / weights.sum() * total
    sizes = np.maximum(np.floor(exact).astype(int), 1)
    short = total - int(sizes.sum())
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    for k in order[:max(short, 0)]:
        sizes[k] += 1
    for k in np.argsort(-sizes, kind="stable")[:max(-short, 0)]:  # the floor of 1 overshot: the largest classes give
        sizes[k] -= 1
    return [int(s) for s in sizes]


def long_tail_pool(x: torch.Tensor, y: torch.Tensor, num_classes: int, imbalance: float, total: int, *,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random long-tailed subset of ``(x, y)``: :func:`long_tail_sizes` images of each class,
    drawn without replacement with ``seed``, in their original order.

    ``total=0`` takes the largest pool the split allows (class 0 keeps every image of the class
    with the fewest). Raises ``ValueError`` naming the class that has too few images.
    """
    counts = torch.bincount(y, minlength=num_classes).tolist()
    if total == 0:
        head = min(counts)
        sizes = [max(1, int(head * imbalance ** (-k / (num_classes - 1)))) for k in range(num_classes)]
    else:
        sizes = long_tail_sizes(num_classes, imbalance, total)
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for k, size in enumerate(sizes):
        members = torch.nonzero(y == k).flatten()
        if size > len(members):
            raise ValueError(
                f"a long-tailed pool of {total} images with imbalance {imbalance:g} needs {size} images of "
                f"class {k} but the training split has {len(members)}; use a smaller train_size")
        keep.append(members[torch.randperm(len(members), generator=generator)[:size]])
    keep = torch.cat(keep).sort().values
    return x[keep], y[keep]


def frequency_buckets(labels, kinds) -> np.ndarray:
    """Each pool sample's class-frequency bucket (:data:`BUCKETS`), from how many typical samples
    of its class the pool holds; canaries read :data:`CANARY`.

    Classes are ordered by that count (ties by class index) and split into three near-equal groups,
    the frequent third, the middle and the rare third (10 classes: 4, 3 and 3).
    """
    labels = np.asarray(labels)
    typical = np.asarray(kinds) == "typical"
    classes = np.unique(labels[typical])
    if len(classes) < len(BUCKETS):
        raise ValueError(f"frequency buckets need at least {len(BUCKETS)} classes among the typical samples, "
                         f"got {len(classes)}")
    counts = {c: int(np.sum(labels[typical] == c)) for c in classes}
    ranked = sorted(classes, key=lambda c: (-counts[c], c))
    bucket_of = {c: name for name, group in zip(BUCKETS, np.array_split(ranked, len(BUCKETS))) for c in group}
    return np.array([bucket_of[label] if is_typical else CANARY for label, is_typical in zip(labels, typical)],
                    dtype=object)


def rare_classes(run) -> np.ndarray:
    """``[pool]`` bool: the typical samples of the rare third of the classes of a run's pool
    (:func:`frequency_buckets`)."""
    return frequency_buckets(run.y_pool.cpu().numpy(), run.kinds) == BUCKETS[-1]

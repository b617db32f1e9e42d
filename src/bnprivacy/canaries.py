"""Outliers injected into the training pool (canaries), every one flagged with its kind.

Kinds (``Config.canaries = "noise:10,mislabeled:10,ood:10,atypical:10"``):

- ``noise``: uniform-noise images with uniformly random labels.
- ``mislabeled``: a real image with a label drawn uniformly from the *other* classes.
- ``ood``: out-of-distribution: a real image with inverted intensities, rotated by 90 degrees
  (180 for non-square images), with a uniformly random label.
- ``atypical``: a real image shrunk to 60% of its size and pushed into a random corner of an
  empty frame, label kept: in-distribution content, atypical form.

Source images of canaries come from the training split and are *removed* from the pool, so a
canary never has its untouched original in the pool beside it; every other training sample is kept
with its label, in its order, followed by the canaries. For the exposure of a canary
(``memorization.exposure``), ``Config.canary_references`` reference candidates of every kind are
made the same way from test-split images (or fresh noise): they are never trained on.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .config import CANARY_KINDS, parse_canaries

TYPICAL = "typical"
SOURCED_KINDS = ("mislabeled", "ood", "atypical")  # kinds made from a real image


@dataclasses.dataclass
class CanaryPool:
    """The training pool with canaries, and the never-trained reference candidates (raw [0, 1])."""

    x: torch.Tensor
    y: torch.Tensor
    kinds: list[str]
    x_ref: torch.Tensor
    y_ref: torch.Tensor
    ref_kinds: list[str]


def inject_canaries(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                    y_test: torch.Tensor, num_classes: int, spec: str, references: int,
                    seed: int) -> CanaryPool:
    """Build the pool: training images minus the canaries' sources, then the canaries.

    ``spec`` is ``Config.canaries``; ``references`` reference candidates are made per kind.
    Raises ``ValueError`` when the training split cannot give the sources (at most half of it
    may become canaries) or the test split cannot give the references.
    """
    counts = parse_canaries(spec)
    generator = torch.Generator().manual_seed(seed)
    sourced = sum(counts.get(kind, 0) for kind in SOURCED_KINDS)
    if sourced > len(y_train) // 2:
        raise ValueError(
            f"canaries={spec!r} needs {sourced} source images but the training split has "
            f"{len(y_train)}; at most half of it ({len(y_train) // 2}) can become canaries. Use "
            "fewer canaries or a larger train_size."
        )
    ref_sources = sum(references for kind in counts if kind in SOURCED_KINDS)
    if ref_sources > len(y_test):
        raise ValueError(
            f"canary_references={references} needs {ref_sources} test images for the reference "
            f"candidates of {sorted(counts)}, but the test split has {len(y_test)}; lower "
            "canary_references"
        )
    order = torch.randperm(len(y_train), generator=generator)
    sources, keep = order[:sourced], order[sourced:].sort().values
    test_order = torch.randperm(len(y_test), generator=generator)
    canary_x, canary_y, kinds, ref_x, ref_y, ref_kinds = [], [], [], [], [], []
    used = used_ref = 0
    for kind in CANARY_KINDS:
        count = counts.get(kind, 0)
        if not count:
            continue
        if kind in SOURCED_KINDS:
            idx = sources[used:used + count]
            used += count
            ref_idx = test_order[used_ref:used_ref + references]
            used_ref += references
            cx, cy = make_canaries(kind, x_train[idx], y_train[idx], num_classes, generator)
            rx, ry = make_canaries(kind, x_test[ref_idx], y_test[ref_idx], num_classes, generator)
        else:
            shape = (count, *x_train.shape[1:])
            cx, cy = make_canaries(kind, torch.empty(shape), torch.empty(count), num_classes, generator)
            rx, ry = make_canaries(kind, torch.empty(references, *x_train.shape[1:]),
                                   torch.empty(references), num_classes, generator)
        canary_x.append(cx)
        canary_y.append(cy)
        kinds += [kind] * count
        ref_x.append(rx)
        ref_y.append(ry)
        ref_kinds += [kind] * references
    return CanaryPool(
        x=torch.cat([x_train[keep], *canary_x]), y=torch.cat([y_train[keep], *canary_y]),
        kinds=[TYPICAL] * len(keep) + kinds,
        x_ref=torch.cat(ref_x) if ref_x else x_train[:0], y_ref=torch.cat(ref_y) if ref_y else y_train[:0],
        ref_kinds=ref_kinds,
    )


def make_canaries(kind: str, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Canaries of ``kind`` from source images ``x`` (raw, in [0, 1]) with labels ``y``."""
    n = len(x)
    random_labels = torch.randint(0, num_classes, (n,), generator=generator)
    if kind == "noise":
        return torch.rand(x.shape, generator=generator), random_labels
    if kind == "mislabeled":
        shift = torch.randint(1, num_classes, (n,), generator=generator)
        return x.clone(), (y.long() + shift) % num_classes
    if kind == "ood":
        square = x.shape[2] == x.shape[3]
        turned = torch.rot90(1 - x, 1, dims=(2, 3)) if square else (1 - x).flip(2, 3)
        return turned.contiguous(), random_labels
    if kind == "atypical":
        return _shrink_to_corner(x, generator), y.long().clone()
    raise ValueError(f"canary kind {kind!r} is not allowed; allowed values: {', '.join(CANARY_KINDS)}")


def _shrink_to_corner(x: torch.Tensor, generator: torch.Generator, scale: float = 0.6) -> torch.Tensor:
    n, c, h, w = x.shape
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    small = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False)
    out = torch.zeros_like(x)
    corners = torch.randint(0, 4, (n,), generator=generator)
    for i, corner in enumerate(corners.tolist()):
        top = 0 if corner < 2 else h - sh
        left = 0 if corner % 2 == 0 else w - sw
        out[i, :, top:top + sh, left:left + sw] = small[i]
    return out

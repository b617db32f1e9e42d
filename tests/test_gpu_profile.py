"""The ``gpu`` profile: it stops at once without a GPU, its whole code path (the airbench-style
network, label smoothing, flip-and-crop, the family's chapters' steps) runs here at toy size, and its
cost estimate follows from closed forms."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bnprivacy import book
from bnprivacy.__main__ import family_values
from bnprivacy.analysis import canary_steps, family_steps
from bnprivacy.cost import family_cost, flops_per_image, image_passes
from bnprivacy.models import build_model

REPO = Path(__file__).resolve().parents[1]

# The profile at toy size: everything else (network, recipe, norms, augmentation) is the profile's.
TOY = dict(width=4, train_size=80, canaries="noise:2,mislabeled:2", canary_references=3, n_models=2, seeds=1,
           budgets=[1, 2], equal_epochs=1, lr_grid=[1.0], batch_size=16, probe_points=2, probe_typical=2,
           probe_models=1, device="cpu")


def write_cifar_like_folder(root, classes=4, per_class=24):
    """A class-folder image set in the on-disk format of a CIFAR-10 JPEG copy (32x32 RGB)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", per_class // 4)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(40 * c + 60, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, "RGB").save(folder / f"{i}.jpg", quality=90)
    return root


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the profile would start training")
def test_the_gpu_profile_stops_before_any_chapter_runs_without_a_gpu(monkeypatch):
    monkeypatch.setattr(book, "execute_chapter", lambda *a, **k: pytest.fail("a chapter started"))
    with pytest.raises(ValueError, match="runs on device 'cuda', but no CUDA GPU is visible here.*-p device auto"):
        book.build_book(REPO, "gpu")
    book.check_gpu("01_training", "gpu", {"device": "auto"})  # auto runs wherever it is


def test_the_gpu_profiles_family_runs_at_toy_size_on_the_cpu(isolated_store):
    folder = write_cifar_like_folder(isolated_store / "images")
    values = family_values(REPO, "gpu", {**TOY, "dataset": f"imagefolder:{folder}"})
    p = family_steps.protocol_from({**values, "margins": {}})
    assert (p.base.arch, p.base.label_smoothing, p.base.augment, p.n_models) == ("airbench", 0.2, "flip-crop", 2)
    family = family_steps.train_family(p, progress=False)
    sides = family.sweep.sides()
    assert len(sides) == 4 and np.isfinite(sides["test_acc"]).all()
    run = family.run("batch", 2, 0)
    assert run.logits_pool.shape[:2] == (2, 2)  # 2 models, the image and its mirror
    detail = canary_steps.setting_detail(family, family.comparison("matched fit"), n_boot=5)
    assert set(detail.scores.kind) == {"typical", "noise", "mislabeled"}


def test_the_airbench_network_costs_its_closed_form():
    # Forward FLOPs of airbench at width 64 on 32x32: 2 x (in x out x 9 x pixels) per convolution
    # (stem 3->24 at 32x32; blocks 24->64 at 32x32 then 64->64 at 16x16; 64->256 at 16x16 then
    # 256->256 at 8x8; 256->256 at 8x8 then at 4x4) and 2 x 256 x 10 for the head.
    convs = [(3, 24, 1024), (24, 64, 1024), (64, 64, 256), (64, 256, 256), (256, 256, 64), (256, 256, 64),
             (256, 256, 16)]
    forward = sum(2 * a * b * 9 * pixels for a, b, pixels in convs) + 2 * 256 * 10
    p = family_steps.protocol_from({**family_values(REPO, "gpu", {"device": "cpu"}), "margins": {}})
    train, measured = flops_per_image(p.base, (3, 32, 32), 10)
    # Backward: each layer's weight gradient and input gradient (as much as its forward), except
    # the stem's input gradient, which nothing needs.
    assert measured == forward and train == 3 * forward - 2 * 3 * 24 * 9 * 1024
    model = build_model("airbench", "batch", 64, (3, 32, 32), 10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_image_passes_count_the_grid_the_runs_and_the_signals():
    p = family_steps.protocol_from({**family_values(REPO, "gpu", {"device": "cpu"}), "margins": {}})
    lr_grid, shadow, signals = image_passes(p, pool=1000, test=100, references=20)
    assert lr_grid == 2 * 3 * 2 * 800 * 10  # norms x multipliers x 2 models x (pool - 20%) x first budget
    assert shadow == 2 * 2 * 64 * 500 * (10 + 16)  # norms x seeds x models x half the pool x budgets
    assert signals == 2 * 2 * 2 * 64 * 1120 * 2  # every model queries pool, test, references twice
    cost = family_cost(p, 1000, 100, 20, (3, 32, 32), 10)
    assert cost.minutes_at(100) == pytest.approx(3 * cost.minutes_at(300))
    assert cost.total_flops == pytest.approx((lr_grid + shadow) * 880_327_680 + signals * 293_884_928)


def test_the_width_points_are_counted_at_their_own_width_and_first_budget():
    import dataclasses

    from bnprivacy.cost import width_point_passes

    ladder = family_steps.protocol_from({**family_values(REPO, "gpu", {"device": "cpu"}), "margins": {}})
    p = dataclasses.replace(ladder, widths=(0.5, 1.0, 2.0))
    passes = width_point_passes(p, pool=1000, test=100, references=20)
    runs = 2 * 2 * 64  # norms x seeds x models, at the first budget (10) only
    assert passes == {0.5: (runs * 500 * 10, runs * 1120 * 2), 2.0: (runs * 500 * 10, runs * 1120 * 2)}
    extra = family_cost(p, 1000, 100, 20, (3, 32, 32), 10).total_flops - \
        family_cost(ladder, 1000, 100, 20, (3, 32, 32), 10).total_flops
    half, double = (flops_per_image(p.base.replace(norm="batch", width=w), (3, 32, 32), 10) for w in (32, 128))
    assert extra == pytest.approx(sum(runs * 500 * 10 * t + runs * 1120 * 2 * f for t, f in (half, double)))

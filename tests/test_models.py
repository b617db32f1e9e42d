import pytest
import torch
from torch import nn

from bnprivacy.config import ARCHS, NORMS
from bnprivacy.models import BasicBlock, build_model, count_parameters, group_count, norm_layers


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_every_model_maps_images_to_logits(arch, norm, shape):
    width = 8 if arch != "mlp" else 32
    model = build_model(arch, norm, width, shape, num_classes=7)
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_norm_switch_really_adds_and_removes_layers(arch):
    kinds = {"batch": nn.modules.batchnorm._BatchNorm, "group": nn.GroupNorm}
    counts = {}
    for norm in NORMS:
        layers = norm_layers(build_model(arch, norm, 8, (3, 32, 32), 10))
        counts[norm] = len(layers)
        if norm in kinds:
            assert layers and all(isinstance(m, kinds[norm]) for m in layers)
        if norm == "layer":
            assert all(isinstance(m, nn.LayerNorm) or m.num_groups == 1 for m in layers)
    assert counts["none"] == 0
    assert counts["batch"] == counts["group"] == counts["layer"] > 0


def test_group_norm_groups_have_at_least_four_channels():
    assert group_count(16) == 4 and group_count(64) == 16 and group_count(256) == 32
    assert group_count(6) == 1 and group_count(12) == 3


def test_unnormalised_resnet_starts_every_block_as_identity():
    model = build_model("resnet18", "none", 8, (3, 16, 16), 10)
    gains = [m.skip_gain for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(gains) == 8 and all(g.item() == 0 for g in gains)
    assert all(m.skip_gain is None for m in build_model("resnet18", "batch", 8, (3, 16, 16), 10).modules()
               if isinstance(m, BasicBlock))


def test_convolutions_get_biases_only_without_a_norm():
    convs = lambda norm: [m for m in build_model("cnn", norm, 8, (1, 8, 8), 10).modules()  # noqa: E731
                          if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs("none"))
    assert all(c.bias is None for c in convs("batch"))


def test_width_scales_parameters_and_zero_means_default():
    small = count_parameters(build_model("cnn", "batch", 8, (1, 8, 8), 10))
    large = count_parameters(build_model("cnn", "batch", 16, (1, 8, 8), 10))
    assert large > 3 * small
    assert count_parameters(build_model("cnn", "batch", 0, (1, 8, 8), 10)) == \
        count_parameters(build_model("cnn", "batch", 32, (1, 8, 8), 10))


def test_unknown_arch_or_norm_is_explained():
    with pytest.raises(ValueError, match="allowed values: mlp, cnn"):
        build_model("lenet", "batch", 8, (1, 8, 8), 10)
    with pytest.raises(ValueError, match="allowed values: batch, group, layer, none"):
        build_model("cnn", "rms", 8, (1, 8, 8), 10)

import pytest
import torch
from torch import nn

from bnprivacy.config import ARCHS, NORMS
from bnprivacy.models import (ACTIVATION_GAIN, BasicBlock, StandardizedConv2d, StandardizedLinear, build_model,
                              classifier, count_parameters, group_count, norm_layers, standardize_weight)


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
    assert counts["none"] == counts["nf"] == 0
    assert counts["batch"] == counts["group"] == counts["layer"] == counts["gn_ws"] > 0


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
    with pytest.raises(ValueError, match="allowed values: batch, group, layer, gn_ws, nf, none"):
        build_model("cnn", "rms", 8, (1, 8, 8), 10)


BATCH_INDEPENDENT = [n for n in NORMS if n != "batch"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", NORMS)
def test_only_batchnorm_lets_the_rest_of_the_batch_change_a_samples_output(arch, norm):
    """The coupling the paper blames: in train mode a sample's output depends on the other samples
    of its batch with BN, and with no other norm (the references' defining property)."""
    torch.manual_seed(0)
    model = build_model(arch, norm, 8 if arch != "mlp" else 32, (3, 16, 16), 5).train()
    x = torch.randn(6, 3, 16, 16)
    others = torch.cat([x[:1], 3 * torch.randn(5, 3, 16, 16) + 1])
    with torch.no_grad():
        change = (model(x)[0] - model(others)[0]).abs().max().item()
    if norm == "batch":
        assert change > 1e-3
    else:
        assert change < 1e-5, f"{norm}: sample 0's output moved by {change} when its batch changed"


@pytest.mark.parametrize("activation, function", [("relu", torch.relu), ("gelu", torch.nn.functional.gelu)])
def test_nonlinearity_gains_give_unit_variance_on_a_standard_normal(activation, function):
    # Var f(z) for z ~ N(0, 1) by quadrature on a fine grid: the gain is 1 / std (Brock et al. 2021a)
    z = torch.linspace(-12, 12, 400_001, dtype=torch.float64)
    density = torch.exp(-z ** 2 / 2) / (2 * torch.pi) ** 0.5
    dz = z[1] - z[0]
    values = function(z)
    mean = (values * density).sum() * dz
    variance = ((values - mean) ** 2 * density).sum() * dz
    assert ACTIVATION_GAIN[activation] == pytest.approx(1 / variance.sqrt().item(), rel=1e-6)


def test_weight_standardization_centres_and_scales_each_output_filter():
    weight = torch.randn(6, 4, 3, 3) * 5 + 2
    plain = standardize_weight(weight, scaled=False, gain=None, input_gain=1.0).flatten(1)
    assert torch.allclose(plain.mean(1), torch.zeros(6), atol=1e-5)
    assert torch.allclose(plain.var(1, unbiased=False), torch.ones(6), atol=1e-4)
    gain = torch.linspace(0.5, 2, 6)
    scaled = standardize_weight(weight, scaled=True, gain=gain, input_gain=1.7).flatten(1)
    # scaled WS: sum of squares per filter = (gain * gamma)^2, so unit-variance inputs keep variance gamma^2 gain^2
    assert torch.allclose((scaled ** 2).sum(1), (gain * 1.7) ** 2, rtol=1e-4)


def conv_output_variances(model: torch.nn.Module, x: torch.Tensor) -> list[float]:
    variances = []
    for conv in (m for m in model.modules() if isinstance(m, StandardizedConv2d)):
        conv.register_forward_hook(lambda module, inputs, out: variances.append(out.var().item()))
    with torch.no_grad():
        model(x)
    return variances


def test_scaled_ws_keeps_the_variance_through_a_deep_plain_network():
    """Signal propagation (Brock et al. 2021a): under nf the eight convolutions of VGG-11 start
    with outputs of about unit variance (max-pools raise it a little); without the nonlinearity
    gain it shrinks at every ReLU, to about 0.5 ** 7 by the last."""
    torch.manual_seed(0)
    x = torch.randn(64, 3, 32, 32)
    variances = conv_output_variances(build_model("vgg11", "nf", 32, (3, 32, 32), 10).eval(), x)
    assert len(variances) == 8 and all(0.5 < v < 4 for v in variances), variances
    ungained = build_model("vgg11", "nf", 32, (3, 32, 32), 10).eval()
    for conv in ungained.modules():
        if isinstance(conv, StandardizedConv2d):
            conv.input_gain = 1.0
    assert conv_output_variances(ungained, x)[-1] < 0.1 * variances[-1]


def test_normalizer_free_layers_have_biases_gains_and_zero_residual_gains():
    model = build_model("resnet18", "nf", 8, (3, 16, 16), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(isinstance(c, StandardizedConv2d) and c.scaled and c.bias is not None for c in convs)
    assert all(c.gain is not None and (c.gain == 1).all() for c in convs)
    assert [m.skip_gain.item() for m in model.modules() if isinstance(m, BasicBlock)] == [0.0] * 8
    assert convs[0].input_gain == 1.0 and convs[1].input_gain == ACTIVATION_GAIN["relu"]
    air = [m for m in build_model("airbench", "nf", 16, (3, 16, 16), 10).modules() if isinstance(m, StandardizedConv2d)]
    assert air[0].input_gain == 1.0 and {c.input_gain for c in air[1:]} == {ACTIVATION_GAIN["gelu"]}
    mlp = build_model("mlp", "nf", 16, (1, 8, 8), 10)
    assert sum(isinstance(m, StandardizedLinear) for m in mlp.modules()) == 2
    assert not isinstance(classifier(mlp), StandardizedLinear)


def test_gn_ws_standardizes_every_convolution_behind_a_groupnorm():
    model = build_model("cnn", "gn_ws", 8, (1, 8, 8), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(isinstance(c, StandardizedConv2d) and not c.scaled and c.bias is None and c.gain is None
               for c in convs)
    assert len(norm_layers(model)) == len(convs)

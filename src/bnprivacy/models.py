"""Architectures with one ``norm`` switch: ``batch``, ``group``, ``layer`` or ``none``.

``build_model(arch, norm, width, input_shape, num_classes)`` gives an ``nn.Module``:

- ``mlp``: two hidden layers of ``width`` units.
- ``cnn``: four 3x3 convolutions (width, width, 2*width, 2*width), two max-pools, global pooling;
  small enough for digits and MNIST on a CPU.
- ``resnet18``: the CIFAR variant (3x3 stem, no max-pool), basic blocks [2, 2, 2, 2] with widths
  (w, 2w, 4w, 8w).
- ``vgg11``: configuration A of Simonyan & Zisserman with widths (w, 2w, 4w, 8w), max-pools dropped
  once the feature map is 1x1 (so it also runs on 8x8 digits), global pooling and one linear layer.
- ``densenet``: a small DenseNet-BC (three dense blocks of four bottleneck layers, growth ``width``,
  compression 0.5), pre-activation order norm-ReLU-conv.

Norms: ``batch`` is BatchNorm; ``group`` is GroupNorm with groups of at least four channels (at most
32 groups); ``layer`` is GroupNorm with one group, i.e. LayerNorm over (C, H, W) (``nn.LayerNorm``
over features in the MLP); ``none`` is the identity.

Initialisation: every convolution and linear layer is Kaiming-normal (fan-in, ReLU gain), which
keeps the activations' variance roughly constant through depth without any normalisation. For
``norm='none'`` the layers also get biases (the norm's affine shift is gone), and the residual
branches of ``resnet18`` are multiplied by a learnable scalar initialised at zero (SkipInit, De &
Smith 2020): without BN the sum of residual branches makes the activations' variance grow with
depth and the un-normalised ResNet diverges at usual learning rates; SkipInit starts every block as
the identity, which is what BN does implicitly, and the network trains.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ARCHS, NORMS

DEFAULT_WIDTH = {"mlp": 256, "cnn": 32, "resnet18": 64, "vgg11": 64, "densenet": 12}


def build_model(arch: str, norm: str, width: int, input_shape: tuple[int, int, int],
                num_classes: int) -> nn.Module:
    """Build ``arch`` with normalisation ``norm`` for inputs of ``input_shape`` = (C, H, W).

    ``width=0`` takes ``DEFAULT_WIDTH[arch]``. Raises ``ValueError`` for an unknown arch or norm.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is not allowed; allowed values: {', '.join(ARCHS)}")
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not allowed; allowed values: {', '.join(NORMS)}")
    width = width or DEFAULT_WIDTH[arch]
    channels, height, _ = input_shape
    builders = {"mlp": MLP, "cnn": SmallCNN, "resnet18": ResNet18, "vgg11": VGG11,
                "densenet": DenseNet}
    if arch == "mlp":
        model = MLP(int(torch.tensor(input_shape).prod()), width, num_classes, norm)
    else:
        model = builders[arch](channels, height, width, num_classes, norm)
    _kaiming_init(model)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def norm_layers(model: nn.Module) -> list[nn.Module]:
    """The normalisation layers in ``model`` (BatchNorm, GroupNorm, LayerNorm)."""
    kinds = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    return [m for m in model.modules() if isinstance(m, kinds)]


def group_count(channels: int) -> int:
    """GroupNorm groups for ``channels``: the most groups (<= 32) of at least four channels each."""
    for groups in range(min(32, channels // 4), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def conv_norm(channels: int, norm: str) -> nn.Module:
    """The normalisation layer after a convolution with ``channels`` outputs."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def _features_norm(features: int, norm: str) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm1d(features)
    if norm == "group":
        return nn.GroupNorm(group_count(features), features)
    if norm == "layer":
        return nn.LayerNorm(features)
    return nn.Identity()


def _conv(c_in: int, c_out: int, norm: str, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    # A bias before a norm layer is cancelled by its mean subtraction; without a norm it is needed.
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=norm == "none")


def _conv_block(c_in: int, c_out: int, norm: str) -> list[nn.Module]:
    return [_conv(c_in, c_out, norm), conv_norm(c_out, norm), nn.ReLU(inplace=True)]


def _kaiming_init(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class MLP(nn.Sequential):
    def __init__(self, in_features: int, width: int, num_classes: int, norm: str):
        bias = norm == "none"
        super().__init__(
            nn.Flatten(),
            nn.Linear(in_features, width, bias=bias), _features_norm(width, norm), nn.ReLU(inplace=True),
            nn.Linear(width, width, bias=bias), _features_norm(width, norm), nn.ReLU(inplace=True),
            nn.Linear(width, num_classes),
        )


class SmallCNN(nn.Sequential):
    def __init__(self, channels: int, height: int, width: int, num_classes: int, norm: str):
        layers = _conv_block(channels, width, norm) + _conv_block(width, width, norm)
        size = height
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        layers += _conv_block(width, 2 * width, norm) + _conv_block(2 * width, 2 * width, norm)
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes)]
        super().__init__(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block; with ``norm='none'`` the residual branch is scaled by a zero-init gain."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.branch = nn.Sequential(
            _conv(c_in, c_out, norm, stride=stride), conv_norm(c_out, norm), nn.ReLU(inplace=True),
            _conv(c_out, c_out, norm), conv_norm(c_out, norm),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(_conv(c_in, c_out, norm, kernel=1, stride=stride),
                                          conv_norm(c_out, norm))
        self.skip_gain = nn.Parameter(torch.zeros(())) if norm == "none" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.branch(x)
        if self.skip_gain is not None:
            branch = branch * self.skip_gain
        return torch.relu(branch + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, channels: int, height: int, width: int, num_classes: int, norm: str):
        super().__init__()
        self.stem = nn.Sequential(*_conv_block(channels, width, norm))
        blocks, c_in = [], width
        for stage, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if stage == 0 else 2
            blocks += [BasicBlock(c_in, c_out, stride, norm), BasicBlock(c_out, c_out, 1, norm)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class VGG11(nn.Sequential):
    def __init__(self, channels: int, height: int, width: int, num_classes: int, norm: str):
        plan = [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"]
        layers, c_in, size = [], channels, height
        for item in plan:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            layers += _conv_block(c_in, item * width, norm)
            c_in = item * width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
        super().__init__(*layers)


class DenseLayer(nn.Module):
    """Bottleneck dense layer: norm-ReLU-conv1x1(4k)-norm-ReLU-conv3x3(k), output concatenated."""

    def __init__(self, c_in: int, growth: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(
            conv_norm(c_in, norm), nn.ReLU(), _conv(c_in, 4 * growth, norm, kernel=1),
            conv_norm(4 * growth, norm), nn.ReLU(inplace=True), _conv(4 * growth, growth, norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class DenseNet(nn.Sequential):
    def __init__(self, channels: int, height: int, width: int, num_classes: int, norm: str,
                 layers_per_block: int = 4):
        growth = width
        c = 2 * growth
        layers: list[nn.Module] = [_conv(channels, c, norm)]
        size = height
        for block in range(3):
            for _ in range(layers_per_block):
                layers.append(DenseLayer(c, growth, norm))
                c += growth
            if block < 2:
                c_out = c // 2
                layers += [conv_norm(c, norm), nn.ReLU(), _conv(c, c_out, norm, kernel=1)]
                if size >= 2:
                    layers.append(nn.AvgPool2d(2))
                    size //= 2
                c = c_out
        layers += [conv_norm(c, norm), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                   nn.Linear(c, num_classes)]
        super().__init__(*layers)

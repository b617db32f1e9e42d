"""Architectures with one ``norm`` switch: ``batch``, ``group``, ``layer``, ``gn_ws``, ``nf`` or ``none``.

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
- ``airbench``: the airbench94-style CIFAR network (three conv-pool-norm blocks of widths w, 4w, 4w;
  see :class:`Airbench`), the ``gpu`` profile's network: fast enough for 64 models per run.

Norms: ``batch`` is BatchNorm; ``group`` is GroupNorm with groups of at least four channels (at most
32 groups); ``layer`` is GroupNorm with one group, i.e. LayerNorm over (C, H, W) (``nn.LayerNorm``
over features in the MLP); ``none`` is the identity. Two references that train about as well as BN
without reading other samples of the batch:

- ``gn_ws``: ``group`` with Weight Standardization of every convolution and hidden linear layer
  (Qiao et al. 2019): each output filter's weights are centred and scaled to unit variance in the
  forward pass, which smooths the loss landscape as BN does, per sample.
- ``nf``: normalizer-free (Brock et al. 2021, NF-ResNets/NFNets): no norm layer; every convolution
  and hidden linear layer uses Scaled Weight Standardization, ``gain * gamma * (W - mean) /
  (std * sqrt(fan_in))``, with a learnable gain per output channel and ``gamma`` the gain of the
  nonlinearity before it (:data:`ACTIVATION_GAIN`; 1 on the input image), so each layer maps
  unit-variance inputs to unit-variance outputs at initialisation; layers have biases; residual
  branches of ``resnet18`` get the zero-initialised scalar gain of SkipInit (as ``none`` does).
  Training clips gradients with Adaptive Gradient Clipping (:func:`adaptive_clip_`, threshold
  ``Config.agc_clip``), which NFNets need in place of BN's implicit step-size control. Left out:
  NFNet's 1/beta input scaling of residual branches (with SkipInit's zero gains the stream's
  variance does not grow at initialisation) and its stochastic-depth and dropout regularisers.

Ensembles: ``n_models=N`` builds N independent copies as one "wide" network. Every layer keeps
the N models' channels side by side, model-major (channel ``k*C + c`` is channel c of model k):
convolutions are grouped (``groups=N``), BatchNorm over N*C channels is exactly N BatchNorms (its
statistics are per channel), GroupNorm with N times the groups is exactly N GroupNorms, linear
layers are batched matrix products, and pools and ReLUs act per channel anyway. Every parameter and
buffer is then N per-model tensors stacked along dimension 0, so :func:`split_state` and
:func:`merge_states` convert between one wide state dict and N ordinary ones, and ``n_models=1``
is the ordinary model. Inputs are ``[B, N*C, H, W]`` (see :func:`ensemble_input`), outputs
``[B, N*K]`` (see :func:`ensemble_output`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ARCHS, NORMS

# 1 / std(f(z)) for z ~ N(0, 1): the factor that gives a nonlinearity's output unit variance
# (Brock et al. 2021a). ReLU's has a closed form, sqrt(2 / (1 - 1/pi)); GELU's is the numerical
# integral for torch's exact (erf) GELU, 1.70093: the 1.70150 of NFNet's code is for the tanh
# approximation JAX uses by default. Tests check both by quadrature.
ACTIVATION_GAIN = {"relu": math.sqrt(2 / (1 - 1 / math.pi)), "gelu": 1.700926243370351, "input": 1.0}
STANDARDIZED_NORMS = ("gn_ws", "nf")  # norms whose convolutions standardize their weights
SKIPINIT_NORMS = ("none", "nf")  # norms with no per-layer normalisation: residual gains start at 0
WS_EPS = 1e-5  # Qiao et al.'s epsilon; scaled WS adds it to var * fan_in (NFNets use 1e-4 there)
DEFAULT_WIDTH = {"mlp": 256, "cnn": 32, "resnet18": 64, "vgg11": 64, "densenet": 12, "airbench": 64}


def build_model(arch: str, norm: str, width: int, input_shape: tuple[int, int, int],
                num_classes: int, n_models: int = 1) -> nn.Module:
    """Build ``arch`` with normalisation ``norm`` for inputs of ``input_shape`` = (C, H, W).

    ``width=0`` takes ``DEFAULT_WIDTH[arch]``; ``n_models > 1`` builds that many independent
    models as one wide network (module docstring). Raises ``ValueError`` for an unknown arch or
    norm.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is not allowed; allowed values: {', '.join(ARCHS)}")
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not allowed; allowed values: {', '.join(NORMS)}")
    width = width or DEFAULT_WIDTH[arch]
    channels, height, _ = input_shape
    builders = {"mlp": MLP, "cnn": SmallCNN, "resnet18": ResNet18, "vgg11": VGG11,
                "densenet": DenseNet, "airbench": Airbench}
    if arch == "mlp":
        model = MLP(int(torch.tensor(input_shape).prod()), width, num_classes, norm, n_models)
    else:
        model = builders[arch](channels, height, width, num_classes, norm, n_models)
    _kaiming_init(model)
    return model


def ensemble_input(x: torch.Tensor) -> torch.Tensor:
    """``[N, B, C, H, W]`` (model k's batch at index k) -> the wide input ``[B, N*C, H, W]``."""
    n, b, c, h, w = x.shape
    return x.permute(1, 0, 2, 3, 4).reshape(b, n * c, h, w)


def shared_input(x: torch.Tensor, n_models: int) -> torch.Tensor:
    """One batch ``[B, C, H, W]`` shown to all N models: ``[B, N*C, H, W]``."""
    return x.repeat(1, n_models, 1, 1) if n_models > 1 else x


def ensemble_output(logits: torch.Tensor, n_models: int) -> torch.Tensor:
    """The wide output ``[B, N*K]`` -> ``[N, B, K]``."""
    b = logits.shape[0]
    return logits.view(b, n_models, -1).transpose(0, 1)


def split_state(state: dict[str, torch.Tensor], n_models: int) -> list[dict[str, torch.Tensor]]:
    """A wide model's state dict -> the N per-model state dicts (scalars are shared)."""
    out = [{} for _ in range(n_models)]
    for name, tensor in state.items():
        parts = [tensor] * n_models if tensor.ndim == 0 else tensor.chunk(n_models, dim=0)
        for k, part in enumerate(parts):
            out[k][name] = part
    return out


def merge_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """N per-model state dicts -> the state dict of the wide model of N models."""
    return {name: states[0][name] if states[0][name].ndim == 0
            else torch.cat([s[name] for s in states], dim=0) for name in states[0]}


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


def conv_norm(channels: int, norm: str, n: int = 1) -> nn.Module:
    """The normalisation layer after a convolution with ``channels`` outputs (per model)."""
    if norm == "batch":
        return nn.BatchNorm2d(n * channels)
    if norm in ("group", "gn_ws"):
        return nn.GroupNorm(n * group_count(channels), n * channels)
    if norm == "layer":
        return nn.GroupNorm(n, n * channels)
    return nn.Identity()


def _features_norm(features: int, norm: str, n: int = 1) -> nn.Module:
    # LayerNorm over a model's features is GroupNorm with one group per model (same arithmetic).
    if norm == "batch":
        return nn.BatchNorm1d(n * features)
    if norm in ("group", "gn_ws"):
        return nn.GroupNorm(n * group_count(features), n * features)
    if norm == "layer":
        return nn.GroupNorm(n, n * features)
    return nn.Identity()


def has_bias(norm: str) -> bool:
    """Whether layers get biases: a bias before a norm layer is cancelled by its mean subtraction;
    without one (``none``, ``nf``) it is needed."""
    return norm in SKIPINIT_NORMS


def _conv(c_in: int, c_out: int, norm: str, kernel: int = 3, stride: int = 1, n: int = 1,
          after: str = "relu") -> nn.Conv2d:
    """A convolution for ``norm``; ``after`` names what its input comes out of (``relu``, ``gelu``
    or ``input`` for the image), which sets the nonlinearity gain of scaled WS."""
    options = dict(stride=stride, padding=kernel // 2, bias=has_bias(norm), groups=n)
    if norm in STANDARDIZED_NORMS:
        return StandardizedConv2d(n * c_in, n * c_out, kernel, scaled=norm == "nf",
                                  input_gain=ACTIVATION_GAIN[after], **options)
    return nn.Conv2d(n * c_in, n * c_out, kernel, **options)


def _hidden_linear(n: int, in_features: int, out_features: int, norm: str, after: str = "relu") -> nn.Module:
    """A hidden linear layer of the MLP for ``norm`` (standardized like a convolution under
    ``gn_ws`` and ``nf``)."""
    if norm in STANDARDIZED_NORMS:
        return StandardizedLinear(n, in_features, out_features, scaled=norm == "nf",
                                  input_gain=ACTIVATION_GAIN[after], bias=has_bias(norm))
    return EnsembleLinear(n, in_features, out_features, bias=has_bias(norm))


def _conv_block(c_in: int, c_out: int, norm: str, n: int = 1, after: str = "relu") -> list[nn.Module]:
    return [_conv(c_in, c_out, norm, n=n, after=after), conv_norm(c_out, norm, n), nn.ReLU(inplace=True)]


def standardize_weight(weight: torch.Tensor, *, scaled: bool, gain: torch.Tensor | None,
                       input_gain: float) -> torch.Tensor:
    """Weight Standardization of ``weight`` (``[out, ...]``), each output unit (row) on its own.

    ``scaled=False`` (Qiao et al.): ``(W - mean) / sqrt(var + eps)``. ``scaled=True`` (Brock et al.'s
    scaled WS): ``gain * input_gain * (W - mean) / sqrt(var * fan_in + eps)``, so a unit-variance
    input gives a unit-variance output. Rows are per model in a wide layer, so the wide layer's
    standardization is each model's own.
    """
    flat = weight.flatten(1)
    mean = flat.mean(1, keepdim=True)
    var = flat.var(1, unbiased=False, keepdim=True)
    if scaled:
        flat = (flat - mean) * torch.rsqrt(var * flat.shape[1] + WS_EPS) * input_gain
        if gain is not None:
            flat = flat * gain.view(-1, 1)
    else:
        flat = (flat - mean) * torch.rsqrt(var + WS_EPS)
    return flat.view_as(weight)


class StandardizedConv2d(nn.Conv2d):
    """A convolution whose weights are standardized in every forward pass (:func:`standardize_weight`);
    with ``scaled=True`` it also has a learnable gain per output channel, initialised at 1."""

    def __init__(self, *args, scaled: bool, input_gain: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.scaled, self.input_gain = scaled, input_gain
        self.gain = nn.Parameter(torch.ones(self.out_channels)) if scaled else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = standardize_weight(self.weight, scaled=self.scaled, gain=self.gain, input_gain=self.input_gain)
        return self._conv_forward(x, weight, self.bias)


class EnsembleLinear(nn.Module):
    """N independent linear layers on ``[B, N*in]`` -> ``[B, N*out]``; ``nn.Linear`` when N = 1.

    The weight is ``[N*out, in]``: model k's ``[out, in]`` block at rows ``k*out ... (k+1)*out``.
    """

    def __init__(self, n: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.n, self.in_features, self.out_features = n, in_features, out_features
        self.weight = nn.Parameter(torch.empty(n * out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(n * out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x, self.weight)

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``x`` through the N models' linear maps of wide ``weight`` ``[N*out, in]``, plus the bias."""
        if self.n == 1:
            return F.linear(x, weight, self.bias)
        b = x.shape[0]
        weight = weight.view(self.n, self.out_features, self.in_features)
        out = torch.bmm(x.view(b, self.n, self.in_features).transpose(0, 1), weight.transpose(1, 2))
        out = out.transpose(0, 1).reshape(b, self.n * self.out_features)
        return out if self.bias is None else out + self.bias


class StandardizedLinear(EnsembleLinear):
    """:class:`EnsembleLinear` with standardized weights (:func:`standardize_weight`), the MLP's
    counterpart of :class:`StandardizedConv2d`."""

    def __init__(self, n: int, in_features: int, out_features: int, *, scaled: bool, input_gain: float = 1.0,
                 bias: bool = True):
        super().__init__(n, in_features, out_features, bias=bias)
        self.scaled, self.input_gain = scaled, input_gain
        self.gain = nn.Parameter(torch.ones(n * out_features)) if scaled else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = standardize_weight(self.weight, scaled=self.scaled, gain=self.gain, input_gain=self.input_gain)
        return self.linear(x, weight)


def classifier(model: nn.Module) -> nn.Module:
    """The last linear layer of ``model`` (its classifier), which Adaptive Gradient Clipping leaves
    unclipped (Brock et al. 2021)."""
    return [m for m in model.modules() if isinstance(m, EnsembleLinear)][-1]


def _kaiming_init(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, EnsembleLinear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class MLP(nn.Sequential):
    def __init__(self, in_features: int, width: int, num_classes: int, norm: str, n: int = 1):
        super().__init__(
            nn.Flatten(),
            _hidden_linear(n, in_features, width, norm, after="input"), _features_norm(width, norm, n),
            nn.ReLU(inplace=True),
            _hidden_linear(n, width, width, norm), _features_norm(width, norm, n),
            nn.ReLU(inplace=True),
            EnsembleLinear(n, width, num_classes),
        )


class SmallCNN(nn.Sequential):
    def __init__(self, channels: int, height: int, width: int, num_classes: int, norm: str, n: int = 1):
        layers = _conv_block(channels, width, norm, n, after="input") + _conv_block(width, width, norm, n)
        size = height
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        layers += _conv_block(width, 2 * width, norm, n) + _conv_block(2 * width, 2 * width, norm, n)
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), EnsembleLinear(n, 2 * width, num_classes)]
        super().__init__(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block; with ``norm`` in ``none``/``nf`` the residual branch is scaled by a zero-init gain."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, n: int = 1):
        super().__init__()
        self.n, self.c_out = n, c_out
        self.branch = nn.Sequential(
            _conv(c_in, c_out, norm, stride=stride, n=n), conv_norm(c_out, norm, n), nn.ReLU(inplace=True),
            _conv(c_out, c_out, norm, n=n), conv_norm(c_out, norm, n),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(_conv(c_in, c_out, norm, kernel=1, stride=stride, n=n),
                                          conv_norm(c_out, norm, n))
        self.skip_gain = nn.Parameter(torch.zeros(n)) if norm in SKIPINIT_NORMS else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.branch(x)
        if self.skip_gain is not None:
            branch = branch * self.skip_gain.repeat_interleave(self.c_out).view(1, -1, 1, 1)
        return torch.relu(branch + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, channels: int, height: int, width: int, num_classes: int, norm: str, n: int = 1):
        super().__init__()
        self.stem = nn.Sequential(*_conv_block(channels, width, norm, n, after="input"))
        blocks, c_in = [], width
        for stage, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if stage == 0 else 2
            blocks += [BasicBlock(c_in, c_out, stride, norm, n), BasicBlock(c_out, c_out, 1, norm, n)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), EnsembleLinear(n, c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class VGG11(nn.Sequential):
    def __init__(self, channels: int, height: int, width: int, num_classes: int, norm: str, n: int = 1):
        plan = [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"]
        layers, c_in, size = [], channels, height
        for item in plan:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            layers += _conv_block(c_in, item * width, norm, n, after="relu" if layers else "input")
            c_in = item * width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), EnsembleLinear(n, c_in, num_classes)]
        super().__init__(*layers)


class DenseLayer(nn.Module):
    """Bottleneck dense layer: norm-ReLU-conv1x1(4k)-norm-ReLU-conv3x3(k), output concatenated."""

    def __init__(self, c_in: int, growth: int, norm: str, n: int = 1):
        super().__init__()
        self.n = n
        self.body = nn.Sequential(
            conv_norm(c_in, norm, n), nn.ReLU(), _conv(c_in, 4 * growth, norm, kernel=1, n=n),
            conv_norm(4 * growth, norm, n), nn.ReLU(inplace=True), _conv(4 * growth, growth, norm, n=n),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.body(x)
        if self.n == 1:
            return torch.cat([x, new], dim=1)
        # Concatenate within each model's block of channels, keeping the model-major layout.
        b, _, h, w = x.shape
        joined = torch.cat([x.view(b, self.n, -1, h, w), new.view(b, self.n, -1, h, w)], dim=2)
        return joined.view(b, -1, h, w)


class DenseNet(nn.Sequential):
    def __init__(self, channels: int, height: int, width: int, num_classes: int, norm: str, n: int = 1,
                 layers_per_block: int = 4):
        growth = width
        c = 2 * growth
        layers: list[nn.Module] = [_conv(channels, c, norm, n=n, after="input")]
        size = height
        for block in range(3):
            for _ in range(layers_per_block):
                layers.append(DenseLayer(c, growth, norm, n))
                c += growth
            if block < 2:
                c_out = c // 2
                layers += [conv_norm(c, norm, n), nn.ReLU(), _conv(c, c_out, norm, kernel=1, n=n)]
                if size >= 2:
                    layers.append(nn.AvgPool2d(2))
                    size //= 2
                c = c_out
        layers += [conv_norm(c, norm, n), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                   EnsembleLinear(n, c, num_classes)]
        super().__init__(*layers)


class Scale(nn.Module):
    """Multiplies its input by a fixed number (airbench's 1/9 on the logits)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class Airbench(nn.Sequential):
    """The airbench-style CIFAR network (Jordan 2024, airbench94): a 3x3 stem of ``3w/8`` channels,
    three blocks conv-maxpool-norm-GELU-conv-norm-GELU of widths (w, 4w, 4w), global max-pool, a
    linear head without bias and logits scaled by 1/9. At w = 64 (airbench94's widths 64, 256, 256)
    one 32x32 image costs 0.29 GFLOP forward, 0.88 GFLOP forward and backward. airbench's whitening initialisation, lookahead,
    frozen BN gains and test-time flips are left out: the network must train with every norm on the
    one recipe of :mod:`bnprivacy.training`."""

    def __init__(self, channels: int, height: int, width: int, num_classes: int, norm: str, n: int = 1):
        stem = max(4, 3 * width // 8)
        layers: list[nn.Module] = [_conv(channels, stem, norm, n=n, after="input"), conv_norm(stem, norm, n),
                                   nn.GELU()]
        c_in, size = stem, height
        for c_out in (width, 4 * width, 4 * width):
            layers.append(_conv(c_in, c_out, norm, n=n, after="gelu"))
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            layers += [conv_norm(c_out, norm, n), nn.GELU(), _conv(c_out, c_out, norm, n=n, after="gelu"),
                       conv_norm(c_out, norm, n), nn.GELU()]
            c_in = c_out
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), EnsembleLinear(n, c_in, num_classes, bias=False),
                   Scale(1 / 9)]
        super().__init__(*layers)

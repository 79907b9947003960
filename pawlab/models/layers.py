"""The layer vocabulary of declarative networks, each registered by name.

A layer description is a dict such as ``{"type": "conv", "kernel": 5, "filters": 20}``.
Each builder takes the incoming shape, ``(C, H, W)`` for images or ``(F,)`` for features,
and its parameters, and returns a module (or None for a marker layer) and the outgoing shape.
A builder raises ``LayerShapeError`` when the shapes do not fit; `pawlab.models.build`
adds the layer's position and description to the message.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pawlab.registry import Registry

Shape = tuple[int, ...]


class LayerShapeError(ValueError):
    """Raised by a builder; the message says what does not fit."""


@dataclass(frozen=True)
class BuildContext:
    num_classes: int
    is_last_linear: bool  # the last linear layer of the network defaults to num_classes units
    pretrained: bool = True  # False: a model file supplies every weight, pretrained ones included


Builder = Callable[..., tuple[nn.Module | None, Shape]]
LAYERS: Registry[Builder] = Registry("layer")


def fmt_shape(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


def _image(shape: Shape, what: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise LayerShapeError(f"{what} needs an image input (C, H, W), got features ({fmt_shape(shape)})")
    return shape[0], shape[1], shape[2]


def _int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LayerShapeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


@LAYERS.register("input")
def input_layer(
    shape: Shape,
    ctx: BuildContext,
    *,
    size: int | list[int] | None = None,
    channels: int = 3,
    features: int | None = None,
) -> tuple[None, Shape]:
    """An image input, ``size`` N or [H, W] with ``channels`` 3 (RGB) or 1 (grayscale), or a
    vector of ``features`` (a generator's latent and condition). Must come first."""
    raise AssertionError("input is handled by build()")  # pragma: no cover


@LAYERS.register("conv", "convolutional", "conv2d")
def conv(
    shape: Shape,
    ctx: BuildContext,
    *,
    filters: int,
    kernel: int,
    stride: int = 1,
    pad: int | str = 0,
    bias: bool = True,
) -> tuple[nn.Module, Shape]:
    """2-D convolution. ``pad`` is a number of pixels or ``"same"``."""
    c, h, w = _image(shape, "conv")
    filters, kernel, stride = _int(filters, "filters"), _int(kernel, "kernel"), _int(stride, "stride")
    if pad == "same":
        pad = kernel // 2
    pad = _int(pad, "pad", 0)
    oh, ow = _out_size(h, kernel, stride, pad), _out_size(w, kernel, stride, pad)
    if oh < 1 or ow < 1:
        raise LayerShapeError(f"a {kernel}x{kernel} kernel does not fit a {h}x{w} input (pad {pad})")
    return nn.Conv2d(c, filters, kernel, stride, pad, bias=bias), (filters, oh, ow)


def _pool(kind: type[nn.MaxPool2d] | type[nn.AvgPool2d], name: str) -> Builder:
    def build(
        shape: Shape, ctx: BuildContext, *, kernel: int = 2, stride: int | None = None, pad: int = 0
    ) -> tuple[nn.Module, Shape]:
        c, h, w = _image(shape, name)
        kernel = _int(kernel, "kernel")
        stride = kernel if stride is None else _int(stride, "stride")
        pad = _int(pad, "pad", 0)
        if pad > kernel // 2:
            raise LayerShapeError(f"pad {pad} is more than half the kernel {kernel}")
        oh, ow = _out_size(h, kernel, stride, pad), _out_size(w, kernel, stride, pad)
        if oh < 1 or ow < 1:
            raise LayerShapeError(f"a {kernel}x{kernel} window does not fit a {h}x{w} input")
        return kind(kernel, stride, pad), (c, oh, ow)

    build.__doc__ = f"{name}: ``kernel`` (default 2), ``stride`` (default: the kernel), ``pad``."
    return build


LAYERS.register("max-pool", "max-pooling", "maxpool")(_pool(nn.MaxPool2d, "max-pool"))
LAYERS.register("avg-pool", "avg-pooling", "avgpool")(_pool(nn.AvgPool2d, "avg-pool"))


@LAYERS.register("global-avg-pool", "global-average-pooling")
def global_avg_pool(shape: Shape, ctx: BuildContext) -> tuple[nn.Module, Shape]:
    """Average each channel over the image: (C, H, W) -> (C,)."""
    c, _, _ = _image(shape, "global-avg-pool")
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), (c,)


@LAYERS.register("flatten")
def flatten(shape: Shape, ctx: BuildContext) -> tuple[nn.Module, Shape]:
    """(C, H, W) -> (C*H*W,)."""
    return nn.Flatten(), (math.prod(shape),)


@LAYERS.register("linear", "dense", "fully-connected")
def linear(
    shape: Shape, ctx: BuildContext, *, units: int | None = None, bias: bool = True
) -> tuple[nn.Module, Shape]:
    """Fully connected; flattens an image input. ``units`` defaults to the number of classes
    on the network's last linear layer."""
    if units is None:
        if not ctx.is_last_linear:
            raise LayerShapeError(
                "units is required (only the last linear layer defaults to the number of classes)"
            )
        units = ctx.num_classes
    units = _int(units, "units")
    fan_in = math.prod(shape)
    layer = nn.Linear(fan_in, units, bias=bias)
    return (nn.Sequential(nn.Flatten(), layer) if len(shape) > 1 else layer), (units,)


def _same_shape(factory: Callable[[], nn.Module], doc: str) -> Builder:
    def build(shape: Shape, ctx: BuildContext) -> tuple[nn.Module, Shape]:
        return factory(), shape

    build.__doc__ = doc
    return build


LAYERS.register("relu")(_same_shape(lambda: nn.ReLU(inplace=True), "max(x, 0)."))
LAYERS.register("gelu")(_same_shape(nn.GELU, "Gaussian error linear unit."))
LAYERS.register("sigmoid")(_same_shape(nn.Sigmoid, "Logistic function."))
LAYERS.register("tanh")(_same_shape(nn.Tanh, "Hyperbolic tangent."))


@LAYERS.register("leaky-relu")
def leaky_relu(shape: Shape, ctx: BuildContext, *, slope: float = 0.01) -> tuple[nn.Module, Shape]:
    """max(x, slope * x)."""
    return nn.LeakyReLU(float(slope), inplace=True), shape


@LAYERS.register("dropout")
def dropout(shape: Shape, ctx: BuildContext, *, p: float = 0.5) -> tuple[nn.Module, Shape]:
    """Zero a fraction ``p`` of activations during training."""
    if not 0.0 <= float(p) < 1.0:
        raise LayerShapeError(f"p must be in [0, 1), got {p!r}")
    return nn.Dropout(float(p)), shape


@LAYERS.register("batch-norm", "batchnorm", "batch-normalization")
def batch_norm(shape: Shape, ctx: BuildContext) -> tuple[nn.Module, Shape]:
    """Batch normalisation over channels (images) or features."""
    return (nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])), shape


class ResBlock(nn.Module):
    """A ResNet basic block: two 3x3 conv-BN pairs and a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C', H/s, W/s)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


@LAYERS.register("res-block", "residual")
def res_block(shape: Shape, ctx: BuildContext, *, filters: int, stride: int = 1) -> tuple[nn.Module, Shape]:
    """ResNet basic block (includes its ReLU); ``stride`` 2 halves the image."""
    c, h, w = _image(shape, "res-block")
    filters, stride = _int(filters, "filters"), _int(stride, "stride")
    oh, ow = _out_size(h, 3, stride, 1), _out_size(w, 3, stride, 1)
    return ResBlock(c, filters, stride), (filters, oh, ow)


@LAYERS.register("reshape", "unflatten")
def reshape(shape: Shape, ctx: BuildContext, *, to: list[int]) -> tuple[nn.Module, Shape]:
    """Features (F,) -> an image ``to`` = [C, H, W] with C*H*W = F (a generator's first map)."""
    if len(shape) != 1:
        raise LayerShapeError(f"reshape needs features (F,), got {fmt_shape(shape)}")
    if not isinstance(to, list | tuple) or len(to) != 3:
        raise LayerShapeError(f"to must be [C, H, W], got {to!r}")
    out = tuple(_int(d, "to") for d in to)
    if math.prod(out) != shape[0]:
        raise LayerShapeError(f"{fmt_shape(out)} holds {math.prod(out)} values, the input {shape[0]}")
    return nn.Unflatten(1, out), out


@LAYERS.register("upsample", "up-sample")
def upsample(shape: Shape, ctx: BuildContext, *, scale: int = 2) -> tuple[nn.Module, Shape]:
    """Nearest-neighbour upsampling by an integer ``scale``: (C, H, W) -> (C, sH, sW)."""
    c, h, w = _image(shape, "upsample")
    scale = _int(scale, "scale")
    return nn.Upsample(scale_factor=scale, mode="nearest"), (c, h * scale, w * scale)


@LAYERS.register("softmax")
def softmax(shape: Shape, ctx: BuildContext) -> tuple[None, Shape]:
    """Marks the output as class probabilities; must be last. The network itself returns
    logits (for a numerically stable loss) and softmax is applied at prediction."""
    if len(shape) != 1:
        raise LayerShapeError(f"softmax needs features (F,), got {fmt_shape(shape)}")
    return None, shape


class BackboneFeatures(nn.Module):
    """A pretrained backbone's pooled features. ``frozen``: no gradients. Its batch-norm layers
    keep the pretrained statistics in training too (Keras' advice for fine-tuning: a small
    dataset's batch statistics differ from ImageNet's, and switching to them undoes what the
    head learned), unless ``batch_stats`` (fastai's default) and not ``frozen``."""

    def __init__(
        self,
        name: str,
        frozen: bool,
        weights: str | None = None,
        pretrained: bool = True,
        batch_stats: bool = False,
    ) -> None:
        super().__init__()
        from pawlab.models.backbones import build_backbone, load_backbone

        self.name = name
        self.net, _ = load_backbone(name, weights) if pretrained else build_backbone(name)
        self.frozen = frozen
        self.batch_stats = batch_stats and not frozen
        if frozen:
            self.net.requires_grad_(False)
        self.net.classifier.requires_grad_(False)  # ImageNet's head: unused, never trained

    def train(self, mode: bool = True) -> BackboneFeatures:
        super().train(mode)
        if not self.batch_stats:
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()  # running statistics stay the pretrained ones
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, F)
        features: torch.Tensor = self.net.forward_features(x)
        return features


class Resized(nn.Module):
    """A backbone fed the network's input resized to its own size (antialiased bilinear) and
    renormalised to its own mean and std: one decode serves backbones of several sizes."""

    scale: torch.Tensor  # (1, 3, 1, 1)
    shift: torch.Tensor  # (1, 3, 1, 1)

    def __init__(
        self, member: BackboneFeatures, size: int, mean: tuple[float, ...], std: tuple[float, ...]
    ) -> None:
        super().__init__()
        from pawlab.models.backbones import backbone_spec

        spec = backbone_spec(member.name)
        self.member, self.size = member, size
        # x * scale + shift takes the input's normalisation to the member's, per channel
        scale = [s_in / s for s_in, s in zip(std, spec.std, strict=True)]
        shift = [(m_in - m) / s for m_in, m, s in zip(mean, spec.mean, spec.std, strict=True)]
        self.same_normalisation = scale == [1.0] * 3 and shift == [0.0] * 3
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, F)
        if x.shape[-2:] != (self.size, self.size):
            x = nn.functional.interpolate(
                x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )
        if not self.same_normalisation:
            x = x * self.scale + self.shift
        out: torch.Tensor = self.member(x)
        return out


class BackboneEnsemble(nn.Module):
    """Several pretrained backbones on one input, each at its own size; their pooled features
    concatenated in order (B, sum of their features)."""

    def __init__(self, members: list[Resized]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.features = sum(m.member.net.features for m in members)

    @property
    def parts(self) -> list[Resized]:
        return [m for m in self.members if isinstance(m, Resized)]

    @property
    def frozen(self) -> bool:
        return all(m.member.frozen for m in self.parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, F0 + F1 + ...)
        return torch.cat([m(x) for m in self.parts], dim=1)


def backbone_names(name: object) -> list[str]:
    """A backbone layer's ``name``: one name, several separated by commas, or a list of them."""
    names = [str(n).strip() for n in name] if isinstance(name, list | tuple) else str(name).split(",")
    names = [n.strip() for n in names if n.strip()]
    if not names or len(set(names)) != len(names):
        raise LayerShapeError(f"name must name one backbone or several different ones, got {name!r}")
    return names


def check_installed(names: list[str]) -> None:
    """Every backbone of an ensemble must have installed weights: no weights file can be named
    for one member (a user could not give one to each)."""
    from pawlab.models.backbones import backbone_spec

    bare = [n for n in names if backbone_spec(n).default_weights is None]
    if bare:
        raise LayerShapeError(
            f"{bare[0]} has no installed weights; several backbones must each have theirs installed "
            "(efficientnet_lite0, efficientnet_lite1, efficientnet_lite2)"
        )


@LAYERS.register("backbone", "pretrained")
def backbone(
    shape: Shape,
    ctx: BuildContext,
    *,
    name: str | list[str],
    frozen: bool = True,
    weights: str | None = None,
    batch_stats: bool = False,
) -> tuple[nn.Module, Shape]:
    """A pretrained ImageNet backbone (see pawlab.models.backbones) giving pooled features, or
    several (``name``: a list, or names separated by commas), each fed the input resized to its
    own size, their features concatenated. Weights come from ``weights`` (a file; one backbone
    only) or the installed packages when training starts; a model file carries them afterwards.
    ``batch_stats``: when trained unfrozen, batch-norm normalises with each batch's statistics
    and updates its running ones (fastai); by default it keeps the pretrained statistics (Keras)."""
    c, h, _ = _image(shape, "backbone")
    if c != 3:
        raise LayerShapeError(f"a pretrained backbone needs RGB input, got {c} channels")
    names = backbone_names(name)
    if len(names) > 1 and weights is not None:
        raise LayerShapeError("weights: a weights file serves one backbone, not several")
    if len(names) > 1 and ctx.pretrained:
        check_installed(names)
    members = [
        BackboneFeatures(
            n, bool(frozen), None if weights is None else str(weights), ctx.pretrained, bool(batch_stats)
        )
        for n in names
    ]
    if len(members) == 1:
        return members[0], (members[0].net.features,)
    from pawlab.models.backbones import backbone_spec

    specs = [backbone_spec(n) for n in names]
    first = specs[0]  # the network's input is normalised as the first one wants
    # each at its own size relative to the largest, which the input has (260 -> Lite0 at 224)
    largest = max(s.size for s in specs)
    module = BackboneEnsemble(
        [
            Resized(m, round(h * s.size / largest), first.mean, first.std)
            for m, s in zip(members, specs, strict=True)
        ]
    )
    return module, (module.features,)

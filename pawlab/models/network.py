"""Declarative networks: a list of layer descriptions becomes a checked `Network`.

    spec = [
        {"type": "input", "size": 52, "channels": 3},
        {"type": "conv", "kernel": 5, "filters": 20},
        {"type": "max-pool", "kernel": 2},
        {"type": "relu"},
        {"type": "linear"},          # last linear: units default to the number of classes
        {"type": "softmax"},
    ]
    net = build(spec, num_classes=2)

Named architectures live in `pawlab.models.zoo`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from pawlab.errors import ArchitectureError
from pawlab.models.layers import (
    LAYERS,
    BackboneEnsemble,
    BackboneFeatures,
    BuildContext,
    LayerShapeError,
    Shape,
    fmt_shape,
)

LayerSpec = dict[str, Any]


class Network(nn.Module):
    """A sequential network built from a description. ``forward`` returns logits (B, classes)."""

    def __init__(
        self,
        spec: list[LayerSpec],
        input_shape: Shape,
        layers: list[nn.Module],
        shapes: list[Shape],
        names: list[str],
    ) -> None:
        super().__init__()
        self.spec = spec
        self.input_shape = input_shape  # (C, H, W), or (F,) for a vector input
        self.body = nn.Sequential(*layers)
        self.shapes = shapes  # out shape of each described layer, input first
        self.names = names

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) or (B, F) -> (B, classes) or output
        out: torch.Tensor = self.body(x)
        return out

    # A network whose body starts with a frozen pretrained backbone splits into a fixed trunk
    # and a trained head (timm's forward_features / forward_head): the trunk's outputs can be
    # computed once and cached, and the head trained on them.
    @property
    def trunk_length(self) -> int | None:
        """How many modules of ``body`` form the frozen trunk (None: no frozen trunk)."""
        return frozen_trunk(self)

    @property
    def trunk(self) -> nn.Sequential:
        """The frozen trunk (``body[:trunk_length]``); empty without one."""
        return cast(nn.Sequential, self.body[: self.trunk_length or 0])

    @property
    def head(self) -> nn.Sequential:
        """What follows the frozen trunk: the part trained on cached features (the whole
        body without a frozen trunk)."""
        return cast(nn.Sequential, self.body[self.trunk_length or 0 :])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, F)
        out: torch.Tensor = self.trunk(x)
        return out

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, classes)
        out: torch.Tensor = self.head(features)
        return out

    @property
    def num_classes(self) -> int:
        return self.shapes[-1][0]

    def rows(self) -> list[tuple[str, str, int]]:
        """(description, output shape, parameters) per described layer."""
        rows, modules = [], iter(self.body)
        for desc, shape in zip(self.names, self.shapes, strict=True):
            n = 0
            if not desc.startswith(("input", "softmax")):  # the layers with no module of their own
                n = sum(p.numel() for p in next(modules).parameters())
            rows.append((desc, fmt_shape(shape), n))
        return rows

    def summary(self) -> str:
        """One row per described layer: its description, output shape and parameters."""
        rows = [f"  {desc:<36} {shape:>14} {n:>10,}" for desc, shape, n in self.rows()]
        total = sum(p.numel() for p in self.parameters())
        head = f"  {'layer':<36} {'output':>14} {'params':>10}"
        return "\n".join([head, *rows, f"  {'total':<36} {'':>14} {total:>10,}"])


def frozen_trunk(network: nn.Module) -> int | None:
    """How many modules of ``network.body`` form a fixed trunk ending in a frozen backbone
    (the head is the rest), or None when there is no such trunk."""
    body = getattr(network, "body", None)
    if not isinstance(body, nn.Sequential):
        return None
    for i, module in enumerate(body):
        if isinstance(module, BackboneFeatures | BackboneEnsemble) and module.frozen:
            return i + 1
        if any(p.requires_grad for p in module.parameters()) or any(True for _ in module.buffers()):
            return None  # something trainable (or with running statistics) comes first
    return None


def _describe(layer: Mapping[str, Any]) -> str:
    params = " ".join(
        f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in layer.items() if k != "type"
    )
    return f"{layer.get('type')} {params}".strip()


def _builder_params(builder: Callable[..., Any]) -> tuple[set[str], set[str]]:
    sig = inspect.signature(builder)
    kw = [p for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return {p.name for p in kw}, {p.name for p in kw if p.default is inspect.Parameter.empty}


def validate_spec(spec: object, where: str = "architecture") -> list[LayerSpec]:
    """Check the structure of a description (types, names, parameters) before building."""
    if not isinstance(spec, Sequence) or isinstance(spec, str | bytes) or not spec:
        raise ArchitectureError(f"{where}: must be a non-empty list of layers")
    out: list[LayerSpec] = []
    for i, layer in enumerate(spec):
        if not isinstance(layer, Mapping) or not isinstance(layer.get("type"), str):
            raise ArchitectureError(f"{where}: layer {i} must be a table with a 'type', got {layer!r}")
        key = LAYERS.canonical(layer["type"])
        if key is None:
            raise ArchitectureError(
                f"{where}: layer {i}: unknown layer type {layer['type']!r} "
                f"(known: {', '.join(LAYERS.names())})"
            )
        allowed, required = _builder_params(LAYERS.get(key))
        params = {k: v for k, v in layer.items() if k != "type"}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ArchitectureError(
                f"{where}: layer {i} ({key}): unknown parameter {unknown[0]!r} "
                f"(accepts: {', '.join(sorted(allowed)) or 'none'})"
            )
        missing = sorted(required - set(params))
        if missing:
            raise ArchitectureError(f"{where}: layer {i} ({key}): missing parameter {missing[0]!r}")
        out.append({"type": key, **params})
    if out[0]["type"] != "input":
        raise ArchitectureError(f"{where}: layer 0 must be an input layer, got {out[0]['type']!r}")
    for i, layer in enumerate(out[1:], 1):
        if layer["type"] == "input":
            raise ArchitectureError(f"{where}: layer {i}: only the first layer may be an input")
        if layer["type"] == "softmax" and i != len(out) - 1:
            raise ArchitectureError(f"{where}: layer {i}: softmax must be the last layer")
    return out


def input_shape(spec: Sequence[LayerSpec], where: str = "architecture") -> Shape:
    """(C, H, W) of a validated description's input layer, or (F,) for a vector input."""
    first = spec[0]
    if "features" in first:
        features = first["features"]
        if "size" in first or isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ArchitectureError(
                f"{where}: layer 0 (input): features must be a positive integer, "
                f"without a size; got {first!r}"
            )
        return (features,)
    size, channels = first.get("size"), first.get("channels", 3)
    if isinstance(size, int) and not isinstance(size, bool):
        h = w = size
    elif isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, int) for s in size):
        h, w = int(size[0]), int(size[1])
    else:
        raise ArchitectureError(f"{where}: layer 0 (input): size must be N or [H, W], got {size!r}")
    if channels not in (1, 3) or h < 1 or w < 1:
        raise ArchitectureError(
            f"{where}: layer 0 (input): need channels 1 or 3 and a positive size, got {first!r}"
        )
    return (int(channels), h, w)


def with_input_size(spec: Sequence[LayerSpec], size: int) -> list[LayerSpec]:
    """The same description with its input resized to ``size`` x ``size``."""
    out = copy.deepcopy(list(spec))
    out[0] = {**out[0], "size": size}
    return out


def build(
    spec: Sequence[LayerSpec],
    num_classes: int,
    where: str = "architecture",
    *,
    pretrained: bool = True,
    output: Shape | None = None,
) -> Network:
    """Build and shape-check a description for ``num_classes`` outputs. ``pretrained=False``
    skips loading pretrained backbone weights (a model file is about to supply them).
    ``output``: the shape the network must end with when it is not class logits (a
    generator's image, an encoder's statistics); then every linear layer names its units."""
    layers_spec = validate_spec(spec, where)
    shape = input_shape(layers_spec, where)
    last_linear = max((i for i, s in enumerate(layers_spec) if s["type"] == "linear"), default=-1)
    if output is not None:
        last_linear = -1
    modules: list[nn.Module] = []
    shapes: list[Shape] = [shape]
    names = [_describe(layers_spec[0])]
    for i, layer in enumerate(layers_spec[1:], 1):
        params = {k: v for k, v in layer.items() if k != "type"}
        ctx = BuildContext(num_classes=num_classes, is_last_linear=i == last_linear, pretrained=pretrained)
        try:
            module, new_shape = LAYERS.get(layer["type"])(shape, ctx, **params)
        except (LayerShapeError, TypeError, ValueError) as exc:
            raise ArchitectureError(
                f"{where}: layer {i} ({_describe(layer)}) does not fit its input {fmt_shape(shape)}: {exc}"
            ) from None
        if module is not None:
            modules.append(module)
        shape = new_shape
        shapes.append(shape)
        names.append(_describe(layer))
    if output is not None and shape != tuple(output):
        raise ArchitectureError(
            f"{where}: the network ends with shape {fmt_shape(shape)}, "
            f"not the {fmt_shape(output)} it must give"
        )
    if output is None and shape != (num_classes,):
        raise ArchitectureError(
            f"{where}: the network ends with shape {fmt_shape(shape)} but the data has "
            f"{num_classes} classes (end with a linear layer of {num_classes} units, or leave its units out)"
        )
    return Network(layers_spec, shapes[0], modules, shapes, names)

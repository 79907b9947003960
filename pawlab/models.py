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

Architectures are registered by name (`ARCHITECTURES`); a user's own can be given as a
TOML or YAML file with the same fields (see `load_arch_file`).
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pawlab.config import RESIZE_POLICIES
from pawlab.errors import ArchitectureError, ConfigError
from pawlab.layers import LAYERS, BuildContext, LayerShapeError, Shape, fmt_shape
from pawlab.preprocessing import Preprocessing
from pawlab.registry import Registry

LayerSpec = dict[str, Any]
ArchFactory = Callable[[], list[LayerSpec]]
ARCHITECTURES: Registry[ArchFactory] = Registry("architecture")


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
        self.input_shape = input_shape  # (C, H, W)
        self.body = nn.Sequential(*layers)
        self.shapes = shapes  # out shape of each described layer, input first
        self.names = names

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        out: torch.Tensor = self.body(x)
        return out

    @property
    def num_classes(self) -> int:
        return self.shapes[-1][0]

    def summary(self) -> str:
        """One row per described layer: its description, output shape and parameters."""
        rows = []
        module_iter = iter(self.body)
        for desc, shape in zip(self.names, self.shapes, strict=True):
            n = 0
            if not desc.startswith(("input", "softmax")):
                n = sum(p.numel() for p in next(module_iter).parameters())
            rows.append(f"  {desc:<36} {fmt_shape(shape):>14} {n:>10,}")
        total = sum(p.numel() for p in self.parameters())
        head = f"  {'layer':<36} {'output':>14} {'params':>10}"
        return "\n".join([head, *rows, f"  {'total':<36} {'':>14} {total:>10,}"])


def _describe(layer: Mapping[str, Any]) -> str:
    params = " ".join(f"{k}={v}" for k, v in layer.items() if k != "type")
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
    """(C, H, W) of a validated description's input layer."""
    first = spec[0]
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
    spec: Sequence[LayerSpec], num_classes: int, where: str = "architecture", *, pretrained: bool = True
) -> Network:
    """Build and shape-check a description for ``num_classes`` outputs. ``pretrained=False``
    skips loading pretrained backbone weights (a model file is about to supply them)."""
    layers_spec = validate_spec(spec, where)
    shape = input_shape(layers_spec, where)
    last_linear = max((i for i, s in enumerate(layers_spec) if s["type"] == "linear"), default=-1)
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
    if shape != (num_classes,):
        raise ArchitectureError(
            f"{where}: the network ends with shape {fmt_shape(shape)} but the data has "
            f"{num_classes} classes (end with a linear layer of {num_classes} units, or leave its units out)"
        )
    return Network(layers_spec, shapes[0], modules, shapes, names)


# ----------------------------------------------------------------------------- sources of specs


def get_architecture(name: str) -> list[LayerSpec]:
    try:
        return ARCHITECTURES.get(name)()
    except KeyError:
        raise ArchitectureError(
            f"unknown architecture {name!r} (known: {', '.join(ARCHITECTURES.names())})"
        ) from None


def load_arch_file(path: str | os.PathLike[str]) -> list[LayerSpec]:
    """A description from TOML (``[[layers]]`` tables), YAML or JSON (``layers:`` list)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ArchitectureError(f"{p}: not a UTF-8 text file") from None
    except OSError as exc:
        raise ArchitectureError(f"{p}: cannot read architecture file ({exc.strerror})") from None
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ArchitectureError(f"{p}: architecture files must be .toml, .yaml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ArchitectureError(f"{p}: cannot parse: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # yaml.YAMLError, imported lazily
        if type(exc).__module__.startswith("yaml"):
            raise ArchitectureError(f"{p}: cannot parse: {str(exc).splitlines()[0]}") from None
        raise
    layers = data.get("layers") if isinstance(data, dict) else data
    return validate_spec(layers, str(p))


# ----------------------------------------------------------------------------- built-in architectures


@ARCHITECTURES.register("cortex-cnn")
def cortex_cnn() -> list[LayerSpec]:
    """The network of the Cortex "Dogs vs. Cats" tutorial, at 52x52 RGB."""
    return [
        {"type": "input", "size": 52, "channels": 3},
        {"type": "conv", "kernel": 5, "filters": 20},
        {"type": "max-pool", "kernel": 2},
        {"type": "relu"},
        {"type": "conv", "kernel": 5, "filters": 50},
        {"type": "max-pool", "kernel": 2},
        {"type": "relu"},
        {"type": "conv", "kernel": 1, "filters": 50},
        {"type": "relu"},
        {"type": "linear", "units": 1000},
        {"type": "relu"},
        {"type": "dropout", "p": 0.5},
        {"type": "linear"},
        {"type": "softmax"},
    ]


@ARCHITECTURES.register("keras-mlp")
def keras_mlp() -> list[LayerSpec]:
    """The Keras tutorial's MLP: flattened 32x32x3 -> 768 -> 384 -> classes."""
    return [
        {"type": "input", "size": 32, "channels": 3},
        {"type": "flatten"},
        {"type": "linear", "units": 768},
        {"type": "relu"},
        {"type": "linear", "units": 384},
        {"type": "relu"},
        {"type": "linear"},
        {"type": "softmax"},
    ]


@ARCHITECTURES.register("small-cnn")
def small_cnn() -> list[LayerSpec]:
    """A small batch-normalised CNN for 28x28 digits (the demo's network)."""
    return [
        {"type": "input", "size": 28, "channels": 1},
        {"type": "conv", "kernel": 3, "filters": 32, "pad": 1},
        {"type": "batch-norm"},
        {"type": "relu"},
        {"type": "max-pool", "kernel": 2},
        {"type": "conv", "kernel": 3, "filters": 64, "pad": 1},
        {"type": "batch-norm"},
        {"type": "relu"},
        {"type": "max-pool", "kernel": 2},
        {"type": "linear", "units": 128},
        {"type": "relu"},
        {"type": "dropout", "p": 0.3},
        {"type": "linear"},
        {"type": "softmax"},
    ]


@ARCHITECTURES.register("small-resnet")
def small_resnet() -> list[LayerSpec]:
    """A small residual network for 64x64 RGB images."""
    return [
        {"type": "input", "size": 64, "channels": 3},
        {"type": "conv", "kernel": 3, "filters": 32, "pad": 1, "bias": False},
        {"type": "batch-norm"},
        {"type": "relu"},
        {"type": "res-block", "filters": 32},
        {"type": "res-block", "filters": 64, "stride": 2},
        {"type": "res-block", "filters": 128, "stride": 2},
        {"type": "res-block", "filters": 256, "stride": 2},
        {"type": "global-avg-pool"},
        {"type": "dropout", "p": 0.2},
        {"type": "linear"},
        {"type": "softmax"},
    ]


@ARCHITECTURES.register("pooled-resnet")
def pooled_resnet() -> list[LayerSpec]:
    """small-resnet with a max-pooled stem: its blocks run at 32x32 and below, a quarter of
    the compute, so a recipe can afford more epochs (cats-dogs-scratch)."""
    return [
        {"type": "input", "size": 64, "channels": 3},
        {"type": "conv", "kernel": 3, "filters": 32, "pad": 1, "bias": False},
        {"type": "batch-norm"},
        {"type": "relu"},
        {"type": "max-pool", "kernel": 2},  # (32, 32, 32)
        {"type": "res-block", "filters": 32},
        {"type": "res-block", "filters": 64, "stride": 2},
        {"type": "res-block", "filters": 128, "stride": 2},
        {"type": "res-block", "filters": 256, "stride": 2},  # (256, 4, 4)
        {"type": "global-avg-pool"},
        {"type": "dropout", "p": 0.2},
        {"type": "linear"},
        {"type": "softmax"},
    ]


def transfer_architecture(
    backbone: str, *, frozen: bool = True, size: int = 224, weights: str | os.PathLike[str] | None = None
) -> list[LayerSpec]:
    """A pretrained backbone with a new head for the data's classes; ``weights``: a file of
    pretrained weights (otherwise those of an installed package)."""
    layer: LayerSpec = {"type": "backbone", "name": backbone, "frozen": frozen}
    if weights is not None:
        layer["weights"] = str(Path(weights).expanduser().resolve())
    return [
        {"type": "input", "size": size, "channels": 3},
        layer,
        {"type": "dropout", "p": 0.2},
        {"type": "linear"},
        {"type": "softmax"},
    ]


@ARCHITECTURES.register("efficientnet-lite0")
def efficientnet_lite0() -> list[LayerSpec]:
    """EfficientNet-Lite0 pretrained on ImageNet (frozen) with a new linear head, at 224x224."""
    return transfer_architecture("efficientnet_lite0")


def backbone_layer(spec: Sequence[LayerSpec]) -> LayerSpec | None:
    """The description's pretrained backbone layer, if it has one."""
    return next((layer for layer in spec if LAYERS.canonical(str(layer.get("type"))) == "backbone"), None)


def preprocessing_for(spec: Sequence[LayerSpec], resize: str | None = None) -> Preprocessing:
    """How images become inputs of this network: a pretrained backbone's normalisation and
    (by default) centre crop; otherwise [-1, 1] pixels and the whole image squashed."""
    if resize is not None and resize not in RESIZE_POLICIES:
        raise ConfigError(f"resize: must be one of {', '.join(RESIZE_POLICIES)}, got {resize!r}")
    base = Preprocessing.for_input(input_shape(spec))
    layer = backbone_layer(spec)
    if layer is None:
        return replace(base, resize=resize or "squash")
    from pawlab.backbones import backbone_spec

    bb = backbone_spec(str(layer["name"]))
    return replace(base, mean=bb.mean, std=bb.std, resize=resize or "crop")

"""Named architectures (`ARCHITECTURES`), layer lists read from files, and transfer networks.

Every architecture is a function returning a layer list, registered by name as timm's
``@register_model``; `get_architecture` looks one up, `load_arch_file` reads a user's own.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pawlab.config import DEFAULT_BACKBONE, RESIZE_POLICIES
from pawlab.errors import ArchitectureError, ConfigError
from pawlab.models.layers import LAYERS, LayerShapeError, backbone_names, check_installed
from pawlab.models.network import LayerSpec, input_shape, validate_spec
from pawlab.preprocessing import Preprocessing
from pawlab.registry import Registry

ArchFactory = Callable[[], list[LayerSpec]]
ARCHITECTURES: Registry[ArchFactory] = Registry("architecture")


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


def _conv_bn_relu(filters: int) -> list[LayerSpec]:
    return [
        {"type": "conv", "kernel": 3, "filters": filters, "pad": 1},
        {"type": "batch-norm"},
        {"type": "relu"},
    ]


@ARCHITECTURES.register("digit-cnn")
def digit_cnn() -> list[LayerSpec]:
    """A VGG-style CNN for 28x28 digits: two pairs of 3x3 convolutions (the model specs'
    digit discriminator)."""
    return [
        {"type": "input", "size": 28, "channels": 1},
        *_conv_bn_relu(32),
        *_conv_bn_relu(32),
        {"type": "max-pool", "kernel": 2},  # (32, 14, 14)
        *_conv_bn_relu(64),
        *_conv_bn_relu(64),
        {"type": "max-pool", "kernel": 2},  # (64, 7, 7)
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
    backbone: str | Sequence[str] = DEFAULT_BACKBONE,
    *,
    frozen: bool = True,
    size: int | None = None,
    weights: str | os.PathLike[str] | None = None,
) -> list[LayerSpec]:
    """A pretrained backbone with a new head for the data's classes; ``weights``: a file of
    pretrained weights (otherwise those of an installed package). Several backbones (a list,
    or names separated by commas) share the input and one head on their concatenated features.
    ``size``: the input's, by default the backbone's own (the largest of several, so that each
    is fed its own size by resizing down)."""
    from pawlab.models.backbones import backbone_spec

    try:
        names = backbone_names(backbone)
        if len(names) > 1:  # before any data is prepared
            check_installed(names)
    except LayerShapeError as exc:
        raise ArchitectureError(f"backbone: {exc}") from None
    if size is None:
        size = max(backbone_spec(n).size for n in names)
    layer: LayerSpec = {"type": "backbone", "name": names[0] if len(names) == 1 else names, "frozen": frozen}
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


@ARCHITECTURES.register("efficientnet-lite1")
def efficientnet_lite1() -> list[LayerSpec]:
    """EfficientNet-Lite1 pretrained on ImageNet (frozen) with a new linear head, at 240x240."""
    return transfer_architecture("efficientnet_lite1")


@ARCHITECTURES.register("efficientnet-lite2")
def efficientnet_lite2() -> list[LayerSpec]:
    """EfficientNet-Lite2 pretrained on ImageNet (frozen) with a new linear head, at 260x260."""
    return transfer_architecture("efficientnet_lite2")


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
    from pawlab.models.backbones import backbone_spec

    bb = backbone_spec(backbone_names(layer["name"])[0])  # an ensemble is fed as its first member wants
    return replace(base, mean=bb.mean, std=bb.std, resize=resize or "crop")

"""Declarative networks: the layer vocabulary, the built-in architectures, shape inference,
architecture files and the name registries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pawlab.errors import ArchitectureError
from pawlab.models import (
    ARCHITECTURES,
    LAYERS,
    LayerSpec,
    Network,
    build,
    get_architecture,
    load_arch_file,
    validate_spec,
)
from pawlab.registry import Registry

# A non-square input catches height/width mix-ups.
INPUT: LayerSpec = {"type": "input", "size": [6, 8], "channels": 3}

# Example parameters for every registered layer: a new layer without an entry here fails
# `test_layer_builds_and_infers_its_shape`.
LAYER_EXAMPLES: dict[str, dict[str, Any]] = {
    "avg-pool": {"kernel": 2},
    "backbone": {"name": "efficientnet_lite0"},
    "batch-norm": {},
    "conv": {"kernel": 3, "filters": 4, "stride": 1, "pad": 0},
    "dropout": {"p": 0.25},
    "flatten": {},
    "gelu": {},
    "global-avg-pool": {},
    "input": {"size": [5, 7], "channels": 1},
    "leaky-relu": {"slope": 0.2},
    "linear": {"units": 7},
    "max-pool": {"kernel": 3, "stride": 2, "pad": 1},
    "relu": {},
    "res-block": {"filters": 6, "stride": 2},
    "reshape": {"to": [2, 4, 4]},
    "upsample": {"scale": 2},
    "sigmoid": {},
    "softmax": {},
    "tanh": {},
}
MARKER_LAYERS = {"input", "softmax"}  # described layers that add no module to the network

# The same small network as a Python list and as the three file formats.
SMALL: list[LayerSpec] = [
    {"type": "input", "size": [12, 10], "channels": 1},
    {"type": "conv", "kernel": 3, "filters": 4, "pad": "same"},
    {"type": "relu"},
    {"type": "max-pool", "kernel": 2},
    {"type": "linear", "units": 16},
    {"type": "dropout", "p": 0.5},
    {"type": "linear"},
    {"type": "softmax"},
]
SMALL_TOML = """\
# a comment
[[layers]]
type = "input"
size = [12, 10]
channels = 1

[[layers]]
type = "conv"
kernel = 3
filters = 4
pad = "same"

[[layers]]
type = "relu"

[[layers]]
type = "max-pool"
kernel = 2

[[layers]]
type = "linear"
units = 16

[[layers]]
type = "dropout"
p = 0.5

[[layers]]
type = "linear"

[[layers]]
type = "softmax"
"""
SMALL_YAML = """\
# a comment
layers:
  - {type: input, size: [12, 10], channels: 1}
  - type: conv
    kernel: 3
    filters: 4
    pad: same
  - type: relu
  - {type: max-pool, kernel: 2}
  - {type: linear, units: 16}
  - {type: dropout, p: 0.5}
  - type: linear
  - type: softmax
"""


def spec_using(name: str) -> list[LayerSpec]:
    """A tiny network that uses layer ``name`` with its example parameters."""
    layer = {"type": name, **LAYER_EXAMPLES[name]}
    head: list[LayerSpec] = [{"type": "linear"}, {"type": "softmax"}]
    if name == "input":
        return [layer, *head]
    if name == "softmax":
        return [INPUT, {"type": "linear"}, layer]
    if name == "reshape":  # features -> an image
        return [INPUT, {"type": "linear", "units": 32}, layer, *head]
    if name == "backbone":  # pretrained on RGB
        return [{"type": "input", "size": 32, "channels": 3}, layer, *head]
    return [INPUT, layer, *head]


def check_layer_shapes(net: Network, batch: int = 2) -> torch.Tensor:
    """Run a batch through the body one module at a time; each output must have the shape
    that `build` inferred for its layer."""
    x = torch.randn(batch, *net.input_shape, generator=torch.Generator().manual_seed(0))
    modules = iter(net.body)
    for layer, shape in zip(net.spec[1:], net.shapes[1:], strict=True):
        if layer["type"] in MARKER_LAYERS:
            continue
        x = next(modules)(x)
        assert tuple(x.shape) == (batch, *shape), layer
    assert next(modules, None) is None, "more modules than described layers"
    return x


def error_of(spec: object, num_classes: int = 2) -> str:
    with pytest.raises(ArchitectureError) as exc:
        build(spec, num_classes)  # type: ignore[arg-type]
    return str(exc.value)


def same_network(a: Network, b: Network) -> bool:
    return (
        a.names == b.names
        and a.shapes == b.shapes
        and [(k, v.shape) for k, v in a.state_dict().items()]
        == [(k, v.shape) for k, v in b.state_dict().items()]
    )


# ----------------------------------------------------------------------------- every layer


@pytest.mark.parametrize("name", LAYERS.names())
def test_layer_builds_and_infers_its_shape(name: str) -> None:
    assert name in LAYER_EXAMPLES, f"add example parameters for the new layer {name!r}"
    net = build(spec_using(name), num_classes=3).eval()
    assert name in [layer["type"] for layer in net.spec]
    with torch.no_grad():
        out = check_layer_shapes(net)
    assert tuple(out.shape) == (2, 3)


def test_layer_examples_are_all_registered() -> None:
    assert sorted(LAYER_EXAMPLES) == LAYERS.names()


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        ({"type": "conv", "kernel": 3, "filters": 4}, (4, 4, 6)),
        ({"type": "conv", "kernel": 3, "filters": 4, "pad": "same"}, (4, 6, 8)),
        ({"type": "conv", "kernel": 3, "filters": 4, "stride": 2, "pad": 1}, (4, 3, 4)),
        ({"type": "max-pool"}, (3, 3, 4)),
        ({"type": "avg-pool", "kernel": 3, "stride": 1}, (3, 4, 6)),
        ({"type": "global-avg-pool"}, (3,)),
        ({"type": "flatten"}, (3 * 6 * 8,)),
        ({"type": "res-block", "filters": 5}, (5, 6, 8)),
        ({"type": "res-block", "filters": 5, "stride": 2}, (5, 3, 4)),
    ],
)
def test_inferred_shapes(layer: LayerSpec, expected: tuple[int, ...]) -> None:
    net = build([INPUT, layer, {"type": "linear"}], num_classes=2)
    assert net.shapes[1] == expected


def test_linear_flattens_an_image_input() -> None:
    net = build([INPUT, {"type": "linear", "units": 5}, {"type": "linear"}], num_classes=2)
    assert net.shapes[1] == (5,)
    first = net.body[0]
    assert isinstance(first, nn.Sequential)
    assert isinstance(first[-1], nn.Linear) and first[-1].in_features == 3 * 6 * 8


def test_last_linear_defaults_to_the_number_of_classes() -> None:
    net = build([INPUT, {"type": "linear", "units": 9}, {"type": "relu"}, {"type": "linear"}], 4)
    assert net.num_classes == 4
    assert net.shapes[-1] == (4,)


def test_softmax_is_a_marker_and_forward_returns_logits() -> None:
    net = build([INPUT, {"type": "linear"}, {"type": "softmax"}], num_classes=2)
    assert len(net.body) == 1
    x = torch.ones(1, 3, 6, 8)
    assert torch.equal(net(x), net.body[0](x))  # no softmax applied in forward


# ----------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("classes", [2, 10])
@pytest.mark.parametrize("name", ARCHITECTURES.names())
def test_architecture_builds_and_runs(name: str, classes: int) -> None:
    net = build(get_architecture(name), num_classes=classes).eval()
    assert net.num_classes == classes
    with torch.no_grad():
        out = net(torch.zeros(2, *net.input_shape))
    assert tuple(out.shape) == (2, classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ARCHITECTURES.names())
def test_architecture_summary_mentions_every_layer(name: str) -> None:
    net = build(get_architecture(name), num_classes=2)
    summary = net.summary()
    assert len(net.names) == len(net.spec)
    for desc in net.names:
        assert desc in summary
    total = sum(p.numel() for p in net.parameters())
    assert summary.splitlines()[-1].split()[-1] == f"{total:,}"


@pytest.mark.parametrize("name", ARCHITECTURES.names())
def test_architecture_factory_returns_a_fresh_list(name: str) -> None:
    spec = get_architecture(name)
    spec[0]["size"] = 1
    assert get_architecture(name)[0]["size"] != 1


def body_summary(net: Network) -> list[tuple[str, ...]]:
    """The modules of the body, flattening ``Sequential(Flatten, Linear)``."""
    out: list[tuple[str, ...]] = []
    for m in net.body:
        for sub in m if isinstance(m, nn.Sequential) else [m]:
            if isinstance(sub, nn.Conv2d):
                out.append(("conv", str(sub.in_channels), str(sub.out_channels), str(sub.kernel_size[0])))
            elif isinstance(sub, nn.Linear):
                out.append(("linear", str(sub.in_features), str(sub.out_features)))
            elif isinstance(sub, nn.MaxPool2d):
                out.append(("max-pool", str(sub.kernel_size)))
            elif isinstance(sub, nn.Dropout):
                out.append(("dropout", str(sub.p)))
            else:
                out.append((type(sub).__name__,))
    return out


def test_cortex_cnn_structure() -> None:
    net = build(get_architecture("cortex-cnn"), num_classes=2)
    assert [layer["type"] for layer in net.spec] == [
        "input",
        "conv",
        "max-pool",
        "relu",
        "conv",
        "max-pool",
        "relu",
        "conv",
        "relu",
        "linear",
        "relu",
        "dropout",
        "linear",
        "softmax",
    ]
    assert net.input_shape == (3, 52, 52)
    assert body_summary(net) == [
        ("conv", "3", "20", "5"),
        ("max-pool", "2"),
        ("ReLU",),
        ("conv", "20", "50", "5"),
        ("max-pool", "2"),
        ("ReLU",),
        ("conv", "50", "50", "1"),
        ("ReLU",),
        ("Flatten",),
        ("linear", str(50 * 10 * 10), "1000"),
        ("ReLU",),
        ("dropout", "0.5"),
        ("linear", "1000", "2"),
    ]


def test_keras_mlp_structure() -> None:
    net = build(get_architecture("keras-mlp"), num_classes=10)
    assert net.input_shape == (3, 32, 32)
    linears = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]
    assert linears == [(3072, 768), (768, 384), (384, 10)]
    assert net.spec[-1]["type"] == "softmax"


# ----------------------------------------------------------------------------- errors


def test_shape_error_names_layer_index_type_and_input() -> None:
    spec = [
        {"type": "input", "size": 4, "channels": 3},
        {"type": "relu"},
        {"type": "conv", "kernel": 5, "filters": 8},
        {"type": "linear"},
    ]
    msg = error_of(spec)
    assert "layer 2" in msg
    assert "conv" in msg
    assert "3x4x4" in msg
    assert "5x5" in msg


@pytest.mark.parametrize(
    ("layer", "words"),
    [
        ({"type": "max-pool", "kernel": 8}, ["layer 1", "max-pool", "3x6x8"]),
        ({"type": "max-pool", "kernel": 2, "pad": 2}, ["layer 1", "pad 2"]),
        ({"type": "conv", "kernel": 0, "filters": 2}, ["layer 1", "kernel must be"]),
        ({"type": "conv", "kernel": 3, "filters": True}, ["layer 1", "filters must be"]),
        ({"type": "conv", "kernel": 3, "filters": 2, "pad": "valid"}, ["layer 1", "pad"]),
        ({"type": "dropout", "p": 1.0}, ["layer 1", "dropout", "p must be"]),
        ({"type": "dropout", "p": "half"}, ["layer 1", "dropout"]),
    ],
)
def test_bad_layer_parameters(layer: LayerSpec, words: list[str]) -> None:
    msg = error_of([INPUT, layer, {"type": "linear"}])
    for word in words:
        assert word in msg


def test_image_layer_after_features() -> None:
    msg = error_of(
        [INPUT, {"type": "flatten"}, {"type": "conv", "kernel": 1, "filters": 2}, {"type": "linear"}]
    )
    assert "layer 2" in msg and "image input" in msg and "144" in msg


def test_unknown_layer_type() -> None:
    msg = error_of([INPUT, {"type": "convolution-3d"}, {"type": "linear"}])
    assert "layer 1" in msg and "unknown layer type 'convolution-3d'" in msg
    assert "conv" in msg  # lists the known types


def test_unknown_parameter() -> None:
    msg = error_of([INPUT, {"type": "conv", "kernel": 3, "filters": 2, "kernal": 3}, {"type": "linear"}])
    assert "layer 1" in msg and "unknown parameter 'kernal'" in msg and "kernel" in msg


def test_missing_required_parameter() -> None:
    msg = error_of([INPUT, {"type": "conv", "kernel": 3}, {"type": "linear"}])
    assert "layer 1" in msg and "missing parameter 'filters'" in msg


@pytest.mark.parametrize(
    "spec", [[{"type": "conv", "kernel": 3, "filters": 2}, {"type": "linear"}], [{"type": "linear"}]]
)
def test_no_input_layer_first(spec: list[LayerSpec]) -> None:
    assert "layer 0 must be an input layer" in error_of(spec)


def test_second_input_layer() -> None:
    assert "only the first layer may be an input" in error_of([INPUT, INPUT, {"type": "linear"}])


def test_softmax_not_last() -> None:
    msg = error_of([INPUT, {"type": "linear"}, {"type": "softmax"}, {"type": "relu"}])
    assert "layer 2" in msg and "softmax must be the last layer" in msg


def test_final_units_differ_from_classes() -> None:
    msg = error_of([INPUT, {"type": "linear", "units": 5}, {"type": "softmax"}], num_classes=2)
    assert "ends with shape 5" in msg and "2 classes" in msg


def test_network_not_ending_in_features() -> None:
    assert "ends with shape 3x6x8" in error_of([INPUT, {"type": "relu"}])


def test_linear_without_units_that_is_not_last() -> None:
    msg = error_of([INPUT, {"type": "linear"}, {"type": "relu"}, {"type": "linear"}])
    assert "layer 1" in msg and "units is required" in msg


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ([], "non-empty list"),
        ("conv", "non-empty list"),
        ({"layers": []}, "non-empty list"),
        ([INPUT, "relu"], "layer 1 must be a table with a 'type'"),
        ([INPUT, {"kind": "relu"}], "layer 1 must be a table with a 'type'"),
    ],
)
def test_malformed_description(spec: object, words: str) -> None:
    assert words in error_of(spec)


@pytest.mark.parametrize(
    "first",
    [
        {"type": "input", "size": 0},
        {"type": "input", "size": [4]},
        {"type": "input", "size": "big"},
        {"type": "input", "size": 8, "channels": 4},
    ],
)
def test_bad_input_layer(first: LayerSpec) -> None:
    assert "layer 0 (input)" in error_of([first, {"type": "linear"}])


def test_bad_input_layer_error_names_where() -> None:
    with pytest.raises(ArchitectureError, match="my-net.toml"):
        build([{"type": "input", "size": 0}, {"type": "linear"}], 2, where="my-net.toml")


def test_errors_name_where() -> None:
    with pytest.raises(ArchitectureError, match=r"^my-net\.toml: layer 1"):
        build([INPUT, {"type": "nope"}], 2, where="my-net.toml")


def test_unknown_architecture() -> None:
    with pytest.raises(ArchitectureError, match="unknown architecture 'alexnet'") as exc:
        get_architecture("alexnet")
    for known in ARCHITECTURES.names():
        assert known in str(exc.value)


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    ("filename", "text"),
    [
        ("net.toml", SMALL_TOML),
        ("net.yaml", SMALL_YAML),
        ("net.yml", SMALL_YAML),
        ("net.json", json.dumps({"layers": SMALL})),
        ("net.JSON", json.dumps(SMALL)),  # a bare list is accepted too
    ],
)
def test_arch_file_builds_the_same_network(tmp_path: Path, filename: str, text: str) -> None:
    path = tmp_path / filename
    path.write_text(text)
    spec = load_arch_file(path)
    assert spec == validate_spec(SMALL)
    assert same_network(build(spec, 3), build(SMALL, 3))


def test_arch_file_accepts_aliases(tmp_path: Path) -> None:
    path = tmp_path / "net.yaml"
    path.write_text(
        SMALL_YAML.replace("type: conv", "type: Convolutional")
        .replace("max-pool", "max_pooling")
        .replace("type: linear", "type: dense")
    )
    assert load_arch_file(path) == validate_spec(SMALL)


@pytest.mark.parametrize(
    ("filename", "text"),
    [
        ("bad.toml", "[[layers]]\ntype = \n"),
        ("bad.yaml", "layers:\n  - {type: input, size: [1, 2\n"),
        ("bad.json", '{"layers": [{"type": "input",}]}'),
    ],
)
def test_arch_file_parse_error_names_the_file(tmp_path: Path, filename: str, text: str) -> None:
    path = tmp_path / filename
    path.write_text(text)
    with pytest.raises(ArchitectureError, match="cannot parse") as exc:
        load_arch_file(path)
    assert str(path) in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("filename", ["net.txt", "net.py", "net"])
def test_arch_file_bad_extension_names_the_file(tmp_path: Path, filename: str) -> None:
    path = tmp_path / filename
    path.write_text(json.dumps(SMALL))
    with pytest.raises(ArchitectureError, match=r"\.toml, \.yaml or \.json") as exc:
        load_arch_file(path)
    assert str(path) in str(exc.value)


def test_arch_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ArchitectureError, match="cannot read") as exc:
        load_arch_file(path)
    assert str(path) in str(exc.value)


def test_arch_file_without_layers_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "net.toml"
    path.write_text('name = "no layers here"\n')
    with pytest.raises(ArchitectureError, match="non-empty list") as exc:
        load_arch_file(path)
    assert str(path) in str(exc.value)


def test_arch_file_validation_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "net.yaml"
    path.write_text(SMALL_YAML.replace("kernel: 3", "kernal: 3"))
    with pytest.raises(ArchitectureError, match="unknown parameter 'kernal'") as exc:
        load_arch_file(path)
    assert str(exc.value).startswith(str(path))


def test_arch_file_not_text_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "net.toml"
    path.write_bytes(b"\xff\xfe\x00\x01[[layers]]")
    with pytest.raises(ArchitectureError, match="net.toml"):
        load_arch_file(path)


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("convolutional", "conv"),
        ("conv2d", "conv"),
        ("max-pooling", "max-pool"),
        ("maxpool", "max-pool"),
        ("dense", "linear"),
        ("fully-connected", "linear"),
        ("batchnorm", "batch-norm"),
        ("residual", "res-block"),
    ],
)
def test_layer_aliases(alias: str, canonical: str) -> None:
    assert LAYERS.canonical(alias) == canonical
    assert LAYERS.get(alias) is LAYERS.get(canonical)
    assert alias in LAYERS
    assert alias not in LAYERS.names()  # names() lists canonical names only


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("MAX_POOL", "max-pool"),
        (" Conv ", "conv"),
        ("Global_Avg_Pool", "global-avg-pool"),
        ("Max_Pooling", "max-pool"),
        ("DENSE", "linear"),
    ],
)
def test_registry_is_case_and_underscore_insensitive(spelling: str, canonical: str) -> None:
    assert LAYERS.canonical(spelling) == canonical


def test_registry_unknown_name() -> None:
    assert LAYERS.canonical("conv3d") is None
    assert "conv3d" not in LAYERS
    assert 42 not in LAYERS
    with pytest.raises(KeyError):
        LAYERS.get("conv3d")


def test_registry_iterates_sorted_names() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("zeta")(1)
    reg.register("alpha", "a")(2)
    assert list(reg) == reg.names() == ["alpha", "zeta"]


@pytest.mark.parametrize("second", ["conv", "convolutional"], ids=["name", "existing-alias"])
def test_registry_double_registration_raises(second: str) -> None:
    reg: Registry[int] = Registry("layer")
    reg.register("conv", "convolutional")(1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(second)(2)
    assert reg.get("conv") == 1


@pytest.mark.parametrize("alias", ["conv", "convolutional"], ids=["existing-name", "existing-alias"])
def test_registry_duplicate_alias_raises(alias: str) -> None:
    reg: Registry[int] = Registry("layer")
    reg.register("conv", "convolutional")(1)
    with pytest.raises(ValueError):
        reg.register("conv3d", alias)(2)


def test_registry_double_registration_is_normalised() -> None:
    reg: Registry[int] = Registry("layer")
    reg.register("foo-bar")(1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("Foo_Bar")(2)


def test_a_vector_input_and_a_non_class_output_build_a_generator() -> None:
    spec: list[LayerSpec] = [
        {"type": "input", "features": 6},
        {"type": "linear", "units": 2 * 4 * 4},
        {"type": "reshape", "to": [2, 4, 4]},
        {"type": "upsample", "scale": 2},
        {"type": "conv", "kernel": 3, "pad": 1, "filters": 1},
    ]
    net = build(spec, num_classes=3, output=(1, 8, 8))
    assert net.input_shape == (6,) and tuple(net(torch.zeros(2, 6)).shape) == (2, 1, 8, 8)
    with pytest.raises(ArchitectureError, match="not the 1x9x9 it must give"):
        build(spec, num_classes=3, output=(1, 9, 9))
    with pytest.raises(ArchitectureError, match="holds 32 values, the input 12"):
        build([{"type": "input", "features": 12}, {"type": "reshape", "to": [2, 4, 4]}], 3, output=(2, 4, 4))
    with pytest.raises(ArchitectureError, match="features must be a positive integer"):
        build([{"type": "input", "features": 0}, {"type": "linear", "units": 3}], 3)

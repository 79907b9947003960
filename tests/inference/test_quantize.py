"""int8 quantization: the calibration feeds the graph's own input, and the float ends stay float."""

from __future__ import annotations

import dataclasses
import io
import warnings
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch

from pawlab.inference.quantize import SETTINGS, QuantSettings, float_nodes, quantize_int8

CONVS = 16  # with the classifier, twice what SETTINGS leave in float at the ends, and one more


def float_graph(input_name: str, convs: int = CONVS) -> onnx.ModelProto:
    """A conv net as ONNX: normalised float (N, 3, 16, 16) ``input_name`` in, (N, 4) out."""
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()]
    for _ in range(convs - 1):
        layers += [torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU()]
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)]
    net = torch.nn.Sequential(*layers).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the older exporter, as pawlab's graph
        torch.onnx.export(
            net,
            (torch.zeros(2, 3, 16, 16),),
            buffer,  # type: ignore[arg-type]
            input_names=[input_name],
            output_names=["logits"],
            dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def run(graph: onnx.ModelProto, name: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {name: x})[0]
    return out


def int8_convs(graph: onnx.ModelProto) -> list[str]:
    """The names of ``graph``'s Conv and Gemm nodes whose weights come dequantized from int8."""
    dequantized = {n.output[0] for n in graph.graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in graph.graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in dequantized]


def test_a_graph_of_normalised_float_input_is_calibrated_through_its_own_input_name() -> None:
    graph = float_graph("normalised")
    x = np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32)
    all_int8 = QuantSettings(float_first=0, float_last=0)
    quantized = quantize_int8(graph, x[:32], all_int8)
    assert [i.name for i in quantized.graph.input] == ["normalised"]
    assert len(int8_convs(quantized)) == CONVS + 1  # every conv and the classifier
    want, got = run(graph, "normalised", x[32:]), run(quantized, "normalised", x[32:])
    assert got.shape == (8, 4)
    # int8 rounding moves the logits by a little of their spread, not by all of it
    assert np.abs(got - want).max() < 0.2 * np.ptp(want)


def test_the_chosen_settings_leave_the_first_and_last_convolutions_in_float() -> None:
    graph = float_graph("x")
    x = np.random.default_rng(1).standard_normal((16, 3, 16, 16)).astype(np.float32)
    quantized = quantize_int8(graph, x)
    convs = [n.name for n in graph.graph.node if n.op_type in ("Conv", "Gemm")]
    # the stem and first blocks, the head convolution and classifier: only the middle is int8
    kept = CONVS + 1 - SETTINGS.float_first - SETTINGS.float_last
    assert len(int8_convs(quantized)) == kept
    assert not {convs[0], convs[-1]} & set(int8_convs(quantized))


def nodes_before(nodes: Sequence[onnx.NodeProto], n: int) -> int:
    """How many of ``nodes`` come before the (n + 1)-th Conv or Gemm."""
    return [i for i, node in enumerate(nodes) if node.op_type in ("Conv", "Gemm")][n]


def test_float_nodes_counts_compute_nodes_from_both_ends() -> None:
    nodes = onnx.load_from_string(float_graph("x").SerializeToString()).graph.node
    compute = [n.name for n in nodes if n.op_type in ("Conv", "Gemm")]
    ends = set(float_nodes(nodes, dataclasses.replace(SETTINGS, float_first=2, float_last=1)))
    assert set(compute[:2]) | {compute[-1]} <= ends and not set(compute[2:-1]) & ends
    assert float_nodes(nodes, QuantSettings(float_first=0, float_last=0)) == []
    assert len(float_nodes(nodes, QuantSettings(float_first=8, float_last=0))) == nodes_before(nodes, 8)


def test_a_small_network_is_quantized_whole() -> None:
    small = float_graph("x", convs=3)
    quantized = quantize_int8(
        small, np.random.default_rng(2).standard_normal((16, 3, 16, 16)).astype(np.float32)
    )
    assert len(int8_convs(quantized)) == 4

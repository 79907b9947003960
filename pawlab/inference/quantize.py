"""Static int8 quantization of a pawlab graph with onnxruntime, in QDQ format.

Weights are quantized per output channel (a depthwise convolution's channels differ in range
by orders of magnitude: one scale for all of them loses the small ones), activations per
tensor, as uint8 (onnxruntime's fast x86 kernels take uint8 activations and int8 weights:
VNNI's instruction multiplies exactly those), their ranges the min-max of each calibration
batch averaged over the batches (a few extreme activations otherwise stretch a tensor's range
and coarsen the rest). The stem, the first two blocks and the head stay in float
(`QuantSettings.float_first`, ``float_last``): onnxruntime's quantization debugger
(``qdq_loss_debug``) on the flowers model below shows the signal-to-noise ratio of the whole
int8 graph against fp32 falling from 44 dB at the input to 29 after the stem and 15 after the
first depthwise block (its output channels share one activation range), and staying at 6-14
dB from there to the classifier. About an eighth of the multiply-adds in float buys back most
of the loss, at little of the speed.

Measured with bench/export.py on 2 cores of a Xeon with AVX-512 VNNI and AMX, 300 calibration
images, against the fp32 graph in ONNX Runtime on the validation split: the default
EfficientNet-Lite2 transfer models (260x260) of cats/dogs (1,000 images) and flowers5 (679 images
of a split of train/). "agrees": `pawlab.export.check.TOLERANCES` (accuracy and log loss);
bf16's whole rule (`pawlab.inference.agreement.agrees`: also the class of 99.9% of the images,
every probability within 0.1) alone and guarded (`guarded_agreement`: images with a small
top-two margin run again in fp32; the share doing so); speed: images/s against ONNX Runtime's
fp32 graph at batch 32, in the same run:

    model: float parts           accuracy   log loss  max diff  same    bf16 rule  guarded        speed
    cats/dogs: chosen (stem,     +0.10 pts  -0.0006   0.083     99.90%  agrees     0.2%, agrees   1.62x
      blocks 0-1, head)
    cats/dogs: none (all int8)   -0.50 pts  +0.0086   0.71      99.10%  no         4.2%, no       1.67x
    cats/dogs: stem, head        +0.10 pts  -0.0010   0.14      99.90%  no         1.0%, no       1.70x
    cats/dogs: stem, blocks      +0.10 pts  -0.0005   0.085     99.90%  agrees     0.2%, agrees   1.48x
      0-3, head
    flowers: chosen              +0.29 pts  -0.0004   0.13      99.56%  no         19.5%, agrees  1.57x
    flowers: none (all int8)     -1.03 pts  +0.0322   0.67      96.76%  no         67.0%, no      1.60x
    flowers: stem, head          +0.15 pts  -0.0029   0.18      99.12%  no         15.3%, no      1.62x*
    flowers: stem, blocks 0-3,   -0.15 pts  +0.0005   0.11      99.56%  no         8.0%, no       1.46x*
      head
    (* in a run with other work on the machine; the flowers rows without it are from a later
    quiet run of the same timing, 192 images, 7 repeats, in which cats/dogs' chosen and all-int8
    graphs ran at 1.52x and 1.57x: the float parts cost a few percent)

Also tried, on flowers with the chosen float parts: 1,000 calibration images (-0.15 pts,
-0.0003, guarded 18.9%: no better); the stem, the head and every depthwise convolution in
float (-0.15 pts, +0.0162: the loss is not in the depthwise kernels); 7-bit weights
(``reduce_range``, all int8: -1.18 pts, +0.0313). Percentile and entropy calibration keep
every activation of the calibration images (20 GB for Lite0 at 224x224 and 300 images).
On the cats/dogs Lite0 head (224x224), all int8: -0.10 pts, +0.0006, 1.39-2.00x; int8
activations (S8S8) ran at 0.67x fp32.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

CALIBRATION_BATCH = 16  # images per calibration run


# the node types whose position `QuantSettings.float_first` and ``float_last`` count
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class QuantSettings:
    """How a graph is quantized (see `SETTINGS`)."""

    activations: QuantType = QuantType.QUInt8
    weights: QuantType = QuantType.QInt8
    per_channel: bool = True
    method: CalibrationMethod = CalibrationMethod.MinMax
    # min-max ranges averaged over the calibration batches rather than the extremes of all
    moving_average: bool = True
    # ops left in float: the softmax, whose inputs' range calibration images rarely fill
    exclude_ops: tuple[str, ...] = ("Softmax",)
    # every node before the graph's (float_first + 1)-th `COMPUTE_OPS` node, and from its
    # float_last-th last one on, left in float (`float_nodes`): 6 is EfficientNet-Lite's stem
    # and first two blocks, 2 its head convolution and classifier (per-tensor activation
    # ranges lose most at the full-resolution start, where depthwise channels differ most)
    float_first: int = 6
    float_last: int = 2
    reduce_range: bool = False  # 7-bit weights, for CPUs without VNNI whose int8 sums overflow


SETTINGS = QuantSettings()


class _Batches(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime has no type hints
    """Calibration images, `CALIBRATION_BATCH` at a time, as the graph's input ``name``."""

    def __init__(self, images: np.ndarray, name: str) -> None:
        self._name = name
        self._batches: Iterator[np.ndarray] = iter(
            [images[i : i + CALIBRATION_BATCH] for i in range(0, len(images), CALIBRATION_BATCH)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: np.ascontiguousarray(batch)}


def float_nodes(nodes: Sequence[onnx.NodeProto], settings: QuantSettings) -> list[str]:
    """The names of ``nodes`` (a graph's, in its topological order) that ``settings`` leave
    in float: its `exclude_ops`, and those before or after its int8 middle. A graph with fewer
    than twice as many compute nodes as the float ends hold (a small network, quick in float
    anyway) is quantized whole."""
    compute = [i for i, n in enumerate(nodes) if n.op_type in COMPUTE_OPS]
    first, last = settings.float_first, settings.float_last
    if len(compute) < 2 * (first + last):
        first = last = 0
    start = compute[first] if first < len(compute) else len(nodes)  # the first int8 one
    end = len(nodes) if last == 0 else compute[-last] if last <= len(compute) else 0
    return [n.name for i, n in enumerate(nodes) if i < start or i >= end or n.op_type in settings.exclude_ops]


def quantize_int8(
    graph: onnx.ModelProto, calibration: np.ndarray, settings: QuantSettings = SETTINGS
) -> onnx.ModelProto:
    """``graph`` (fp32) with int8 weights and activations in QDQ format, activation ranges from
    ``calibration``: inputs of the graph's first input (``graph.graph.input[0]``), such as
    uint8 (N, H, W, C) training images for pawlab's pixels-in graph, or normalised float
    (N, C, H, W) for a graph that takes those. The graph is first optimized and its shapes
    inferred (onnxruntime's ``quant_pre_process``), as the quantizer expects."""
    with tempfile.TemporaryDirectory(prefix="pawlab-int8-") as tmp:
        fp32, ready, out = Path(tmp, "fp32.onnx"), Path(tmp, "ready.onnx"), Path(tmp, "int8.onnx")
        onnx.save(graph, fp32)
        quant_pre_process(str(fp32), str(ready))
        nodes = onnx.load(ready).graph.node
        quantize_static(
            str(ready),
            str(out),
            _Batches(calibration, graph.graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            activation_type=settings.activations,
            weight_type=settings.weights,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            calibrate_method=settings.method,
            nodes_to_exclude=float_nodes(nodes, settings),
            extra_options={"CalibMovingAverage": settings.moving_average},
        )
        return onnx.load(out)

"""ONNX Runtime as a second way to run a model: its network as an ONNX graph, and a forward pass
through an onnxruntime session that the engine (`pawlab.inference.engine.run_batches`) calls as
it calls a torch module.

The runtime's graph is the inference network alone (batch-norms folded, as `Model` runs it):
normalised float inputs (B, C, H, W) in, the same outputs out (logits, and with an
in-distribution model their logsumexp and the features beside them), so test-time views, the
guard's re-runs and typicality work as they do in torch. `pawlab.export` wraps a network the same
way for other programs, with the pixels' scaling and the softmax inside.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

# 17: what the TorchScript exporter and onnxruntime's quantizer both handle fully
OPSET = 17
INPUTS = (
    "inputs"  # float32 (B, C, H, W), normalised as `pawlab.preprocessing.Preprocessing.inputs` makes them
)
OUTPUTS = "outputs"  # float32 (B, K): what the torch module returns
# Images per session run. onnxruntime's CPU kernels keep small batches' activations in the
# caches as oneDNN does (`pawlab.inference.engine.COMPILED_BATCH`).
ORT_BATCH = 8


def to_graph(
    module: torch.nn.Module,
    example: torch.Tensor,
    input_name: str = INPUTS,
    output_name: str = OUTPUTS,
) -> onnx.ModelProto:
    """``module`` (on the CPU, eval mode) as an ONNX model with a dynamic batch axis, traced on
    ``example`` (its input, batch first).

    The TorchScript exporter (``dynamo=False``): the torch.export one needs ``onnxscript``,
    which pawlab does not otherwise need, and tracing is exact here, since only the batch size
    varies and every shape the network computes from the input's height and width (the
    EfficientNets' "same" padding) is a constant for the model's one input size."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # the exporter's notice that it is the older one, and the tracer's about those constants
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        torch.onnx.export(
            module,
            (example,),
            buffer,  # type: ignore[arg-type]  # a file object works, as its documentation says
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def network_graph(runner: torch.nn.Module, size: tuple[int, int], channels: int) -> onnx.ModelProto:
    """An inference network (what `Model` runs: folded, maybe `WithFeatures`) as the runtime's
    graph: `INPUTS` (B, C, H, W) -> `OUTPUTS`."""
    example = torch.zeros((2, channels, *size), dtype=torch.float32)
    return to_graph(runner.cpu().float().eval(), example)


def session_for(model: str | os.PathLike[str] | bytes, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session on a file or serialized model; ``threads``: intra-op
    threads (default: onnxruntime's, one per core), which do not spin while idle."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    # Its threads sleep between runs rather than spin: the decoding workers need those cores (a
    # whole `pawlab submit` of 10,000 cats/dogs photos, EfficientNet-Lite2, 2 cores of an AMD
    # EPYC, two rounds: int8 90.5 and 94.0 s against 106.2 and 104.4 spinning; fp32 149.7 and
    # 147.1 against 156.5 and 156.6).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OrtForward:
    """A session of a runtime graph called as a torch module is: inputs (B, C, H, W) -> outputs
    (B, K), float32 on the CPU; run `ORT_BATCH` images at a time (``batch_size``, as a
    `pawlab.inference.engine.Compiled` graph has one)."""

    def __init__(self, session: ort.InferenceSession, batch_size: int = ORT_BATCH) -> None:
        self.session, self.batch_size = session, batch_size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # onnxruntime reads a C-contiguous NCHW array; a channels-last tensor is copied once here
        return torch.from_numpy(run_batched(self.session, x.detach().float().cpu().numpy(), self.batch_size))


def run_batched(session: ort.InferenceSession, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """A one-input, one-output session's outputs (N, K) for ``inputs`` (N, ...), run
    ``batch_size`` at a time (an empty (0, K) array for none)."""
    name, output = session.get_inputs()[0].name, session.get_outputs()[0]
    outs = [
        session.run([output.name], {name: np.ascontiguousarray(inputs[i : i + batch_size])})[0]
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(outs) if outs else np.empty((0, output.shape[1]), np.float32)

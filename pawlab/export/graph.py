"""A pawlab model as one ONNX graph: uint8 pixels in, class probabilities out.

The graph holds everything pawlab does after resizing: the channel layout, the scaling to
[0, 1], the normalisation, the network (batch-norms folded, as inference runs it) and the
softmax, so another program only decodes and resizes an image.
"""

from __future__ import annotations

import onnx
import torch

from pawlab.inference.engine import folded
from pawlab.inference.ort import to_graph
from pawlab.preprocessing import Preprocessing

INPUT = "pixels"  # uint8 (N, H, W, C): RGB, or grey for a one-channel model
OUTPUT = "probabilities"  # float32 (N, classes), in the order of the metadata's classes


class PixelsToProbabilities(torch.nn.Module):
    """uint8 pixels (N, H, W, C) -> probabilities (N, classes) through ``network``."""

    mean: torch.Tensor  # (1, C, 1, 1)
    std: torch.Tensor

    def __init__(self, network: torch.nn.Module, pre: Preprocessing) -> None:
        super().__init__()
        self.network = network
        c = pre.channels
        self.register_buffer("mean", torch.tensor(pre.mean[:c], dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std[:c], dtype=torch.float32).view(1, c, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float() / 255.0  # (N, C, H, W) on [0, 1]
        logits: torch.Tensor = self.network((x - self.mean) / self.std)
        return torch.softmax(logits.float(), dim=1)


def to_onnx(network: torch.nn.Module, pre: Preprocessing) -> onnx.ModelProto:
    """``network`` (a pawlab `Network`, on the CPU) with ``pre``'s normalisation as an ONNX
    model with a dynamic batch axis (traced as the runtime's graph is, `pawlab.inference.ort.to_graph`)."""
    module = PixelsToProbabilities(folded(network).cpu().float(), pre).eval()
    example = torch.zeros((2, *pre.size, pre.channels), dtype=torch.uint8)
    return to_graph(module, example, INPUT, OUTPUT)

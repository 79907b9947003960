"""Each validation pass's typicality of the validation images, fitted as training goes.

During an epoch, the penultimate features the network computes anyway (the input of its last
linear layer, captured by a forward pre-hook, also when a head trains on a frozen trunk's
cached features) are summed per class, with their scatter, for the training batches. At the
validation pass the validation images' features are captured the same way, the Mahalanobis
scorer is fitted from those sums (`pawlab.unknown.scorers.mahalanobis_from_sums`), and each
image's typicality is calibrated on the validation scores (`pawlab.unknown.typicality`).

A pass's typicality is a live estimate: its training features are those of the epoch's
augmented images in train mode (dropout on) from weights that change across the epoch. The
model file's in-distribution model, fitted once after training in eval mode, is what
predictions use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pawlab import unknown
from pawlab.models.network import Network
from pawlab.unknown.scorers import mahalanobis_from_sums


class PenultimateFeatures:
    """The inputs of ``network``'s last linear layer, (B, D) float32, captured on every forward
    pass while `capturing`. Raises ValueError for a network without a linear layer."""

    def __init__(self, network: Network) -> None:
        before, _ = unknown.split_last_linear(network.body)
        self.capturing = False
        self.captured: list[torch.Tensor] = []
        self._handle = network.body[len(before)].register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.capturing:
            self.captured.append(args[0].detach().flatten(1).float())

    def start(self) -> None:
        self.captured, self.capturing = [], True

    def take(self) -> torch.Tensor | None:
        """What was captured since `start` (rows in order), None if nothing; stops capturing."""
        found, self.captured, self.capturing = self.captured, [], False
        return torch.cat(found) if found else None

    def remove(self) -> None:
        self._handle.remove()


class FeatureSums:
    """What the Mahalanobis fit needs of the training features, L2-normalised as it reads
    them: per class their count (C,) and sum (C, D) float64, and their scatter (D, D) float32
    (in place, a matrix product per batch)."""

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.counts = torch.zeros(classes, dtype=torch.float64)
        self.sums: torch.Tensor | None = None
        self.scatter: torch.Tensor | None = None

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Features (B, D) of images with ``labels`` (B,)."""
        x = nn.functional.normalize(features.cpu(), dim=1)
        labels = labels.cpu()
        if self.sums is None or self.scatter is None:
            self.sums = torch.zeros(self.classes, x.shape[1], dtype=torch.float64)
            self.scatter = torch.zeros(x.shape[1], x.shape[1])
        self.counts.index_add_(0, labels, torch.ones(len(labels), dtype=torch.float64))
        self.sums.index_add_(0, labels, x.double())
        self.scatter.addmm_(x.T, x)

    def typicality(self, features: torch.Tensor, logits: torch.Tensor) -> np.ndarray | None:
        """(N,) float16 typicality of validation images' features (N, D) and logits (N, C), the
        fit calibrated on them; None before any training features, or of another width."""
        if self.sums is None or self.scatter is None or features.shape[1] != self.sums.shape[1]:
            return None
        fitted = mahalanobis_from_sums(self.counts, self.sums, self.scatter)
        state = unknown.calibrate(fitted, features, logits)
        return unknown.typicality(state, features, logits).numpy().astype(np.float16)

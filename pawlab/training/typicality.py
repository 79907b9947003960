"""Each validation pass's typicality of the validation images, fitted as training goes.

During an epoch, the penultimate features the network computes anyway (the input of its last
linear layer, captured by a forward pre-hook, also when a head trains on a frozen trunk's
cached features) are kept for the epoch's last training batches
(`pawlab.training.callbacks.TypicalityLog` says how many). At the validation pass the
validation images' features are captured the same way, the Mahalanobis scorer is fitted from
the class sums and scatter of the training features
(`pawlab.unknown.scorers.mahalanobis_from_sums`), and each image's typicality is calibrated
on the validation scores (`pawlab.unknown.typicality`).

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


class EpochFeatures:
    """Training features (B, D) and labels (B,) added a batch at a time, kept (float32, at most
    the images of an epoch that `TypicalityLog` asks for) until the validation pass fits on
    them: one matrix product then costs less than one per batch, each of which would read
    and write the whole (D, D) scatter."""

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.features: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def __len__(self) -> int:
        return sum(len(y) for y in self.labels)

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features.append(features.cpu().float())
        self.labels.append(labels.cpu())

    def typicality(self, features: torch.Tensor, logits: torch.Tensor) -> np.ndarray | None:
        """(N,) float16 typicality of validation images' features (N, D) and logits (N, C), the
        Mahalanobis fit from the sums of the training features calibrated on them; None before
        any training features, or of another width."""
        if not self.features or features.shape[1] != self.features[0].shape[1]:
            return None
        x = torch.cat(self.features)
        x = x * x.square().sum(1, keepdim=True).clamp_min(1e-24).rsqrt()  # as "mahalanobis" reads them
        onehot = nn.functional.one_hot(torch.cat(self.labels), self.classes).float()  # (N, C)
        fitted = mahalanobis_from_sums(onehot.sum(0), onehot.T @ x, x.T @ x)
        state = unknown.calibrate(fitted, features, logits)
        return unknown.typicality(state, features, logits).numpy().astype(np.float16)

"""What the loop feeds the network: the order of an epoch, and batches made into inputs.

A set holds either images (uint8, (N, H, W, C)), which `ImageInputs` normalises and
augments and the whole network learns from, or a frozen trunk's cached features ((N, views,
F) float32; see `pawlab.inference.features`), from which `FeatureInputs` takes one view per
image and only the network's head (`Network.head`) learns.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import cast

import numpy as np
import torch

from pawlab.config import AugmentConfig, TrainConfig
from pawlab.inference.engine import infer_batch, predict_outputs
from pawlab.models.network import Network
from pawlab.preprocessing import Preprocessing
from pawlab.training.augment import augment_batch


def epoch_order(labels: np.ndarray, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """The training indices of one epoch: shuffled, ``augment_copies`` times each, or drawn
    with class-balancing weights (``balance=sampler``)."""
    n = len(labels) * cfg.augment_copies
    if cfg.balance == "sampler":
        counts = np.bincount(labels, minlength=int(labels.max()) + 1).astype(np.float64)
        weights = torch.from_numpy(1.0 / counts[labels])
        return torch.multinomial(weights, n, replacement=True, generator=gen)
    return torch.randperm(len(labels), generator=gen).repeat(cfg.augment_copies)[
        torch.randperm(n, generator=gen)
    ]


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Loss weights inversely proportional to class frequency (mean weight 1)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


class ImageInputs:
    """uint8 images (B, H, W, C) -> normalised inputs (B, C, H, W), augmented for training; the
    whole network learns."""

    def __init__(
        self,
        pre: Preprocessing,
        device: torch.device,
        memory_format: torch.memory_format,
        augment: AugmentConfig,
        gen: torch.Generator,
    ) -> None:
        self.pre, self.device, self.memory_format = pre, device, memory_format
        self.augment, self.gen = augment, gen

    def learner(self, network: torch.nn.Module) -> torch.nn.Module:
        """The part of the network that trains."""
        return network

    def batch(self, images: torch.Tensor, augment: bool) -> torch.Tensor:
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None
        if augment and self.augment.enabled:
            transform = partial(augment_batch, cfg=self.augment, gen=self.gen)
        return self.pre.inputs(images, self.device, self.memory_format, transform)

    def logits(self, network: Network, images: np.ndarray, batch_size: int) -> torch.Tensor:
        """fp32 logits (N, classes) of the whole network, on the CPU."""
        # large inputs: small batches, which stay in the CPU's caches
        batch = infer_batch(self.device) if network.input_shape[1] > 96 else batch_size
        channels_last = self.memory_format == torch.channels_last
        return predict_outputs(network, images, self.pre, self.device, batch, channels_last=channels_last)


HEAD_ROWS = 4096  # cached features the head reads per pass when validating (16 MB of Lite2's)


class FeatureInputs:
    """A frozen trunk's cached features (B, views, F): one view per image, a random one when
    augmenting; only the network's head learns."""

    def __init__(self, device: torch.device, gen: torch.Generator) -> None:
        self.device, self.gen = device, gen

    def learner(self, network: torch.nn.Module) -> torch.nn.Module:
        return cast(Network, network).head

    def batch(self, features: torch.Tensor, augment: bool) -> torch.Tensor:
        views = features.shape[1]
        pick = (
            torch.randint(views, (len(features),), generator=self.gen)
            if augment and views > 1
            else torch.zeros(len(features), dtype=torch.long)
        )
        return features[torch.arange(len(features)), pick].to(self.device, non_blocking=True)

    def logits(self, network: Network, features: np.ndarray, batch_size: int = 0) -> torch.Tensor:
        """fp32 logits (N, classes) of the head on the first (plain) view, on the CPU, in
        passes of `HEAD_ROWS` rows (a head is small; ``batch_size`` is for `ImageInputs`)."""
        network.head.eval()
        outs = []
        with torch.inference_mode():
            for start in range(0, len(features), HEAD_ROWS):  # memory-mapped: read a part at a time
                x = torch.from_numpy(np.ascontiguousarray(features[start : start + HEAD_ROWS, 0]))
                outs.append(network.forward_head(x.to(self.device)).float().cpu())
        return torch.cat(outs) if outs else torch.empty(0, network.num_classes)


Inputs = ImageInputs | FeatureInputs

"""What the scorers read: a network's penultimate features, the input of its last linear layer,
and its logits, in one pass."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from pawlab.models.network import Network


def split_last_linear(body: nn.Sequential) -> tuple[nn.Sequential, nn.Sequential]:
    """(the modules before ``body``'s last linear layer, that layer and those after it)."""
    linear = [i for i, m in enumerate(body) if any(isinstance(sub, nn.Linear) for sub in m.modules())]
    if not linear:
        raise ValueError("a network without a linear layer has no penultimate features")
    i = linear[-1]
    return cast(nn.Sequential, body[:i]), cast(nn.Sequential, body[i:])


def features_and_logits(
    network: Network, x: torch.Tensor, *, from_trunk: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (B, C, H, W), or with ``from_trunk`` a frozen trunk's (cached) features (B, F)
    -> (penultimate features (B, D) float32, logits (B, classes) float32)."""
    before, after = split_last_linear(network.head if from_trunk else network.body)
    with torch.inference_mode():
        features = before(x)
        logits = after(features)
    return features.flatten(1).float(), logits.float()

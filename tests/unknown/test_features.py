"""A network's penultimate features and logits, what the in-distribution scorers read."""

from __future__ import annotations

import torch

from pawlab.models import build
from pawlab.unknown import features_and_logits, split_last_linear
from tests.conftest import TINY


def test_features_are_the_last_linear_layers_input_and_logits_its_output() -> None:
    network = build(TINY, 3).eval()
    x = torch.randn(5, 3, 16, 16)
    features, logits = features_and_logits(network, x)
    assert features.shape == (5, 8 * 8 * 8) and features.dtype == torch.float32
    with torch.inference_mode():
        torch.testing.assert_close(logits, network(x))
    before, after = split_last_linear(network.body)
    assert len(before) + len(after) == len(network.body)


def test_features_of_a_head_read_a_trunks_cached_features() -> None:
    head_only = [
        {"type": "input", "features": 12},
        {"type": "linear", "units": 6},
        {"type": "relu"},
        {"type": "linear"},
    ]
    network = build(head_only, 2).eval()
    x = torch.randn(4, 12)
    features, logits = features_and_logits(network, x, from_trunk=True)
    assert features.shape == (4, 6) and bool((features >= 0).all())
    with torch.inference_mode():
        torch.testing.assert_close(logits, network(x))

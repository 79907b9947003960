"""Live typicality: the features a training loop keeps fit as `pawlab.unknown` does on all of
features themselves, and a network's penultimate features are captured only while asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pawlab import unknown
from pawlab.models import build
from pawlab.training.typicality import EpochFeatures, PenultimateFeatures
from tests.conftest import TINY


def test_features_added_a_batch_at_a_time_fit_as_pawlab_unknown_on_all_of_them() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (300,), generator=g)
    features = 3 * torch.eye(3, 12)[labels] + torch.randn(300, 12, generator=g)
    queries = torch.randn(80, 12, generator=g) + 3 * torch.eye(3, 12)[torch.arange(80) % 3]
    logits = torch.zeros(80, 3)
    kept = EpochFeatures(3)
    for x, y in zip(features.split(32), labels.split(32), strict=True):
        kept.add(x, y)
    assert len(kept) == 300
    typical = kept.typicality(queries, logits)
    fitted = unknown.fit("mahalanobis", features, torch.zeros(300, 3), labels)
    expected = unknown.typicality(unknown.calibrate(fitted, queries, logits), queries, logits).numpy()
    assert typical is not None and typical.dtype == np.float16 and typical.shape == (80,)
    assert np.allclose(np.sort(typical), np.arange(80) / 80, atol=1e-3)  # calibrated on the queries
    assert np.abs(typical - expected).max() <= 2 / 80 + 1e-3  # at most two near-ties apart
    assert kept.typicality(queries[:, :5], logits) is None  # features of another width


def test_features_are_captured_only_between_start_and_take() -> None:
    network = build(TINY, 2)
    features = PenultimateFeatures(network)
    x = torch.randn(4, 3, 16, 16)
    network(x)
    assert features.take() is None
    features.start()
    network(x)
    network(x[:1])
    captured = features.take()
    assert captured is not None and captured.shape == (5, 8 * 8 * 8)
    expected, _ = unknown.features_and_logits(network, x)
    assert torch.allclose(captured[:4], expected)
    features.remove()
    features.start()
    network(x)
    assert features.take() is None


def test_a_network_without_a_linear_layer_has_no_penultimate_features() -> None:
    network = build(
        [
            {"type": "input", "size": 8, "channels": 1},
            {"type": "conv", "kernel": 8, "filters": 2},
            {"type": "flatten"},
        ],
        2,
    )
    with pytest.raises(ValueError):
        PenultimateFeatures(network)

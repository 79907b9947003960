"""The loop's objective: cross-entropy for classifiers by default, or one of the caller's
(a conditional VAE's evidence lower bound, with and without a guide)."""

from __future__ import annotations

import io

import numpy as np
import torch

from pawlab.config import RuntimeConfig, TrainConfig
from pawlab.data import ImageSet
from pawlab.models import build
from pawlab.models.generative import ConditionalVAE
from pawlab.preprocessing import Preprocessing
from pawlab.training import Trainer
from pawlab.training.callbacks import ProgressPrinter
from pawlab.training.objectives import Classification, ConditionalVAELoss
from tests.conftest import TINY_DECODER as DECODER

PIXELS = Preprocessing(size=(8, 8), channels=1, mean=(0.0,), std=(1.0,))
ENCODER = [
    {"type": "input", "size": 8, "channels": 1},
    {"type": "linear", "units": 16},
    {"type": "relu"},
    {"type": "linear", "units": 4},
]


def _digits(n: int = 96) -> ImageSet:
    """Three 'classes' of 8x8 images: a bar in the top, middle or bottom rows."""
    labels = np.arange(n) % 3
    images = np.zeros((n, 8, 8, 1), np.uint8)
    for i, c in enumerate(labels):
        images[i, 1 + 2 * c : 3 + 2 * c, 1:7] = 255
    return ImageSet(images, labels.astype(np.int64), [str(i) for i in range(n)], ["a", "b", "c"])


def _vae() -> ConditionalVAE:
    torch.manual_seed(0)
    return ConditionalVAE(build(ENCODER, 3, output=(4,)), build(DECODER, 3, output=(1, 8, 8)), 3)


def test_a_vae_objective_trains_through_the_loop_with_a_guide_from_its_epoch() -> None:
    data, vae = _digits(), _vae()
    guided_from: list[int] = []

    def guide(x: torch.Tensor) -> torch.Tensor:  # reads the class from where the ink is
        guided_from.append(1)
        rows = x.mean(dim=(1, 3))  # (B, 8)
        return torch.stack([rows[:, 1:3].sum(1), rows[:, 3:5].sum(1), rows[:, 5:7].sum(1)], 1) * 10

    objective = ConditionalVAELoss(beta=1.0, guide=guide, guide_weight=1.0, guide_from=3)
    out = io.StringIO()
    config = TrainConfig(epochs=3, lr=1e-2, batch_size=16)
    trainer = Trainer(
        vae,
        data,
        data,
        config,
        PIXELS,
        [ProgressPrinter(out, bar=False)],
        stream=out,
        runtime=RuntimeConfig(precision="fp32", progress=False),
        objective=objective,
    )
    state = trainer.fit()
    losses = [m["val_loss"] for m in state.history]
    assert losses[-1] < losses[0]
    assert "val_guide_accuracy" in state.metrics and "val guide accuracy" in out.getvalue()
    assert "val acc" not in out.getvalue()  # a generator has no accuracy to print
    assert guided_from  # the guide ran (from epoch 3)


def test_classification_is_the_default_objective_with_the_configs_loss_settings(
    tree_set: None = None,
) -> None:
    data = _digits()
    net = build([{"type": "input", "size": 8, "channels": 1}, {"type": "linear"}], 3)
    config = TrainConfig(epochs=1, batch_size=16, label_smoothing=0.1, balance="weights")
    trainer = Trainer(
        net, data, data, config, Preprocessing.for_input((1, 8, 8)), runtime=RuntimeConfig(progress=False)
    )
    assert isinstance(trainer.objective, Classification)
    assert trainer.objective.label_smoothing == 0.1 and trainer.objective.weights is not None
    validation = trainer.validate()
    metrics = validation.metrics
    assert set(metrics) == {"val_loss", "val_accuracy"} and validation.probs is not None

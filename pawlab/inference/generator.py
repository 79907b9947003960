"""A trained conditional generator loaded from its model file: a class and a latent vector in,
an image out.

A generator file is a pawlab model file whose header says ``"kind": "generator"``; its
``architecture`` is the decoder's layer list (input: the latent and a one-hot class), its
``classes`` the classes it draws and ``latent`` the latent's length; the latent's prior is
N(0, I), and ``output`` says how the network's outputs become pixels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pawlab import checkpoint
from pawlab.errors import DataError, ModelFileError
from pawlab.models.generative import decoder_input
from pawlab.models.network import Network, build

GENERATOR_KIND = "generator"
OUTPUTS = ("bernoulli-logits",)  # each output a logit of the pixel's ink: sigmoid -> [0, 1]


class Generator:
    """``generate(labels, latents)``: class indices (N,) and latents (N, L) -> uint8 images
    (N, H, W) for one channel, else (N, H, W, C)."""

    def __init__(self, network: Network, classes: list[str], meta: dict[str, Any], path: Path | None = None):
        self.network = network.eval()
        self.classes, self.meta, self.path = classes, meta, path
        self.latent = network.input_shape[0] - len(classes)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Generator:
        ck = checkpoint.load(path)
        kind = checkpoint.model_kind(ck.meta)
        if kind != GENERATOR_KIND:
            raise ModelFileError(f"{path}: a {kind} model file, not a generator")
        with checkpoint.damaged(path, "generator file"):
            classes = checkpoint.check_classes(path, ck.meta.get("classes"))
            c, h, w = (int(v) for v in ck.meta["image_shape"])
            if ck.meta.get("output") not in OUTPUTS:
                raise ValueError(f"unknown output {ck.meta.get('output')!r}")
            network = build(ck.meta["architecture"], len(classes), str(path), output=(c, h, w))
            checkpoint.load_weights(path, network, ck.model_state)
        return cls(network, classes, ck.meta, Path(path))

    def _check(self, labels: np.ndarray, latents: np.ndarray) -> None:
        if labels.ndim != 1 or latents.shape != (len(labels), self.latent):
            raise DataError(
                f"generator: need labels (N,) and latents (N, {self.latent}), "
                f"got {labels.shape} and {latents.shape}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise DataError(f"generator: labels must be in 0..{len(self.classes) - 1}")

    def generate(
        self, labels: np.ndarray | list[int], latents: np.ndarray, batch_size: int = 1024
    ) -> np.ndarray:
        y = np.asarray(labels, dtype=np.int64)
        z = np.asarray(latents, dtype=np.float32)
        self._check(y, z)
        out = []
        with torch.inference_mode():
            for i in range(0, len(y), batch_size):
                x = decoder_input(
                    torch.from_numpy(z[i : i + batch_size]),
                    torch.from_numpy(y[i : i + batch_size]),
                    len(self.classes),
                )
                ink = torch.sigmoid(self.network(x).float())  # (B, C, H, W) in [0, 1]
                out.append(ink.mul(255).round().byte().permute(0, 2, 3, 1).numpy())
        c, h, w = self.network.shapes[-1]
        images = np.concatenate(out) if out else np.zeros((0, h, w, c), np.uint8)
        return images[..., 0] if c == 1 else images

    __call__ = generate


def load_generator(path: str | os.PathLike[str]) -> Generator:
    """Load a generator file written by ``pawlab spec train-digits``."""
    return Generator.load(path)

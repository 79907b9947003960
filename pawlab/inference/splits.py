"""The labelled images a model's own data gives to check it on: its training and validation
splits as training read them (`training_splits`), and seeded samples of them.

Calibrating int8 (on training images), checking a faster route or an export against fp32 and
fitting the in-distribution model (on validation images) all read them here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pawlab.config import DataConfig
from pawlab.data import Dataset, ImageSet, load_dataset
from pawlab.data.datasets import layout_of
from pawlab.errors import DataError
from pawlab.inference.model import Model


def training_splits(
    model: Model,
    data: str | os.PathLike[str],
    *,
    workers: int = 0,
    progress: bool = True,
    purpose: str = "to calibrate the in-distribution model on",
) -> Dataset:
    """``data``'s training and validation splits as training read them for ``model``: at its
    input size, channels and resize, split as recorded in the model file when ``data`` is its
    own source (else its own split, or a seeded 80/20 one), labels in the model's class order.
    ``purpose``: what the validation images are for, in the error when there are none."""
    pre = model.preprocessing
    record = model.meta.get("training", {}).get("data", {})
    origin = record.get("origin") or record
    resolved = str(Path(data).expanduser().resolve())
    own = resolved in (record.get("source"), origin.get("source"))
    default = DataConfig()
    config = DataConfig(
        size=pre.size[0],
        resize=pre.resize,
        workers=workers,
        val_fraction=float(origin.get("val_fraction", default.val_fraction)) if own else default.val_fraction,
        seed=int(origin.get("seed", default.seed)) if own else default.seed,
        layout=layout_of(origin) if own else default.layout,
    )
    ds = load_dataset(data, config, channels=pre.channels, progress=progress)
    if sorted(ds.classes) != sorted(model.classes):
        raise DataError(
            f"{data}: its classes ({', '.join(ds.classes)}) are not the model's ({', '.join(model.classes)})"
        )
    if not len(ds.validation):
        raise DataError(f"{data}: no validation images {purpose}")
    order = np.array([model.classes.index(c) for c in ds.classes], dtype=np.int64)
    for part in (ds.train, ds.validation):
        part.labels, part.classes = order[part.labels], list(model.classes)
    ds.classes = list(model.classes)
    return ds


@dataclass(frozen=True)
class CheckImages:
    """Labelled images of a model's classes at its input size: ``validation`` to check on,
    ``train`` to calibrate on; ``description`` says which, in words."""

    validation: ImageSet
    train: ImageSet
    description: str


def check_images(
    model: Model,
    data: str | os.PathLike[str] | None = None,
    workers: int = 0,
    progress: bool = False,
    purpose: str = "to check the export on",
    remedy: str = "give --data DIR (labelled images of its classes) or --no-check",
) -> CheckImages:
    """The model's own data split as in its training (the source its file records), or
    ``data``'s split (`training_splits`); a one-line `DataError` when the recorded source is not
    here and no ``data`` is given (saying what they were for, ``purpose``, and the ``remedy``),
    or when the classes differ."""
    recorded = model.meta.get("training", {}).get("data", {}).get("source")
    if data is None:
        if not recorded or not Path(recorded).exists():
            where = model.path or "the model"
            raise DataError(
                f"{where}: its training data ({recorded or 'not recorded'}) is not here {purpose}: {remedy}"
            )
        data = recorded
    source = str(Path(data).expanduser().resolve())
    ds = training_splits(model, source, workers=workers, progress=progress, purpose=purpose)
    origin = ds.origin
    split = "its own" if ds.presplit else f"fraction {origin.get('val_fraction')}, seed {origin.get('seed')}"
    return CheckImages(ds.validation, ds.train, f"{source} validation split ({split})")


def sample(images: ImageSet, limit: int, seed: int = 0) -> ImageSet:
    """At most ``limit`` of ``images``, a seeded sample across the classes, in their order."""
    if len(images) <= limit:
        return images
    rows = np.sort(np.random.default_rng(seed).permutation(len(images))[:limit])
    return ImageSet(images.images[rows], images.labels[rows], [images.names[i] for i in rows], images.classes)

"""The models a server answers with, each by name, with its engine thread."""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pawlab.data.decode import load_image
from pawlab.errors import ConfigError, ModelFileError
from pawlab.inference import Model, load_model
from pawlab.inference.engine import COMPILE_MIN_IMAGES, infer_batch
from pawlab.serve.batcher import Batcher

_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Batching:
    """How an engine gathers requests: ``max_batch`` images (None: the engine's batch for the
    device), waiting at most ``max_wait_ms`` for them; at most ``max_queue`` images waiting."""

    max_batch: int | None = None
    max_wait_ms: float = 5.0
    max_queue: int = 256


def model_names(specs: Sequence[str | os.PathLike[str]]) -> list[tuple[str, Path]]:
    """``PATH`` or ``NAME=PATH`` -> (name, path): a path's name is its file's stem. A name is
    letters, digits, ``_``, ``.`` and ``-`` (it goes in URLs); each is used once."""
    named: list[tuple[str, Path]] = []
    for spec in specs:
        text = os.fspath(spec)
        name, sep, path = text.partition("=")
        if not (sep and _NAME.fullmatch(name)):
            name, path = Path(text).stem, text
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{text}: name the model NAME={text} (letters, digits, _ . -)")
        if name in (n for n, _ in named):
            raise ConfigError(f"{text}: a second model named {name!r}; name one NAME=PATH")
        named.append((name, Path(path)))
    if not named:
        raise ConfigError("no model to serve: name at least one model file")
    return named


def file_digest(path: Path) -> str:
    """BLAKE2b-128 of a file's bytes, in hex."""
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
    except OSError as exc:
        raise ModelFileError(f"{path}: {exc.strerror or exc}") from None


@dataclass
class Served:
    """A model the server answers with: its name, its file's digest, and its engine."""

    name: str
    model: Model
    digest: str
    batcher: Batcher

    @classmethod
    def load(
        cls,
        name: str,
        path: Path,
        batching: Batching,
        *,
        tta: bool = False,
        device: str = "auto",
        precision: str = "auto",
        compile: str = "auto",
    ) -> Served:
        """Load the model at ``path`` (as `load_model`; ``compile="auto"`` compiles, a server
        being a long job) and start its engine, warmed up: the first request pays no
        compiling."""
        model = load_model(path, device, precision, compile)
        model.prepare_for(COMPILE_MIN_IMAGES, tta)

        def run(images: np.ndarray) -> np.ndarray:
            return model.predict_proba(images, tta=tta)

        pre = model.preprocessing
        run(np.zeros((1, *pre.size, pre.channels), np.uint8))
        max_batch = batching.max_batch or infer_batch(model.device)
        batcher = Batcher(run, name, max_batch, batching.max_wait_ms / 1000, batching.max_queue)
        return cls(name, model, file_digest(path), batcher)

    def decode(self, data: bytes, filename: str | None) -> np.ndarray:
        """An upload -> uint8 (H, W, C) at the model's size; a `DataError` naming it."""
        upload = io.BytesIO(data)
        upload.name = filename or "the request body"
        pre = self.model.preprocessing
        return load_image(upload, pre.size, pre.channels, pre.resize)

    def answer(self, probs: np.ndarray, filename: str | None, top: int | None) -> dict[str, Any]:
        """One image's answer: ``pawlab predict --json``'s object (``image``: the upload's
        file name), its ``top`` most probable classes only if given, then the model's name and
        digest."""
        body = self.model.prediction(probs).to_json()
        if top is not None:
            ranked = sorted(body["probability-map"].items(), key=lambda cp: -cp[1])
            body["probability-map"] = dict(ranked[:top])
        return {"image": filename, **body, "model": self.name, "digest": self.digest}

"""The models a server answers with, each by name, with its engine thread, and the version of
its model file that the engine runs now."""

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

from pawlab import runlog, unknown
from pawlab.data.decode import load_image
from pawlab.errors import ConfigError, ModelFileError
from pawlab.inference import Model, load_model
from pawlab.inference.engine import COMPILE_MIN_IMAGES, infer_batch
from pawlab.serve.batcher import Batcher, Run

_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Batching:
    """How an engine gathers requests: ``max_batch`` images (None: the engine's batch for the
    device), waiting at most ``max_wait_ms`` for them; at most ``max_queue`` images waiting."""

    max_batch: int | None = None
    max_wait_ms: float = 5.0
    max_queue: int = 256


@dataclass(frozen=True)
class Loading:
    """How a server loads each model file: as `load_model` (``compile="auto"`` compiles, a
    server being a long job), with test-time augmentation or not; an image less typical than
    ``unknown_threshold`` is answered as unknown (`Model.unknown_threshold`)."""

    tta: bool = False
    device: str = "auto"
    precision: str = "auto"
    compile: str = "auto"
    unknown_threshold: float = unknown.DEFAULT_THRESHOLD
    runtime: str = "auto"

    def __post_init__(self) -> None:
        unknown.check_threshold(self.unknown_threshold, "unknown_threshold")


def model_names(specs: Sequence[str | os.PathLike[str]]) -> list[tuple[str, Path]]:
    """``PATH`` or ``NAME=PATH`` -> (name, path): a file's name is its stem, a directory's (a
    training run) its own name. A name is letters, digits, ``_``, ``.`` and ``-`` (it goes in
    URLs); each is used once."""
    named: list[tuple[str, Path]] = []
    for spec in specs:
        text = os.fspath(spec)
        name, sep, path = text.partition("=")
        if not (sep and _NAME.fullmatch(name)):
            given = Path(text)
            name, path = given.resolve().name if given.is_dir() else given.stem, text
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{text}: name the model NAME={text} (letters, digits, _ . -)")
        if name in (n for n, _ in named):
            raise ConfigError(f"{text}: a second model named {name!r}; name one NAME=PATH")
        named.append((name, Path(path)))
    if not named:
        raise ConfigError("no model to serve: name at least one model file")
    return named


def run_model_file(run_dir: Path) -> Path:
    """The model file a training run writes: its config.json's ``"model"``, else
    ``RUN_DIR/model.safetensors``."""
    written = (runlog.read_config(run_dir) or {}).get("model")
    return Path(written) if isinstance(written, str) else run_dir / runlog.MODEL


def file_digest(path: Path) -> str:
    """BLAKE2b-128 of a file's bytes, in hex."""
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
    except OSError as exc:
        raise ModelFileError(f"{path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class Version:
    """A model file as loaded and warmed up: what an engine runs, and the digest of the file
    that its answers carry."""

    model: Model
    digest: str
    path: Path
    run: Run

    @classmethod
    def load(cls, path: Path, loading: Loading) -> Version:
        """Load the model at ``path``, prepared and warmed up: its first batch pays no compiling."""
        model = load_model(path, loading.device, loading.precision, loading.compile, loading.runtime)
        model.unknown_threshold = loading.unknown_threshold
        model.prepare_for(COMPILE_MIN_IMAGES, loading.tta)
        tta = loading.tta

        def run(images: np.ndarray) -> np.ndarray:  # (N, classes + 1): probabilities, typicality
            probs, typical = model.predict_scored(images, tta=tta)
            return np.column_stack([probs, typical if typical is not None else np.full(len(probs), np.nan)])

        model.warm_up(tta)
        return cls(model, file_digest(path), path, run)

    def misfit(self, other: Version) -> str | None:
        """Why ``other`` cannot answer in this one's place (the uploads are decoded for this
        one's input), or None."""
        mine, theirs = self.model, other.model
        if theirs.classes != mine.classes:
            return f"classes {theirs.classes} differ from the served {mine.classes}"
        a, b = mine.preprocessing, theirs.preprocessing
        if (b.size, b.channels, b.resize) != (a.size, a.channels, a.resize):
            return (
                f"input {b.size[0]}x{b.size[1]}x{b.channels} ({b.resize}) differs from the served "
                f"{a.size[0]}x{a.size[1]}x{a.channels} ({a.resize})"
            )
        return None


@dataclass
class Served:
    """A model the server answers with: its name, its engine, and how its files are loaded."""

    name: str
    batcher: Batcher
    loading: Loading

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
        unknown_threshold: float = unknown.DEFAULT_THRESHOLD,
        runtime: str = "auto",
    ) -> Served:
        """Load the model at ``path`` (`Version.load`) and start its engine."""
        loading = Loading(tta, device, precision, compile, unknown_threshold, runtime)
        return cls.start(name, path, batching, loading)

    @classmethod
    def start(cls, name: str, path: Path, batching: Batching, loading: Loading) -> Served:
        version = Version.load(path, loading)
        max_batch = batching.max_batch or infer_batch(version.model.device)
        batcher = Batcher(version, name, max_batch, batching.max_wait_ms / 1000, batching.max_queue)
        return cls(name, batcher, loading)

    @property
    def version(self) -> Version:
        """The version the next batch runs."""
        engine = self.batcher.engine
        assert isinstance(engine, Version)
        return engine

    @property
    def model(self) -> Model:
        return self.version.model

    @property
    def digest(self) -> str:
        return self.version.digest

    def decode(self, data: bytes, filename: str | None) -> np.ndarray:
        """An upload -> uint8 (H, W, C) at the model's size; a `DataError` naming it."""
        upload = io.BytesIO(data)
        upload.name = filename or "the request body"
        pre = self.model.preprocessing
        return load_image(upload, pre.size, pre.channels, pre.resize)

    def answer(
        self, scored: np.ndarray, filename: str | None, top: int | None, ran: Version
    ) -> dict[str, Any]:
        """One image's answer from its row of the engine's output (probabilities, typicality):
        ``pawlab predict --json``'s object (``image``: the upload's file name), its ``top`` most
        probable classes only if given, then the model's name and the digest of the version
        that ``ran`` it."""
        typical = None if np.isnan(scored[-1]) else float(scored[-1])
        body = ran.model.prediction(scored[:-1], typicality=typical).to_json()
        if top is not None:
            ranked = sorted(body["probability-map"].items(), key=lambda cp: -cp[1])
            body["probability-map"] = dict(ranked[:top])
        return {"image": filename, **body, "model": self.name, "digest": ran.digest}

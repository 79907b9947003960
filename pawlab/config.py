"""Typed, frozen configurations for data, augmentation and training.

The CLI only parses flags into these; each validates itself on construction, so a bad value
fails early with a message that names the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from pawlab.errors import ConfigError

OPTIMIZERS = ("sgd", "rmsprop", "adagrad", "adam", "adamw")


def _check(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{name}: {message}")


@dataclass(frozen=True)
class DataConfig:
    """How a source becomes arrays: target size and the train/validation split."""

    size: int = 64
    val_fraction: float = 0.2
    seed: int = 0
    workers: int = 0  # 0: one per CPU core

    def __post_init__(self) -> None:
        _check(1 <= self.size <= 4096, "size", f"must be between 1 and 4096, got {self.size}")
        _check(
            0.0 < self.val_fraction < 1.0,
            "val_fraction",
            f"must be strictly between 0 and 1, got {self.val_fraction}",
        )
        _check(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")


@dataclass(frozen=True)
class AugmentConfig:
    """Batch augmentation applied on the fly during training (never at evaluation).

    rotate: maximum rotation in degrees (uniform in [-rotate, rotate]).
    noise: maximum standard deviation of Gaussian pixel noise, on the [0, 1] pixel scale;
        each image draws its own deviation uniformly in [0, noise].
    flip: random horizontal flips.
    """

    rotate: float = 0.0
    noise: float = 0.0
    flip: bool = False

    def __post_init__(self) -> None:
        _check(0.0 <= self.rotate <= 180.0, "augment.rotate", f"must be in [0, 180], got {self.rotate}")
        _check(0.0 <= self.noise <= 1.0, "augment.noise", f"must be in [0, 1], got {self.noise}")

    @property
    def enabled(self) -> bool:
        return self.rotate > 0 or self.noise > 0 or self.flip

    @classmethod
    def parse(cls, text: str) -> AugmentConfig:
        """Parse the CLI form: ``rotate=25,noise=0.25,flip`` (empty or ``none``: no augmentation)."""
        text = text.strip()
        if text in ("", "none"):
            return cls()
        values: dict[str, Any] = {}
        known = {f.name for f in fields(cls)}
        for part in text.split(","):
            key, sep, raw = part.strip().partition("=")
            key = key.strip()
            if key not in known:
                raise ConfigError(f"augment: unknown option {key!r} (known: {', '.join(sorted(known))})")
            if key == "flip":
                values[key] = raw.strip().lower() not in ("0", "false", "no") if sep else True
                continue
            if not sep:
                raise ConfigError(f"augment: {key} needs a value, e.g. {key}=0.25")
            try:
                values[key] = float(raw)
            except ValueError:
                raise ConfigError(f"augment.{key}: not a number: {raw!r}") from None
        return cls(**values)

    def describe(self) -> str:
        parts = []
        if self.rotate:
            parts.append(f"rotate={self.rotate:g}")
        if self.noise:
            parts.append(f"noise={self.noise:g}")
        if self.flip:
            parts.append("flip")
        return ",".join(parts) or "none"


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``epochs=None`` trains until interrupted."""

    epochs: int | None = 10
    optimizer: str = "adam"
    lr: float | None = None  # None: the optimizer's default below
    batch_size: int = 64
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd and rmsprop
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    device: str = "auto"  # auto: cuda when present, else cpu
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs is not None:
            _check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        _check(
            self.optimizer in OPTIMIZERS,
            "optimizer",
            f"unknown optimizer {self.optimizer!r} (known: {', '.join(OPTIMIZERS)})",
        )
        if self.lr is not None:
            _check(math.isfinite(self.lr) and self.lr > 0, "lr", f"must be a positive number, got {self.lr}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "device",
            f"must be auto, cpu or cuda[:N], got {self.device!r}",
        )

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def with_(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)


DEFAULT_LR = {"sgd": 0.01, "rmsprop": 1e-3, "adagrad": 1e-2, "adam": 1e-3, "adamw": 1e-3}

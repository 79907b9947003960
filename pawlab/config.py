"""Typed, frozen configurations for data, augmentation and training.

The CLI only parses flags into these; each validates itself on construction, so a bad value
fails early with a message that names the field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from pawlab.errors import ConfigError
from pawlab.optimizers import DEFAULT_OPTIMIZER, DEFAULT_SCHEDULE, OPTIMIZERS, SCHEDULES

RESIZE_POLICIES = ("squash", "crop")  # how an image is fitted to the input size (see pawlab.data.decode)
LAYOUTS = ("auto", "split", "classes")  # how a source's top folders are read (see pawlab.data.catalog)


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
    resize: str = "squash"  # squash: whole image, aspect not kept; crop: shorter side fits, centre kept
    follow_links: bool = False  # a source folder's links to places outside it are followed too
    # auto: split folders only where nothing else stands beside them; split: the top's split folders
    # are the split; classes: every top folder is a class
    layout: str = "auto"

    def __post_init__(self) -> None:
        _check(1 <= self.size <= 4096, "size", f"must be between 1 and 4096, got {self.size}")
        _check(self.resize in RESIZE_POLICIES, "resize", f"must be squash or crop, got {self.resize!r}")
        _check(self.layout in LAYOUTS, "layout", f"must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
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
    crop: random resized crops keeping at least this fraction of the area (0: off), with
        aspect ratios in [3/4, 4/3], resized back to the input size.
    jitter: colour jitter strength: brightness, contrast and saturation each scaled by a
        factor in [1 - jitter, 1 + jitter].
    shift: maximum translation, a fraction of the width and height, each way.
    scale: maximum zoom change: each image scaled by a factor in [1 - scale, 1 + scale]
        (what keeps a digit whole, where a crop would cut it).
    """

    rotate: float = 0.0
    noise: float = 0.0
    flip: bool = False
    crop: float = 0.0
    jitter: float = 0.0
    shift: float = 0.0
    scale: float = 0.0

    def __post_init__(self) -> None:
        _check(0.0 <= self.rotate <= 180.0, "augment.rotate", f"must be in [0, 180], got {self.rotate}")
        _check(0.0 <= self.noise <= 1.0, "augment.noise", f"must be in [0, 1], got {self.noise}")
        _check(0.0 <= self.crop < 1.0, "augment.crop", f"must be in [0, 1), got {self.crop}")
        _check(0.0 <= self.jitter < 1.0, "augment.jitter", f"must be in [0, 1), got {self.jitter}")
        _check(0.0 <= self.shift <= 0.5, "augment.shift", f"must be in [0, 0.5], got {self.shift}")
        _check(0.0 <= self.scale < 1.0, "augment.scale", f"must be in [0, 1), got {self.scale}")

    @property
    def enabled(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

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
        parts = [
            f"{f.name}={getattr(self, f.name):g}"
            for f in fields(self)
            if f.name != "flip" and getattr(self, f.name)
        ]
        if self.flip:
            parts.append("flip")
        return ",".join(parts) or "none"


# training's: int8 is a frozen backbone's features only (in onnxruntime), the head trains in fp32
PRECISIONS = ("auto", "fp32", "bf16", "int8")
# what runs a trained model's images (`pawlab.inference.routes`), and a frozen backbone's in
# training (`pawlab.inference.feature_routes`): a runtime and a precision
INFERENCE_RUNTIMES = ("auto", "torch", "onnxruntime")
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16", "int8")


def check_route(runtime: str, precision: str, device: str) -> None:
    """A one-line `ConfigError` for a runtime or precision pawlab does not know, or a pair that
    cannot run: int8 in torch, bf16 in onnxruntime, onnxruntime on a GPU."""
    if runtime not in INFERENCE_RUNTIMES:
        raise ConfigError(f"runtime: must be one of {', '.join(INFERENCE_RUNTIMES)}, got {runtime!r}")
    if precision not in INFERENCE_PRECISIONS:
        raise ConfigError(f"precision: must be one of {', '.join(INFERENCE_PRECISIONS)}, got {precision!r}")
    if runtime == "torch" and precision == "int8":
        raise ConfigError("precision int8 runs in onnxruntime: use --runtime onnxruntime (or auto)")
    if runtime == "onnxruntime" and precision == "bf16":
        raise ConfigError("precision bf16 runs in torch: use --runtime torch (or auto)")
    if runtime == "onnxruntime" and device not in ("auto", "cpu"):
        raise ConfigError(f"runtime onnxruntime runs on the CPU, not {device}: use --runtime torch")


BALANCE = ("none", "weights", "sampler")
# What `pawlab train DATA --backbone` (no name) and `transfer_architecture()` use. Chosen on
# cats_and_dogs_filtered/train only (5-fold cross-validation, 3 seeds, the TRANSFER head;
# bench/transfer.py cv): Lite2 alone had the best accuracy (99.60%) and a log loss (0.0163)
# within noise of the best combination (Lite1+Lite2, 0.0159), for about half its feature time;
# Lite0 alone: 99.13%, 0.0254.
DEFAULT_BACKBONE = "efficientnet_lite2"
DEFAULT_ARCH = "cortex-cnn"  # what `pawlab train` builds when given no --arch nor --backbone

MONITORS = {"val_loss": "min", "val_accuracy": "max"}


@dataclass(frozen=True)
class TrainConfig:
    """One training run's recipe, saved with the run. ``epochs=None`` trains until interrupted
    (Ctrl-C or SIGTERM). How it executes (device, precision, progress) is a `RuntimeConfig`."""

    epochs: int | None = 10
    optimizer: str = DEFAULT_OPTIMIZER  # a name of pawlab.optimizers.OPTIMIZERS
    lr: float | None = None  # None: the optimizer's default
    batch_size: int = 64  # in all: under DDP each of N processes takes batch_size / N
    weight_decay: float | None = None  # None: the optimizer's default (0.01 for adamw, else 0)
    decay_all: bool = False  # decay biases and normalisation weights too (by default they are spared)
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    schedule: str = DEFAULT_SCHEDULE  # the learning rate over the run: a name of SCHEDULES
    step_every: int = 10  # step schedule: epochs between decays
    step_gamma: float = 0.1  # step schedule: factor per decay
    label_smoothing: float = 0.0
    balance: str = "none"  # imbalanced classes: none, weights (loss weights) or sampler
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    augment_copies: int = 1  # augmented copies of each training image per epoch
    monitor: str = "val_loss"  # what "best" means for the checkpoint and early stopping
    patience: int | None = None  # early stopping: epochs without improvement
    seed: int = 0  # the initialisation, shuffling and augmentation; also the split unless split_seed
    split_seed: int | None = None  # the train/validation split (None: seed), to re-initialise on one split
    cache_features: bool = True  # a frozen backbone's features are computed once and cached
    # with cached features and flips: the mirrored views are computed only while the training
    # split has fewer images than this (None: always); they double the feature pass
    mirror_below: int | None = None
    # fastai's fine_tune: after the head is trained on a frozen backbone, this many epochs with
    # the backbone unfrozen (at `fine_tune_lr`, spread as `lr_spread` says)
    fine_tune_epochs: int = 0
    fine_tune_lr: float | None = None  # the head's rate while fine-tuning (None: lr / 30)
    # discriminative learning rates: the head's rate / the first backbone stage's, geometric in
    # between (1: one rate for all)
    lr_spread: float = 1.0
    schedule_start: int = 0  # the epoch where the schedule starts (a fine-tuning phase's first)

    @property
    def data_seed(self) -> int:
        """The seed of the train/validation split."""
        return self.seed if self.split_seed is None else self.split_seed

    def __post_init__(self) -> None:
        if self.epochs is not None:
            _check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        _check(
            self.optimizer in OPTIMIZERS.names(),
            "optimizer",
            f"unknown optimizer {self.optimizer!r} (known: {', '.join(OPTIMIZERS.names())})",
        )
        if self.lr is not None:
            _check(math.isfinite(self.lr) and self.lr > 0, "lr", f"must be a positive number, got {self.lr}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        if self.weight_decay is not None:
            _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(
            self.schedule in SCHEDULES.names(),
            "schedule",
            f"unknown schedule {self.schedule!r} (known: {', '.join(SCHEDULES.names())})",
        )
        endless = [name for name in SCHEDULES.names() if not SCHEDULES.get(name).needs_epochs]
        _check(
            self.epochs is not None or self.schedule in endless,
            "schedule",
            f"{self.schedule} needs a number of epochs; use {' or '.join(endless)} with --forever",
        )
        _check(self.step_every >= 1, "step_every", f"must be >= 1, got {self.step_every}")
        _check(0 < self.step_gamma <= 1, "step_gamma", f"must be in (0, 1], got {self.step_gamma}")
        _check(
            0 <= self.label_smoothing < 1, "label_smoothing", f"must be in [0, 1), got {self.label_smoothing}"
        )
        _check(
            self.balance in BALANCE, "balance", f"must be one of {', '.join(BALANCE)}, got {self.balance!r}"
        )
        _check(self.augment_copies >= 1, "augment_copies", f"must be >= 1, got {self.augment_copies}")
        _check(
            self.monitor in MONITORS, "monitor", f"must be one of {', '.join(MONITORS)}, got {self.monitor!r}"
        )
        if self.patience is not None:
            _check(self.patience >= 1, "patience", f"must be >= 1, got {self.patience}")
        if self.mirror_below is not None:
            _check(self.mirror_below >= 1, "mirror_below", f"must be >= 1, got {self.mirror_below}")
        _check(self.fine_tune_epochs >= 0, "fine_tune_epochs", f"must be >= 0, got {self.fine_tune_epochs}")
        _check(
            self.fine_tune_lr is None or (math.isfinite(self.fine_tune_lr) and self.fine_tune_lr > 0),
            "fine_tune_lr",
            f"must be a positive number, got {self.fine_tune_lr}",
        )
        _check(
            math.isfinite(self.lr_spread) and self.lr_spread >= 1,
            "lr_spread",
            f"must be a number >= 1, got {self.lr_spread}",
        )
        _check(
            self.schedule_start >= 0 and (self.epochs is None or self.schedule_start < self.epochs),
            "schedule_start",
            f"must be >= 0 and below epochs, got {self.schedule_start}",
        )

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else OPTIMIZERS.get(self.optimizer).lr

    @property
    def decay(self) -> float:
        """The weight decay used: as given (0 included), else the optimizer's default."""
        if self.weight_decay is not None:
            return self.weight_decay
        return OPTIMIZERS.get(self.optimizer).weight_decay

    def mirrored_views(self, train_images: int) -> bool:
        """Whether a frozen backbone's cached features of ``train_images`` training images
        include their mirrors (a random one of the two views per image and epoch)."""
        return self.augment.flip and (self.mirror_below is None or train_images < self.mirror_below)

    def with_(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = asdict(self.augment)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["augment"] = AugmentConfig(**d.get("augment", {}))
        return cls(**values)


@dataclass(frozen=True)
class RuntimeConfig:
    """How a run executes, not what it learns: never part of the saved recipe, so a resumed run
    (or a preset) takes any of these afresh."""

    device: str = "auto"  # auto: cuda when present, else cpu
    precision: str = "auto"  # auto: bf16 autocast where the hardware has fast bf16, else fp32
    channels_last: bool = True  # the memory format of images in training
    compile: bool = False  # torch.compile the network
    progress: bool = True  # progress bars and per-epoch lines
    # what computes a frozen backbone's features: torch, onnxruntime or auto
    # (`pawlab.inference.feature_routes`)
    runtime: str = "auto"

    def __post_init__(self) -> None:
        _check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "device",
            f"must be auto, cpu or cuda[:N], got {self.device!r}",
        )
        _check(
            self.precision in PRECISIONS,
            "precision",
            f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
        )
        check_route(self.runtime, self.precision, self.device)

    def with_(self, **changes: Any) -> RuntimeConfig:
        return replace(self, **changes)

"""Training: one plain loop with named events, and callbacks for everything else.

Events, in order: ``before_fit``, then per epoch ``before_epoch``, per batch
``before_batch``/``after_batch``, then ``before_validation``/``after_validation`` and
``after_epoch``; finally ``after_fit`` (also after Ctrl-C). Checkpoints, progress output and
early stopping are callbacks; the loop itself knows nothing of them.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pawlab import checkpoint
from pawlab._version import __version__
from pawlab.augment import augment_batch
from pawlab.config import DataConfig, TrainConfig
from pawlab.data import Dataset, ImageSet, load_dataset
from pawlab.errors import ConfigError
from pawlab.models import (
    LayerSpec,
    Network,
    build,
    get_architecture,
    input_shape,
    validate_spec,
    with_input_size,
)
from pawlab.preprocessing import Preprocessing

# ----------------------------------------------------------------------------- loop


@dataclass
class TrainState:
    """What callbacks can read (and a few things they may set)."""

    epoch: int = 0  # 1-based number of the epoch running or just finished
    batch: int = 0
    batch_loss: float = math.nan
    batch_size: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # this epoch's, after validation
    history: list[dict[str, float]] = field(default_factory=list)
    best: float | None = None  # best monitored value so far
    improved: bool = False  # set by the checkpoint callback for this epoch
    stop: bool = False  # set by a callback to end training after this epoch
    interrupted: bool = False  # Ctrl-C or SIGTERM


class Callback:
    """Override any of the event methods; ``order`` sorts callbacks (lower runs first)."""

    order = 0

    def before_fit(self, trainer: Trainer) -> None: ...
    def before_epoch(self, trainer: Trainer) -> None: ...
    def before_batch(self, trainer: Trainer) -> None: ...
    def after_batch(self, trainer: Trainer) -> None: ...
    def before_validation(self, trainer: Trainer) -> None: ...
    def after_validation(self, trainer: Trainer) -> None: ...
    def after_epoch(self, trainer: Trainer) -> None: ...
    def after_fit(self, trainer: Trainer) -> None: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def make_optimizer(params: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    lr, wd = cfg.learning_rate, cfg.weight_decay
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=wd)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd or 0.01)


def batches(n: int, batch_size: int, gen: torch.Generator | None) -> list[torch.Tensor]:
    """Index batches over n items, shuffled when a generator is given."""
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    return list(order.split(batch_size))


class Trainer:
    """Runs epochs of a network over in-memory image sets and fires callback events."""

    def __init__(
        self,
        network: Network,
        train_set: ImageSet,
        val_set: ImageSet,
        config: TrainConfig,
        preprocessing: Preprocessing,
        callbacks: Sequence[Callback] = (),
        checkpoint_meta: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.network = network.to(self.device)
        self.preprocessing = preprocessing
        self.train_set, self.val_set = train_set, val_set
        self.optimizer = make_optimizer(self.network.parameters(), config)
        self.callbacks = sorted(callbacks, key=lambda c: c.order)
        self.state = TrainState()
        self.checkpoint_meta = checkpoint_meta or {}
        self.gen = torch.Generator().manual_seed(config.seed)
        # uint8 (N, H, W, C) kept on the host; one batch at a time goes to the device.
        self._train_x = torch.from_numpy(train_set.images)
        self._train_y = torch.from_numpy(train_set.labels)

    # -- events
    def emit(self, event: str) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.train_set) / self.config.batch_size)

    def _inputs(self, images: torch.Tensor, augment: bool) -> torch.Tensor:
        x = self.preprocessing.to_unit(images).to(self.device, non_blocking=True)  # (B, C, H, W)
        if augment and self.config.augment.enabled:
            x = augment_batch(x, self.config.augment, self.gen)
        return self.preprocessing.normalize(x)

    def train_epoch(self) -> float:
        self.network.train()
        total, count = 0.0, 0
        for i, idx in enumerate(batches(len(self.train_set), self.config.batch_size, self.gen)):
            self.state.batch, self.state.batch_size = i, len(idx)
            self.emit("before_batch")
            x = self._inputs(self._train_x[idx], augment=True)
            y = self._train_y[idx].to(self.device)
            loss = F.cross_entropy(self.network(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.state.batch_loss = loss.item()
            total += self.state.batch_loss * len(idx)
            count += len(idx)
            self.emit("after_batch")
        return total / max(count, 1)

    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        self.network.eval()
        logits = predict_logits(
            self.network, self.val_set.images, self.preprocessing, self.device, self.config.batch_size * 2
        )
        y = torch.from_numpy(self.val_set.labels)
        return {
            "val_loss": F.cross_entropy(logits, y).item(),
            "val_accuracy": (logits.argmax(1) == y).float().mean().item(),
        }

    def fit(self) -> TrainState:
        self.emit("before_fit")
        epochs = self.config.epochs
        start = self.state.epoch + 1
        numbers = itertools.count(start) if epochs is None else range(start, epochs + 1)
        try:
            for epoch in numbers:
                self.state.epoch, self.state.improved = epoch, False
                self.emit("before_epoch")
                t0 = time.perf_counter()
                train_loss = self.train_epoch()
                self.emit("before_validation")
                metrics = {"epoch": float(epoch), "train_loss": train_loss, **self.validate()}
                metrics["seconds"] = time.perf_counter() - t0
                self.state.metrics = metrics
                self.emit("after_validation")
                self.state.history.append(metrics)
                self.emit("after_epoch")
                if self.state.stop:
                    break
        except KeyboardInterrupt:
            self.state.interrupted = True
        self.emit("after_fit")
        return self.state

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the current weights, metrics and training state as a model file."""
        meta = {
            **self.checkpoint_meta,
            "metrics": self.state.metrics,
            "history": self.state.history,
            "training": {
                **self.checkpoint_meta.get("training", {}),
                "epoch": self.state.epoch,
                "best": self.state.best,
            },
        }
        return checkpoint.save(path, self.network.state_dict(), meta, self.optimizer.state_dict())


def predict_logits(
    network: torch.nn.Module,
    images: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    batch_size: int = 256,
) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float logits (N, classes) on the CPU, in eval mode."""
    network.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = pre.normalize(pre.to_unit(images[start : start + batch_size]).to(device))
            out.append(network(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


# ----------------------------------------------------------------------------- callbacks


class BestCheckpoint(Callback):
    """Save the model whenever the monitored validation metric improves (atomically)."""

    order = 10

    def __init__(self, path: str | os.PathLike[str], monitor: str = "val_loss", mode: str = "min") -> None:
        self.path = Path(path)
        self.monitor, self.mode = monitor, mode

    def _better(self, value: float, best: float | None) -> bool:
        if best is None or math.isnan(best):
            return not math.isnan(value)
        return value < best if self.mode == "min" else value > best

    def after_validation(self, trainer: Trainer) -> None:
        value = trainer.state.metrics[self.monitor]
        if self._better(value, trainer.state.best):
            trainer.state.best = value
            trainer.state.improved = True
            trainer.save(self.path)


class EarlyStopping(Callback):
    """Stop when the checkpoint's metric has not improved for ``patience`` epochs."""

    order = 20

    def __init__(self, patience: int) -> None:
        self.patience, self.wait = patience, 0

    def after_epoch(self, trainer: Trainer) -> None:
        self.wait = 0 if trainer.state.improved else self.wait + 1
        if self.wait >= self.patience:
            trainer.state.stop = True


class ProgressPrinter(Callback):
    """A bar within each epoch (on a terminal) and one summary line per epoch."""

    order = 30

    def __init__(self, stream: TextIO | None = None, bar: bool = True) -> None:
        self.stream = stream or sys.stdout
        self.bar_enabled = bar
        self.bar: tqdm[Any] | None = None
        self.t0 = 0.0
        self.seen = 0

    def before_epoch(self, trainer: Trainer) -> None:
        self.t0, self.seen = time.perf_counter(), 0
        total = trainer.config.epochs
        label = f"epoch {trainer.state.epoch}" + (f"/{total}" if total else "")
        if self.bar_enabled:
            self.bar = tqdm(
                total=trainer.batches_per_epoch,
                desc=label,
                unit="batch",
                leave=False,
                disable=None,
                file=sys.stderr,
            )

    def after_batch(self, trainer: Trainer) -> None:
        self.seen += trainer.state.batch_size
        if self.bar is not None:
            rate = self.seen / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix(loss=f"{trainer.state.batch_loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
            self.bar.update()

    def after_epoch(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        m = trainer.state.metrics
        total = trainer.config.epochs
        n = f"{trainer.state.epoch}/{total}" if total else f"{trainer.state.epoch}"
        mark = "  * saved" if trainer.state.improved else ""
        print(
            f"epoch {n:>7}  train loss {m['train_loss']:.4f}  val loss {m['val_loss']:.4f}  "
            f"val acc {m['val_accuracy']:.4f}  {m['seconds']:.1f}s{mark}",
            file=self.stream,
            flush=True,
        )

    def after_fit(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
        if trainer.state.interrupted:
            print("interrupted: stopping (the best model so far is saved)", file=self.stream, flush=True)


# ----------------------------------------------------------------------------- public API


@dataclass
class TrainResult:
    model_path: Path
    history: list[dict[str, float]]
    best: dict[str, float]  # the metrics of the saved (best) epoch
    classes: list[str]
    interrupted: bool
    seconds: float


def resolve_architecture(arch: str | Sequence[LayerSpec]) -> list[LayerSpec]:
    """A registered name or a layer list -> a validated layer list."""
    if isinstance(arch, str):
        return get_architecture(arch)
    return validate_spec(list(arch))


def train(
    data: str | os.PathLike[str] | Dataset,
    out: str | os.PathLike[str],
    arch: str | Sequence[LayerSpec] = "cortex-cnn",
    config: TrainConfig = TrainConfig(),
    *,
    size: int | None = None,
    val_fraction: float = 0.2,
    workers: int = 0,
    callbacks: Sequence[Callback] = (),
    patience: int | None = None,
    stream: TextIO | None = None,
) -> TrainResult:
    """Train a network on ``data`` (a prepared folder, any source `prepare` accepts, or a
    loaded `Dataset`) and write the best model (lowest validation loss) to ``out``.
    """
    start = time.perf_counter()
    stream = stream or sys.stdout
    spec = resolve_architecture(arch)
    if size is not None:
        spec = with_input_size(spec, size)
    c, h, w = input_shape(spec)
    if h != w:
        raise ConfigError("size: non-square inputs are not supported by the data loader yet")
    if isinstance(data, Dataset):
        ds = data
        if ds.size != (h, w) or ds.train.images.shape[-1] != c:
            raise ConfigError(f"data: loaded at {ds.size} but the network expects {c}x{h}x{w}")
    else:
        ds = load_dataset(
            data,
            DataConfig(size=h, val_fraction=val_fraction, seed=config.seed, workers=workers),
            channels=c,
            progress=config.progress,
        )
    torch.manual_seed(config.seed)
    network = build(spec, num_classes=len(ds.classes))
    pre = Preprocessing.for_input((c, h, w))
    meta = {
        "pawlab_version": __version__,
        "architecture": spec,
        "classes": ds.classes,
        "preprocessing": pre.to_json(),
        "training": {
            "config": _config_json(config),
            "data": {
                "source": ds.source,
                "presplit": ds.presplit,
                "val_fraction": val_fraction,
                "seed": config.seed,
                "train_count": len(ds.train),
                "validation_count": len(ds.validation),
            },
            "monitor": "val_loss",
        },
    }
    cbs: list[Callback] = [BestCheckpoint(out), ProgressPrinter(stream, bar=config.progress), *callbacks]
    if patience is not None:
        cbs.append(EarlyStopping(patience))
    trainer = Trainer(network, ds.train, ds.validation, config, pre, cbs, meta)
    print(
        f"training {len(ds.train)} images ({', '.join(ds.classes)}), validating on {len(ds.validation)}, "
        f"{c}x{h}x{w} on {trainer.device}, {config.optimizer} lr {config.learning_rate:g}, "
        f"augment {config.augment.describe()}",
        file=stream,
        flush=True,
    )
    state = trainer.fit()
    if not state.history:
        raise KeyboardInterrupt  # stopped before the first epoch ended: nothing was saved
    best_epoch = min(state.history, key=lambda m: m["val_loss"])
    return TrainResult(
        Path(out), state.history, best_epoch, ds.classes, state.interrupted, time.perf_counter() - start
    )


def _config_json(config: TrainConfig) -> dict[str, Any]:
    d = asdict(config)
    d["augment"] = asdict(config.augment)
    return d

"""Training: one plain loop with named events; everything else is a callback.

Events, in order: ``before_fit``, then per epoch ``before_epoch``, per batch
``before_batch``/``after_batch``, then ``before_validation``/``after_validation`` and
``after_epoch``; finally ``after_fit`` (also after Ctrl-C or SIGTERM). Checkpoints, the
resumable state, the metrics log, progress output, early stopping and the NaN guard are
callbacks (`pawlab.callbacks`); the loop knows nothing of them.

Under ``torchrun`` the loop is data-parallel (DDP): every process draws the same shuffled
order and takes its own share of each batch; gradients are averaged; only rank 0 writes.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from pawlab import checkpoint
from pawlab._features import frozen_trunk, trunk_features
from pawlab._infer import AGREE_MAX_PROB_DIFF, MAX_RERUN, check_agreement, infer_batch, predict_outputs
from pawlab._version import __version__
from pawlab.augment import augment_batch
from pawlab.callbacks import (
    BestCheckpoint,
    Callback,
    EarlyStopping,
    LastState,
    MetricsLog,
    NaNGuard,
    ProgressPrinter,
    is_better,
)
from pawlab.config import DataConfig, TrainConfig
from pawlab.data import Dataset, ImageSet, load_dataset
from pawlab.errors import ConfigError, ModelFileError
from pawlab.models import (
    LayerSpec,
    Network,
    build,
    get_architecture,
    input_shape,
    preprocessing_for,
    validate_spec,
    with_input_size,
)
from pawlab.preprocessing import Preprocessing

__all__ = ["Callback", "TrainResult", "TrainState", "Trainer", "resume", "train"]


@dataclass
class TrainState:
    """What callbacks can read (and a few things they may set)."""

    epoch: int = 0  # epochs completed; during an epoch, the 1-based number of the running one
    batch: int = 0
    batch_loss: float = math.nan
    batch_size: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # this epoch's, after validation
    history: list[dict[str, float]] = field(default_factory=list)
    best: float | None = None  # best value of the monitored metric so far
    best_epoch: int = 0
    improved: bool = False  # set by the checkpoint callback for this epoch
    stop: bool = False  # set by a callback to end training after this epoch
    interrupted: bool = False  # Ctrl-C or SIGTERM


# ----------------------------------------------------------------------------- building blocks


def resolve_device(name: str) -> torch.device:
    if name not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", name):
        raise ConfigError(f"device: must be auto, cpu or cuda[:N], got {name!r}")
    if name == "auto":
        if dist.is_available() and dist.is_initialized() and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast: asked for, or ``auto`` where the hardware runs it fast."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def make_optimizer(params: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    lr, wd = cfg.learning_rate, cfg.decay
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=0.0, weight_decay=wd)
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def param_groups(network: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The trainable parameters in optimizer groups, each with its ``lr_scale``. With
    ``cfg.lr_spread`` > 1 and a trainable backbone: one group per backbone stage, from the input
    side, then the rest (the head); their scales rise geometrically from 1 / lr_spread to 1
    (fastai's discriminative learning rates)."""
    from pawlab.layers import BackboneFeatures

    trainable = [p for p in network.parameters() if p.requires_grad]
    backbones = [m for m in network.modules() if isinstance(m, BackboneFeatures) and not m.frozen]
    if cfg.lr_spread <= 1 or not backbones:
        return [{"params": trainable, "lr_scale": 1.0}]
    stages = [
        [p for m in stage for p in m.parameters() if p.requires_grad] for stage in backbones[0].net.stages()
    ]
    stages = [s for s in stages if s]
    seen = {id(p) for s in stages for p in s}
    groups = [*stages, [p for p in trainable if id(p) not in seen]]
    n = len(groups)
    return [
        {"params": g, "lr_scale": cfg.lr_spread ** (-(n - 1 - i) / (n - 1))}
        for i, g in enumerate(groups)
        if g
    ]


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The schedule's multiplier of the base learning rate at optimizer step ``step`` (counted
    from the first epoch; the schedule runs from epoch ``cfg.schedule_start``)."""
    step = max(0, step - cfg.schedule_start * steps_per_epoch)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return float(cfg.step_gamma ** ((step // steps_per_epoch) // cfg.step_every))
    assert cfg.epochs is not None
    total = max(1, (cfg.epochs - cfg.schedule_start) * steps_per_epoch)
    t = min(step / total, 1.0)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    # one-cycle: linear warm-up over the first 30% from lr/25, then cosine down to lr/1e4
    warm = 0.3
    if t < warm:
        return 1 / 25 + (1 - 1 / 25) * t / warm
    return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (t - warm) / (1 - warm)))


def epoch_order(labels: np.ndarray, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """The training indices of one epoch: shuffled, ``augment_copies`` times each, or drawn
    with class-balancing weights (``balance=sampler``)."""
    n = len(labels) * cfg.augment_copies
    if cfg.balance == "sampler":
        counts = np.bincount(labels, minlength=int(labels.max()) + 1).astype(np.float64)
        weights = torch.from_numpy(1.0 / counts[labels])
        return torch.multinomial(weights, n, replacement=True, generator=gen)
    return torch.randperm(len(labels), generator=gen).repeat(cfg.augment_copies)[
        torch.randperm(n, generator=gen)
    ]


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Loss weights inversely proportional to class frequency (mean weight 1)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


# ----------------------------------------------------------------------------- the loop


class Trainer:
    """Runs epochs of a network over in-memory image sets and fires callback events.

    With ``head_from`` the sets hold a frozen trunk's features (N, views, F) instead of
    images: only ``network.body[head_from:]`` runs (a random view per image and epoch when
    augmenting), and the whole network is what gets saved.
    """

    def __init__(
        self,
        network: Network,
        train_set: ImageSet,
        val_set: ImageSet,
        config: TrainConfig,
        preprocessing: Preprocessing,
        callbacks: Sequence[Callback] = (),
        checkpoint_meta: dict[str, Any] | None = None,
        stream: TextIO | None = None,
        head_from: int | None = None,
    ) -> None:
        self.config = config
        self.head_from = head_from
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0
        self.stream = stream or sys.stdout
        self.device = resolve_device(config.device)
        self.bf16 = use_bf16(config.precision, self.device)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.network = network.to(self.device).to(memory_format=self.memory_format)  # type: ignore[call-overload]
        self.head: torch.nn.Module = self.network if head_from is None else self.network.body[head_from:]
        self.model: torch.nn.Module = self.head
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.head, device_ids=ids)
        if config.compile:
            self.model = torch.compile(self.model)  # type: ignore[assignment]
        self.preprocessing = preprocessing
        self.train_set, self.val_set = train_set, val_set
        # frozen parts (a pretrained backbone) have no gradients and no optimizer state
        self.optimizer = make_optimizer(param_groups(self.network, config), config)
        self.callbacks = sorted(callbacks, key=lambda c: c.order)
        self.state = TrainState()
        self.checkpoint_meta = checkpoint_meta or {}
        self.gen = torch.Generator().manual_seed(config.seed)  # shuffling: the same on every rank
        self.aug_gen = torch.Generator().manual_seed(config.seed * 1000 + self.rank + 1)
        self.steps = 0  # optimizer steps taken
        self.loss_weights = (
            class_weights(train_set.labels, len(train_set.classes)).to(self.device)
            if config.balance == "weights"
            else None
        )
        # uint8 (N, H, W, C) kept on the host; one batch at a time goes to the device.
        self._train_x = torch.from_numpy(train_set.images)
        self._train_y = torch.from_numpy(train_set.labels)

    # -- events and helpers
    def emit(self, event: str) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self)

    def log(self, message: str) -> None:
        if self.is_main:
            print(message, file=self.stream, flush=True)

    @property
    def per_process_batch(self) -> int:
        return max(1, math.ceil(self.config.batch_size / self.world_size))

    @property
    def batches_per_epoch(self) -> int:
        per_process = len(self.train_set) * self.config.augment_copies // self.world_size
        return math.ceil(per_process / self.per_process_batch)

    @property
    def lr(self) -> float:  # the head's (the largest) learning rate
        return max(float(g["lr"]) for g in self.optimizer.param_groups)

    def _set_lr(self) -> None:
        factor = lr_factor(self.config, self.steps, self.batches_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.learning_rate * factor * group.get("lr_scale", 1.0)

    def _inputs(self, images: torch.Tensor, augment: bool) -> torch.Tensor:
        if self.head_from is not None:  # features (B, views, F): one view per image
            views = images.shape[1]
            pick = (
                torch.randint(views, (len(images),), generator=self.aug_gen)
                if augment and views > 1
                else torch.zeros(len(images), dtype=torch.long)
            )
            return images[torch.arange(len(images)), pick].to(self.device, non_blocking=True)
        # uint8 (B, H, W, C) -> (B, C, H, W) laid out in the training memory format while still
        # one byte a value, then float in [0, 1]
        x = (
            images.to(self.device, non_blocking=True)
            .permute(0, 3, 1, 2)
            .contiguous(memory_format=self.memory_format)
        )
        x = x.float().div_(255.0)
        if augment and self.config.augment.enabled:
            x = augment_batch(x, self.config.augment, self.aug_gen)
        return self.preprocessing.normalize(x).contiguous(memory_format=self.memory_format)

    # -- one epoch
    def train_epoch(self) -> tuple[float, float]:
        """(mean training loss, images per second of this process)."""
        self.model.train()
        total, count = 0.0, 0
        t0 = time.perf_counter()
        order = epoch_order(self.train_set.labels, self.config, self.gen)
        if self.distributed:
            # every process takes an equal share (a few images of the epoch's tail are left out),
            # so that all take the same number of steps: DDP's gradient exchange needs that
            order = order[: len(order) // self.world_size * self.world_size][self.rank :: self.world_size]
        for i, idx in enumerate(order.split(self.per_process_batch)):
            self.state.batch, self.state.batch_size = i, len(idx)
            self.emit("before_batch")
            self._set_lr()
            x = self._inputs(self._train_x[idx], augment=True)
            y = self._train_y[idx].to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(x)
            loss = F.cross_entropy(
                logits.float(), y, weight=self.loss_weights, label_smoothing=self.config.label_smoothing
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.steps += 1
            self.state.batch_loss = loss.item()
            total += self.state.batch_loss * len(idx)
            count += len(idx)
            self.emit("after_batch")
        seconds = max(time.perf_counter() - t0, 1e-9)
        if self.distributed:  # the loss over every process's share
            self._average_buffers()
            sums = torch.tensor([float(total), float(count)], dtype=torch.float64, device=self.device)
            dist.all_reduce(sums)
            return float(sums[0]) / max(float(sums[1]), 1.0), count / seconds
        return total / max(count, 1), count / seconds

    def _average_buffers(self) -> None:
        """Batch-norm statistics are updated by each process on its own share: average them
        so that every process validates and saves the same model."""
        for buf in self.network.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf.div_(self.world_size)

    def val_feature_logits(self, rows: np.ndarray | None = None) -> torch.Tensor:
        """fp32 logits (N, classes) of the head on the cached validation features (``rows``: some)."""
        self.head.eval()
        feats_np = self.val_set.images[:, 0] if rows is None else self.val_set.images[rows, 0]
        with torch.inference_mode():
            feats = torch.from_numpy(np.ascontiguousarray(feats_np)).to(self.device)
            logits: torch.Tensor = self.head(feats).float().cpu()
        return logits

    def validate(self) -> dict[str, float]:
        """Loss and accuracy on the whole validation set (computed alike on every rank)."""
        # fp32 even when training in bf16: the saved metrics are what `evaluate` will report
        if self.head_from is not None:
            logits = self.val_feature_logits()
        else:
            logits = predict_outputs(
                self.network,
                self.val_set.images,
                self.preprocessing,
                self.device,
                # large inputs: small batches, which stay in the CPU's caches
                infer_batch(self.device) if self.network.input_shape[1] > 96 else self.config.batch_size * 2,
                channels_last=self.config.channels_last,
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
                train_loss, rate = self.train_epoch()
                self.emit("before_validation")
                metrics = {
                    "epoch": float(epoch),
                    "train_loss": train_loss,
                    **self.validate(),
                    "lr": self.lr,
                    "images_per_s": rate * self.world_size,
                }
                metrics["seconds"] = time.perf_counter() - t0
                self.state.metrics = metrics
                self.state.history.append(metrics)  # the same dict: callbacks see one record
                self.emit("after_validation")
                self.emit("after_epoch")
                if self.state.stop:
                    break
        except KeyboardInterrupt:
            self.state.interrupted = True
            if not self.state.history or self.state.history[-1]["epoch"] != self.state.epoch:
                self.state.epoch -= 1  # the running epoch did not finish: a resume starts it again
        self.emit("after_fit")
        return self.state

    # -- state
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write weights, metrics and the full training state as a model file."""
        meta = {
            **self.checkpoint_meta,
            "metrics": self.state.metrics,
            "history": self.state.history,
            "training": {
                **self.checkpoint_meta.get("training", {}),
                "epoch": self.state.epoch,
                "steps": self.steps,
                "best": self.state.best,
                "best_epoch": self.state.best_epoch,
                "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks if cb.state_dict()},
            },
        }
        rng = {
            "shuffle": self.gen.get_state(),
            "augment": self.aug_gen.get_state(),
            "torch": torch.get_rng_state(),
        }
        return checkpoint.save(path, self.network.state_dict(), meta, self.optimizer.state_dict(), rng)

    def load_state(self, ck: checkpoint.Checkpoint) -> None:
        """Continue from a checkpoint written by `save` (weights, optimizer, epoch, RNG, best)."""
        self.network.load_state_dict(ck.model_state)
        if ck.optimizer_state is not None:
            self.optimizer.load_state_dict(ck.optimizer_state)
        t = ck.meta.get("training", {})
        self.state.epoch = int(t.get("epoch", 0))
        self.steps = int(t.get("steps", 0))
        self.state.best = t.get("best")
        self.state.best_epoch = int(t.get("best_epoch", 0))
        self.state.history = list(ck.meta.get("history", []))
        self.state.metrics = dict(ck.meta.get("metrics", {}))
        states = t.get("callbacks", {})
        for cb in self.callbacks:
            if type(cb).__name__ in states:
                cb.load_state_dict(states[type(cb).__name__])
        if "shuffle" in ck.rng:
            self.gen.set_state(ck.rng["shuffle"])
            self.aug_gen.set_state(ck.rng["augment"])
            torch.set_rng_state(ck.rng["torch"])


# ----------------------------------------------------------------------------- public API


@dataclass
class TrainResult:
    model_path: Path  # the best model
    run_dir: Path
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


def default_run_dir(out: Path | None, arch_name: str) -> Path:
    if out is not None:
        return out.with_name(out.stem + "-run")
    return Path("runs") / f"{arch_name}-{datetime.now():%Y%m%d-%H%M%S}"


def _load_data(
    data: str | os.PathLike[str] | Dataset,
    spec: list[LayerSpec],
    config: TrainConfig,
    val_fraction: float,
    workers: int,
    resize: str,
) -> Dataset:
    c, h, w = input_shape(spec)
    if h != w:
        raise ConfigError("size: non-square inputs are not supported by the data loader yet")
    if isinstance(data, Dataset):
        if data.size != (h, w) or data.train.images.shape[-1] != c:
            raise ConfigError(f"data: loaded at {data.size} but the network expects {c}x{h}x{w}")
        if data.resize != resize:
            raise ConfigError(
                f"data: loaded with resize={data.resize} but the network expects resize={resize}"
            )
        return data
    cfg = DataConfig(size=h, val_fraction=val_fraction, seed=config.seed, workers=workers, resize=resize)
    # only rank 0 builds the packed cache; the others wait and then read it
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        dist.barrier()
        return load_dataset(data, cfg, channels=c, progress=False)
    ds = load_dataset(data, cfg, channels=c, progress=config.progress)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return ds


def train(
    data: str | os.PathLike[str] | Dataset,
    out: str | os.PathLike[str] | None = None,
    arch: str | Sequence[LayerSpec] = "cortex-cnn",
    config: TrainConfig = TrainConfig(),
    *,
    size: int | None = None,
    resize: str | None = None,
    val_fraction: float = 0.2,
    workers: int = 0,
    run_dir: str | os.PathLike[str] | None = None,
    callbacks: Sequence[Callback] = (),
    stream: TextIO | None = None,
    patience: int | None = None,
) -> TrainResult:
    """Train a network on ``data`` (a prepared folder, any source `prepare` accepts, or a
    loaded `Dataset`) and write the best model (by ``config.monitor``) to ``out``.

    The run directory (default: beside ``out`` as ``<out>-run/``, or ``runs/<arch>-<time>/``)
    holds ``config.json``, ``metrics.jsonl`` and ``last.safetensors``, the state that
    `resume` continues from. ``resize`` (``squash`` or ``crop``) defaults to ``crop`` for a
    pretrained backbone, as it was trained, and ``squash`` otherwise.
    """
    if patience is not None:
        config = config.with_(patience=patience)
    spec = resolve_architecture(arch)
    if size is not None:
        spec = with_input_size(spec, size)
    out_path = Path(out) if out is not None else None
    run = (
        Path(run_dir)
        if run_dir is not None
        else default_run_dir(out_path, arch if isinstance(arch, str) else "net")
    )
    out_path = out_path or run / "model.safetensors"
    _check_fine_tune(config, spec)  # before the data is loaded
    pre = preprocessing_for(spec, resize)
    ds = _load_data(data, spec, config, val_fraction, workers, pre.resize)
    torch.manual_seed(config.seed)
    network = build(spec, num_classes=len(ds.classes))
    meta = {
        "pawlab_version": __version__,
        "architecture": spec,
        "classes": ds.classes,
        "preprocessing": pre.to_json(),
        "training": {
            "config": config.to_json(),
            "data": {
                "source": ds.source,
                "origin": ds.origin,
                "presplit": ds.presplit,
                "val_fraction": val_fraction,
                "seed": config.seed,
                "train_count": len(ds.train),
                "validation_count": len(ds.validation),
            },
            "monitor": config.monitor,
            "run_dir": str(run.resolve()),
        },
    }
    return _fit_phases(network, ds, config, meta, out_path, run, callbacks, stream, resume_from=None)


def resume(
    path: str | os.PathLike[str],
    data: str | os.PathLike[str] | Dataset | None = None,
    *,
    epochs: int | None = None,
    forever: bool = False,
    out: str | os.PathLike[str] | None = None,
    workers: int = 0,
    callbacks: Sequence[Callback] = (),
    stream: TextIO | None = None,
) -> TrainResult:
    """Continue a run from its run directory (its ``last.safetensors``) or a model file:
    weights, optimizer, schedule, epoch, random state and the best score so far, so that a
    resumed run never replaces a better model with a worse one. ``epochs`` raises the total.
    """
    p = Path(path)
    state_file = p / "last.safetensors" if p.is_dir() else p
    ck = checkpoint.load(state_file, with_optimizer=True)
    t = ck.meta.get("training", {})
    if "config" not in t or "data" not in t:
        raise ModelFileError(f"{state_file}: has no training state to resume from")
    config = TrainConfig.from_json(t["config"])
    if forever:
        config = config.with_(epochs=None)
    elif epochs is not None:
        if epochs <= config.schedule_start:
            raise ConfigError(
                f"epochs: must be above {config.schedule_start}, the epoch this run's fine-tuning began after"
            )
        config = config.with_(epochs=epochs)
    spec = ck.meta["architecture"]
    d = t["data"]
    resize = Preprocessing.from_json(ck.meta["preprocessing"]).resize
    source = data if data is not None else d["source"]
    ds = _load_data(source, spec, config, d["val_fraction"], workers, resize)
    if ds.classes != ck.meta["classes"]:
        raise ConfigError(f"data: classes {ds.classes} differ from the run's {ck.meta['classes']}")
    run = p if p.is_dir() else Path(t.get("run_dir") or p.with_name(p.stem + "-run"))
    out_path = Path(out) if out is not None else run / "model.safetensors"
    if out is None and not out_path.exists() and (run / "config.json").exists():
        out_path = Path(json.loads((run / "config.json").read_text()).get("model", out_path))
    network = build(spec, num_classes=len(ds.classes), pretrained=False)  # the state has every weight
    network.load_state_dict(ck.model_state)  # before a frozen backbone's features are computed
    meta = {
        k: v
        for k, v in ck.meta.items()
        if k not in ("metrics", "history", "format", "format_version", "inference")
    }
    meta["training"] = {**t, "config": config.to_json()}
    return _fit_phases(network, ds, config, meta, out_path, run, callbacks, stream, resume_from=ck)


def _unfrozen(spec: Sequence[LayerSpec]) -> list[LayerSpec] | None:
    """``spec`` with its frozen backbone trainable; None when it has no frozen backbone."""
    if not any(
        layer.get("type") in ("backbone", "pretrained") and layer.get("frozen", True) for layer in spec
    ):
        return None
    return [
        {**layer, "frozen": False} if layer.get("type") in ("backbone", "pretrained") else dict(layer)
        for layer in spec
    ]


def _check_fine_tune(config: TrainConfig, spec: Sequence[LayerSpec]) -> None:
    if config.fine_tune_epochs and (_unfrozen(spec) is None or config.epochs is None):
        raise ConfigError(
            "fine_tune_epochs: needs a frozen pretrained backbone (--backbone) and a number of epochs"
        )


# The unfrozen phase's head rate is the head phase's over this. Chosen on cats_and_dogs_filtered's
# train/ split 80/20 (1 unfrozen epoch after 20 of the head, batch-norm statistics kept):
# lr/2 (fastai's) gave val loss 0.042 and lr/30 0.021, against 0.019 for the head alone.
FINE_TUNE_LR_DIVISOR = 30.0


def _fit_phases(
    network: Network,
    ds: Dataset,
    config: TrainConfig,
    meta: dict[str, Any],
    out_path: Path,
    run: Path,
    callbacks: Sequence[Callback],
    stream: TextIO | None,
    resume_from: checkpoint.Checkpoint | None,
) -> TrainResult:
    """`_fit`, then, with ``config.fine_tune_epochs``, fastai's ``fine_tune``: the best model
    of the head's training with its backbone unfrozen for that many more epochs, at
    ``fine_tune_lr`` (default the head's rate / `FINE_TUNE_LR_DIVISOR`) spread over the
    backbone's stages (``lr_spread``, default 100), a new one-cycle schedule, the same run
    directory and the same best score to beat."""
    _check_fine_tune(config, meta["architecture"])
    unfrozen = _unfrozen(meta["architecture"])
    tune = bool(config.fine_tune_epochs)
    first = _fit(network, ds, config, meta, out_path, run, callbacks, stream, resume_from, check=not tune)
    if not tune or first.interrupted:
        return first
    assert unfrozen is not None and config.epochs is not None
    done = int(first.history[-1]["epoch"])
    config = config.with_(
        epochs=done + config.fine_tune_epochs,
        schedule_start=done,
        schedule="one-cycle",
        lr=config.learning_rate / FINE_TUNE_LR_DIVISOR
        if config.fine_tune_lr is None
        else config.fine_tune_lr,
        lr_spread=config.lr_spread if config.lr_spread > 1 else 100.0,
        fine_tune_epochs=0,
    )
    network = build(unfrozen, num_classes=len(ds.classes), pretrained=False)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # rank 0 has written the head's best model
    network.load_state_dict(checkpoint.load(out_path).model_state)  # the head's best epoch
    meta = {**meta, "architecture": unfrozen, "training": {**meta["training"], "config": config.to_json()}}
    second = _fit(network, ds, config, meta, out_path, run, callbacks, stream, None, continue_from=first)
    return replace(second, seconds=first.seconds + second.seconds)


def _fit(
    network: Network,
    ds: Dataset,
    config: TrainConfig,
    meta: dict[str, Any],
    out_path: Path,
    run: Path,
    callbacks: Sequence[Callback],
    stream: TextIO | None,
    resume_from: checkpoint.Checkpoint | None,
    *,
    continue_from: TrainResult | None = None,
    check: bool = True,
) -> TrainResult:
    """One training phase. ``continue_from``: an earlier phase of the same run, whose epochs,
    history and best score this one carries on from. ``check``: record bf16 agreement."""
    start = time.perf_counter()
    cbs: list[Callback] = [
        NaNGuard(),
        BestCheckpoint(out_path),
        MetricsLog(run / "metrics.jsonl"),
        LastState(run / "last.safetensors"),
        ProgressPrinter(stream, bar=config.progress),
        *callbacks,
    ]
    if config.patience is not None:
        cbs.append(EarlyStopping(config.patience))
    pre = Preprocessing.from_json(meta["preprocessing"])
    features = _feature_sets(network, ds, config, pre)
    train_set, val_set, head_from = features or (ds.train, ds.validation, None)
    trainer = Trainer(network, train_set, val_set, config, pre, cbs, meta, stream, head_from=head_from)
    if resume_from is not None:
        trainer.load_state(resume_from)
    if continue_from is not None:
        st = trainer.state
        st.history = list(continue_from.history)
        st.metrics = dict(st.history[-1])
        st.epoch = int(st.metrics["epoch"])
        st.best, st.best_epoch = continue_from.best[config.monitor], int(continue_from.best["epoch"])
        trainer.steps = st.epoch * trainer.batches_per_epoch
    if trainer.is_main:
        run.mkdir(parents=True, exist_ok=True)
        if (
            resume_from is None and continue_from is None
        ):  # a new run in an old run directory starts a new log
            (run / "metrics.jsonl").unlink(missing_ok=True)
        record = {
            "model": str(out_path.resolve()),
            "architecture": meta["architecture"],
            "classes": ds.classes,
            "config": config.to_json(),
            "data": meta["training"]["data"],
        }
        (run / "config.json").write_text(json.dumps(record, indent=2) + "\n")
    c, h, w = network.input_shape
    where = f"{trainer.device}" + (f" x{trainer.world_size} processes" if trainer.distributed else "")
    phase = ""
    if resume_from is not None:
        phase = f"resuming after epoch {trainer.state.epoch}: "
    elif continue_from is not None:
        phase = f"fine-tuning the whole network from epoch {trainer.state.epoch + 1}: "
    spread = f" (/{config.lr_spread:g} for the first layers)" if config.lr_spread > 1 else ""
    trainer.log(
        f"{phase}"
        f"training {len(ds.train)} images ({', '.join(ds.classes)}), validating on {len(ds.validation)}, "
        f"{c}x{h}x{w} on {where}{' bf16' if trainer.bf16 else ''}, {config.optimizer} lr "
        f"{config.learning_rate:g}{spread} "
        f"({config.schedule}), augment {config.augment.describe()}"
        f"{'; head on cached backbone features' if head_from is not None else ''}; run: {run}"
    )
    state = trainer.fit()
    if not state.history:
        raise KeyboardInterrupt  # stopped before the first epoch ended: nothing was saved
    if check and trainer.is_main and out_path.exists():
        _record_agreement(trainer, out_path, ds.validation)
    monitor = config.monitor
    best = state.history[0]
    for m in state.history[1:]:
        if is_better(m[monitor], best[monitor], monitor):
            best = m
    return TrainResult(
        out_path, run, state.history, best, ds.classes, state.interrupted, time.perf_counter() - start
    )


def _feature_sets(
    network: Network, ds: Dataset, config: TrainConfig, pre: Preprocessing
) -> tuple[ImageSet, ImageSet, int] | None:
    """With a frozen backbone first, the training and validation sets as its cached features
    (mirrored too when augmenting with flips), and where the head starts; None when the
    images themselves are needed (no frozen trunk, or augmentations other than flips)."""
    k = frozen_trunk(network)
    aug = config.augment
    if k is None or not config.cache_features or aug.rotate or aug.noise or aug.crop or aug.jitter:
        return None
    device = resolve_device(config.device)
    trunk = network.body[:k].to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    views = ("plain", "flip") if aug.flip else ("plain",)
    distributed = dist.is_available() and dist.is_initialized()
    if distributed and dist.get_rank() != 0:
        dist.barrier()  # rank 0 computes and caches; the others then read the cache
    show = config.progress and (not distributed or dist.get_rank() == 0)
    train_feats = trunk_features(
        trunk, ds.train.images, pre, device, views=views, progress=show, what="training images"
    )
    val_feats = trunk_features(
        trunk, ds.validation.images, pre, device, progress=show, what="validation images"
    )
    if distributed and dist.get_rank() == 0:
        dist.barrier()
    return replace(ds.train, images=train_feats), replace(ds.validation, images=val_feats), k


AGREEMENT_IMAGES = 1000  # validation images on which bf16 inference is checked against fp32


def _record_agreement(trainer: Trainer, path: Path, val_set: ImageSet) -> None:
    """Check guarded bf16 inference of the saved model against fp32 on validation images and
    record the outcome in the model file: inference uses bf16 only where it agreed."""
    if not use_bf16("auto", trainer.device):
        return
    ck = checkpoint.load(path, with_optimizer=True)
    network = trainer.network
    network.load_state_dict(ck.model_state)
    # a seeded sample across the classes (the arrays are in file-name order, often by class)
    rows = np.sort(np.random.default_rng(0).permutation(len(val_set))[:AGREEMENT_IMAGES])
    images = val_set.images[rows]
    fp32 = None
    if trainer.head_from is not None:  # fp32 features are cached: only the head runs
        fp32 = trainer.val_feature_logits(rows)
    result = check_agreement(network, images, trainer.preprocessing, trainer.device, fp32)
    if result["ok"]:
        verdict = "agrees with fp32: bf16 for inference"
    elif result["rerun"] > MAX_RERUN and result["max_prob_diff"] <= AGREE_MAX_PROB_DIFF:
        verdict = "would run too many images twice to be faster: fp32 for inference"
    else:
        verdict = "does not agree with fp32: fp32 for inference"
    trainer.log(
        f"guarded bf16 inference {verdict} ({result['images']} validation images: same class "
        f"{result['same_class']:.2%}, largest probability difference {result['max_prob_diff']:.4f}, "
        f"{result['rerun']:.1%} run again in fp32 by the guard {result['guard']:.4f})"
    )
    checkpoint.save(path, ck.model_state, {**ck.meta, "inference": result}, ck.optimizer_state, ck.rng)

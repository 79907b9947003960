"""Callbacks: everything the training loop does besides training.

The loop (`pawlab.training.loop.Trainer`) fires the events of `Event`, in this order:
``before_fit``; per epoch ``before_epoch``, per batch ``before_batch``/``after_batch``, then
``before_validation``/``after_validation`` and ``after_epoch``; ``on_exception`` when an error
ends the run (not Ctrl-C or SIGTERM, which stop it cleanly); and ``after_fit``, always, last.

A callback overrides any of those methods; ``order`` sorts callbacks (lower first). A callback
with state to survive a resume implements ``state_dict``/``load_state_dict``; its state is saved
under its ``state_key``, which must be unique among a run's callbacks. Only the process of rank
0 writes files or prints (see ``trainer.is_main``).
"""

from __future__ import annotations

import difflib
import json
import math
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

import numpy as np
import torch
from PIL import Image

from pawlab import runlog
from pawlab.atomic import atomic_write, atomic_write_text
from pawlab.config import MONITORS
from pawlab.errors import TrainingDiverged
from pawlab.figures import image_grid
from pawlab.inference.typicality import FIT_IMAGES
from pawlab.models.network import Network
from pawlab.preprocessing import Preprocessing
from pawlab.progress import progress_bar
from pawlab.training.typicality import EpochFeatures, PenultimateFeatures

if TYPE_CHECKING:
    from pawlab.training.loop import Trainer

__all__ = [
    "BestCheckpoint",
    "Callback",
    "EarlyStopping",
    "Event",
    "EventLog",
    "InputsLog",
    "LastState",
    "MetricsLog",
    "NaNGuard",
    "ProgressPrinter",
    "TrainingDiverged",
    "TypicalityLog",
    "ValidationLog",
    "is_better",
]


class Event(StrEnum):
    """The loop's events; each is the name of a `Callback` method."""

    BEFORE_FIT = "before_fit"
    BEFORE_EPOCH = "before_epoch"
    BEFORE_BATCH = "before_batch"
    AFTER_BATCH = "after_batch"
    BEFORE_VALIDATION = "before_validation"
    AFTER_VALIDATION = "after_validation"
    AFTER_EPOCH = "after_epoch"
    ON_EXCEPTION = "on_exception"  # called with the error as well
    AFTER_FIT = "after_fit"


_PREFIXES = ("before_", "after_", "on_")


class Callback:
    """Override any of the event methods; ``order`` sorts callbacks (lower runs first).

    A method named almost like an event (``after_epcoh``) is a `TypeError` when the class is
    defined, not a callback that silently never runs."""

    order = 0
    _state_key: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        events = [e.value for e in Event]
        for name, value in vars(cls).items():
            if not callable(value) or not name.startswith(_PREFIXES) or name in events:
                continue
            close = difflib.get_close_matches(name, events, n=1, cutoff=0.8)
            if close:
                raise TypeError(
                    f"{cls.__name__}.{name} is not an event of the training loop: did you mean "
                    f"{close[0]}? (a helper method's name starts with _)"
                )

    @property
    def state_key(self) -> str:
        """Where this callback's state is saved (its class name unless set): two callbacks
        with state need keys of their own."""
        return self._state_key or type(self).__name__

    @state_key.setter
    def state_key(self, key: str) -> None:
        self._state_key = key

    def before_fit(self, trainer: Trainer) -> None: ...
    def before_epoch(self, trainer: Trainer) -> None: ...
    def before_batch(self, trainer: Trainer) -> None: ...
    def after_batch(self, trainer: Trainer) -> None: ...
    def before_validation(self, trainer: Trainer) -> None: ...
    def after_validation(self, trainer: Trainer) -> None: ...
    def after_epoch(self, trainer: Trainer) -> None: ...
    def on_exception(self, trainer: Trainer, error: BaseException) -> None: ...
    def after_fit(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def is_better(value: float, best: float | None, monitor: str) -> bool:
    if math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value < best if MONITORS[monitor] == "min" else value > best


class NaNGuard(Callback):
    """Stop at once, with a clear message, when the training loss stops being a number."""

    order = -10

    def after_batch(self, trainer: Trainer) -> None:
        loss = trainer.state.batch_loss
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss} at epoch {trainer.state.epoch}, batch "
                f"{trainer.state.batch + 1}; try a lower --lr (the best model so far is kept)"
            )


class BestCheckpoint(Callback):
    """Owns the best score: save the model whenever the monitored validation metric improves
    (atomically), and say so in ``trainer.state.improved``."""

    order = 10

    def __init__(self, path: str | Path, monitor: str | None = None) -> None:
        self.path, self.monitor = Path(path), monitor  # None: the training config's monitor
        self.best: float | None = None
        self.best_epoch = 0

    def after_validation(self, trainer: Trainer) -> None:
        monitor = self.monitor or trainer.config.monitor
        value = trainer.state.metrics[monitor]
        if is_better(value, self.best, monitor):
            self.best, self.best_epoch = value, trainer.state.epoch
            trainer.state.improved = True
            if trainer.is_main:
                trainer.save(self.path)

    def best_metrics(self, history: list[dict[str, float]]) -> dict[str, float]:
        """The metrics of the best epoch (the first, if no epoch had a score)."""
        return next((m for m in history if int(m["epoch"]) == self.best_epoch), history[0])

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state.get("best"), int(state.get("best_epoch", 0))


class LastState(Callback):
    """Keep a resumable state: after every epoch, and when training is interrupted (then the
    weights carry the unfinished epoch's work, and a resume starts that epoch again)."""

    order = 40

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def after_epoch(self, trainer: Trainer) -> None:
        if trainer.is_main:
            trainer.save(self.path)

    def after_fit(self, trainer: Trainer) -> None:
        if trainer.state.interrupted and trainer.is_main:
            trainer.save(self.path)


class EarlyStopping(Callback):
    """Stop when the monitored metric has not improved for ``patience`` epochs."""

    order = 20

    def __init__(self, patience: int) -> None:
        self.patience, self.wait = patience, 0

    def after_epoch(self, trainer: Trainer) -> None:
        self.wait = 0 if trainer.state.improved else self.wait + 1
        if self.wait >= self.patience:
            trainer.state.stop = True
            trainer.log(
                f"early stopping: no improvement of {trainer.config.monitor} for {self.patience} epochs"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait = int(state.get("wait", 0))


class MetricsLog(Callback):
    """One JSON line per epoch in ``metrics.jsonl``: the run's history, readable while it runs."""

    order = 30

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def before_fit(self, trainer: Trainer) -> None:
        if trainer.is_main:  # a run killed after an epoch's line, before its state was saved
            runlog.drop_epochs_after(self.path, trainer.state.epoch)

    def after_epoch(self, trainer: Trainer) -> None:
        if trainer.is_main:
            record = {**trainer.state.metrics, "lr": trainer.lr, "best": trainer.state.improved}
            runlog.append_json_line(self.path, record)


class EventLog(Callback):
    """Every event worth watching as one JSON line in ``events.jsonl`` (kinds:
    `pawlab.runlog.EVENT_KINDS`), written as it happens: the start of the run, a sampled batch
    loss with the learning rate and images/s (about ``batches_per_epoch`` lines per epoch),
    each epoch's metrics, and the end or failure of the run. A dashboard follows it.

    ``final``: this fit is the run's last phase. A phase that another follows (training the
    head before fine-tuning) writes no "end", unless it was interrupted: the run ends there."""

    order = 35  # after the checkpoint: an epoch's line says whether its model was saved

    def __init__(self, path: str | Path, samples_per_epoch: int = 20, final: bool = True) -> None:
        self.path, self.samples, self.final = Path(path), samples_per_epoch, final

    def _write(self, trainer: Trainer, kind: runlog.EventKind, **fields: Any) -> None:
        if trainer.is_main:
            runlog.append_json_line(self.path, {"event": kind, "time": time.time(), **fields})

    def before_fit(self, trainer: Trainer) -> None:
        self._write(
            trainer,
            "start",
            epoch=trainer.state.epoch,
            epochs=trainer.config.epochs,
            batches_per_epoch=trainer.batches_per_epoch,
            config=trainer.config.to_json(),
        )

    def after_batch(self, trainer: Trainer) -> None:
        every = max(1, trainer.batches_per_epoch // self.samples)
        i = trainer.state.batch
        if (i + 1) % every == 0 or i + 1 == trainer.batches_per_epoch:
            self._write(
                trainer,
                "batch",
                epoch=trainer.state.epoch,
                batch=i + 1,
                step=trainer.state.steps,
                loss=trainer.state.batch_loss,
                lr=trainer.lr,
                images_per_s=trainer.state.images_per_s(),
            )

    def after_epoch(self, trainer: Trainer) -> None:
        self._write(trainer, "epoch", **trainer.state.metrics, saved=trainer.state.improved)

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self._write(trainer, "failed", epoch=trainer.state.epoch, error=f"{type(error).__name__}: {error}")

    def after_fit(self, trainer: Trainer) -> None:
        if trainer.state.error is None and (self.final or trainer.state.interrupted):
            self._write(trainer, "end", epoch=trainer.state.epoch, interrupted=trainer.state.interrupted)


class ValidationLog(Callback):
    """Every validation pass's class probabilities, and once the validation images' names,
    labels and thumbnails, in the run directory (see `pawlab.runlog`): what a dashboard's
    confusion matrix and per-image histories read. It costs no forward pass: validation has
    computed them (``trainer.state.val_probs``).

    ``images``: the validation images, uint8 (N, H, W, C) (also when the loop trains on
    cached features), in the order of ``names`` and ``labels``."""

    order = 25

    def __init__(
        self,
        run_dir: str | Path,
        images: np.ndarray,
        names: list[str],
        labels: np.ndarray,
        classes: list[str],
        thumb_size: int = 96,
    ) -> None:
        self.run_dir, self.images, self.thumb_size = Path(run_dir), images, thumb_size
        self.index = {"classes": classes, "names": names, "labels": [int(v) for v in labels]}

    def before_fit(self, trainer: Trainer) -> None:
        if trainer.is_main:
            _best_effort(trainer, "the validation thumbnails", self._write_index)

    def _write_index(self) -> None:
        thumbs = self.run_dir / runlog.THUMBS
        index = self.run_dir / runlog.VALIDATION_INDEX
        if index.is_file() and runlog.read_json(index) == self.index:
            return  # a resumed run: written already
        thumbs.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(self.images):
            pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
            if max(pil.size) > self.thumb_size:
                pil.thumbnail((self.thumb_size, self.thumb_size), Image.Resampling.BILINEAR)
            pil.save(thumbs / f"{i}.jpg", quality=85)
        atomic_write_text(index, json.dumps(self.index))  # last: the thumbnails are there

    def after_validation(self, trainer: Trainer) -> None:
        probs = trainer.state.val_probs
        if not trainer.is_main or probs is None:
            return
        path = self.run_dir / runlog.pass_file(trainer.state.epoch)
        _write_array(trainer, path, probs, "a validation pass")


class TypicalityLog(Callback):
    """Every validation pass's typicality of each validation image (`pawlab.training.typicality`:
    a live estimate, fitted from the penultimate features of the epoch's training batches), in
    the run directory beside the pass's probabilities: what a dashboard's cell sorts its odd
    images out by. Nothing for a network without a linear layer, or without class
    probabilities (``trainer.state.val_probs``)."""

    order = 24

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.features: PenultimateFeatures | None = None
        self.kept: EpochFeatures | None = None

    def before_fit(self, trainer: Trainer) -> None:
        if trainer.is_main and isinstance(trainer.network, Network):
            try:
                self.features = PenultimateFeatures(trainer.network)
            except ValueError:  # no linear layer: no penultimate features
                self.features = None

    def before_epoch(self, trainer: Trainer) -> None:
        if self.features is not None:
            self.kept = EpochFeatures(cast(Network, trainer.network).num_classes)

    def before_batch(self, trainer: Trainer) -> None:
        # the epoch's last `FIT_IMAGES` images at most (as the model file's fit): the nearest
        # to the weights validated, and a bounded cost
        left = (trainer.batches_per_epoch - trainer.state.batch) * trainer.per_process_batch
        if self.features is not None and left <= FIT_IMAGES:
            self.features.start()

    def after_batch(self, trainer: Trainer) -> None:
        if self.features is None or self.kept is None:
            return
        x, y = self.features.take(), trainer.state.labels
        if x is not None and y is not None and len(x) == len(y):  # one forward pass of the batch
            self.kept.add(x, y)

    def before_validation(self, trainer: Trainer) -> None:
        if self.features is not None:
            self.features.start()

    def after_validation(self, trainer: Trainer) -> None:
        if self.features is None or self.kept is None:
            return
        x, probs = self.features.take(), trainer.state.val_probs
        if x is None or probs is None or len(x) != len(probs):
            return
        logits = torch.from_numpy(probs).clamp_min(1e-45).log()  # up to a constant per image
        typical = self.kept.typicality(x, logits)
        if typical is not None:
            path = self.run_dir / runlog.typicality_file(trainer.state.epoch)
            _write_array(trainer, path, typical, "a validation pass's typicality")

    def after_fit(self, trainer: Trainer) -> None:
        if self.features is not None:
            self.features.remove()
            self.features = None


def _write_array(trainer: Trainer, path: Path, array: np.ndarray, what: str) -> None:
    """``array`` as float16 in a .npy file at ``path``, atomically, on a best effort."""

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: _save_npy(tmp, array.astype(np.float16)))

    _best_effort(trainer, what, write)


def _best_effort(trainer: Trainer, what: str, write: Callable[[], None]) -> None:
    """What only the dashboard reads must not stop a run: an error writing it is one line."""
    try:
        write()
    except (OSError, ValueError) as exc:
        trainer.log(f"pawlab: could not write {what} for the dashboard ({exc}); training goes on")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # np.save would add ".npy" to a temporary file's name
        np.save(fh, array)


class InputsLog(Callback):
    """What the model sees: each epoch, a grid of its first training batch as the network
    gets it (augmented), and once a grid of validation images; `pawlab.runlog.SEEN` names the
    files. Images only: a head trained on cached features sees no pixels."""

    order = 26
    images = 32  # in each grid

    def __init__(self, run_dir: str | Path, pre: Preprocessing, validation: np.ndarray) -> None:
        self.run_dir, self.pre, self.validation = Path(run_dir), pre, validation

    def before_fit(self, trainer: Trainer) -> None:
        if trainer.is_main and len(self.validation) and self.validation.ndim == 4:
            grid = self.validation[: self.images]
            _best_effort(trainer, "the validation grid", lambda: self._save(runlog.SEEN["validation"], grid))

    def after_batch(self, trainer: Trainer) -> None:
        x = trainer.state.inputs
        if trainer.state.batch != 0 or not trainer.is_main or x is None or x.dim() != 4:
            return
        pixels = self.pre.to_pixels(x[: self.images])
        _best_effort(trainer, "the training grid", lambda: self._save(runlog.SEEN["train"], pixels))

    def _save(self, name: str, images: np.ndarray) -> None:  # uint8 (N, H, W, C)
        path = self.run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        grid = image_grid(images)
        atomic_write(path, lambda tmp: grid.save(tmp, format="JPEG", quality=85))


_SHORT = {"val_loss": "val loss", "val_accuracy": "val acc"}  # the objective's validation metrics, printed


class ProgressPrinter(Callback):
    """Progress within each epoch on stderr (`pawlab.progress.progress_bar`: a bar with the loss
    and images/s on a terminal, a widget in a notebook, a line every 30 s in a log) and one line
    per epoch."""

    order = 50

    def __init__(self, stream: TextIO | None = None, bar: bool = True) -> None:
        self.stream = stream or sys.stdout
        self.bar_enabled = bar
        self.bar: Any = None  # what progress_bar returns: a tqdm bar or a LineProgress

    def _label(self, trainer: Trainer) -> str:
        total = trainer.config.epochs
        return f"{trainer.state.epoch}/{total}" if total else f"{trainer.state.epoch}"

    def before_epoch(self, trainer: Trainer) -> None:
        if self.bar_enabled and trainer.is_main:
            self.bar = progress_bar(
                total=trainer.batches_per_epoch, desc=f"epoch {self._label(trainer)}", unit="batch"
            )

    def after_batch(self, trainer: Trainer) -> None:
        if self.bar is not None:
            rate = trainer.state.images_per_s()
            self.bar.set_postfix(loss=f"{trainer.state.batch_loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
            self.bar.update()

    def after_epoch(self, trainer: Trainer) -> None:
        self._close()
        m = trainer.state.metrics
        mark = "  * saved" if trainer.state.improved else ""
        scores = "  ".join(
            f"{_SHORT.get(k, k.replace('_', ' '))} {v:.4f}" for k, v in m.items() if k.startswith("val_")
        )
        trainer.log(
            f"epoch {self._label(trainer):>7}  train loss {m['train_loss']:.4f}  {scores}  "
            f"{m['seconds']:.1f}s  {m['images_per_s']:.0f} img/s{mark}"
        )

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def after_fit(self, trainer: Trainer) -> None:
        self._close()
        if trainer.state.interrupted:
            trainer.log("interrupted: stopped cleanly; the best model and a resumable state are saved")

"""Callbacks: everything the training loop does besides training.

A callback overrides any of the events of `pawlab.training.Trainer` (``before_fit``,
``before_epoch``, ``before_batch``, ``after_batch``, ``before_validation``,
``after_validation``, ``after_epoch``, ``after_fit``); ``order`` sorts them (lower first).
A callback with state to survive a resume implements ``state_dict``/``load_state_dict``.
Only the process of rank 0 writes files or prints (see ``trainer.is_main``).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm

from pawlab.config import MONITORS
from pawlab.errors import PawlabError

if TYPE_CHECKING:
    from pawlab.training import Trainer


class TrainingDiverged(PawlabError):
    """The loss became NaN or infinite."""


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
    """Save the model whenever the monitored validation metric improves (atomically)."""

    order = 10

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def after_validation(self, trainer: Trainer) -> None:
        monitor = trainer.config.monitor
        value = trainer.state.metrics[monitor]
        if is_better(value, trainer.state.best, monitor):
            trainer.state.best = value
            trainer.state.best_epoch = trainer.state.epoch
            trainer.state.improved = True
            if trainer.is_main:
                trainer.save(self.path)


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

    def after_epoch(self, trainer: Trainer) -> None:
        if trainer.is_main:
            record = {**trainer.state.metrics, "lr": trainer.lr, "best": trainer.state.improved}
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")


class ProgressPrinter(Callback):
    """A bar within each epoch (on a terminal; loss and images/s) and one line per epoch."""

    order = 50

    def __init__(self, stream: TextIO | None = None, bar: bool = True) -> None:
        self.stream = stream or sys.stdout
        self.bar_enabled = bar
        self.bar: tqdm[Any] | None = None
        self.t0 = 0.0
        self.seen = 0

    def _label(self, trainer: Trainer) -> str:
        total = trainer.config.epochs
        return f"{trainer.state.epoch}/{total}" if total else f"{trainer.state.epoch}"

    def before_epoch(self, trainer: Trainer) -> None:
        self.t0, self.seen = time.perf_counter(), 0
        if self.bar_enabled and trainer.is_main:
            self.bar = tqdm(
                total=trainer.batches_per_epoch,
                desc=f"epoch {self._label(trainer)}",
                unit="batch",
                leave=False,
                disable=None,
                file=sys.stderr,
            )

    def after_batch(self, trainer: Trainer) -> None:
        self.seen += trainer.state.batch_size * trainer.world_size
        if self.bar is not None:
            rate = self.seen / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix(loss=f"{trainer.state.batch_loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
            self.bar.update()

    def after_epoch(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        m = trainer.state.metrics
        mark = "  * saved" if trainer.state.improved else ""
        trainer.log(
            f"epoch {self._label(trainer):>7}  train loss {m['train_loss']:.4f}  "
            f"val loss {m['val_loss']:.4f}  val acc {m['val_accuracy']:.4f}  "
            f"{m['seconds']:.1f}s  {m['images_per_s']:.0f} img/s{mark}"
        )

    def after_fit(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if trainer.state.interrupted:
            trainer.log("interrupted: stopped cleanly; the best model and a resumable state are saved")

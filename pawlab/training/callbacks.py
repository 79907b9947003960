"""Callbacks: everything the training loop does besides training.

The loop (`pawlab.training.loop`) defines the events (`Event`) and the base class
(`Callback`); these are the callbacks a run uses: the best model file and the resumable state,
the run directory's logs and the dashboard's files, early stopping, the NaN guard, progress.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO, cast

import numpy as np
import torch
from PIL import Image

from pawlab import checkpoint, runlog
from pawlab.atomic import atomic_write, atomic_write_text
from pawlab.checkpoint import TrainingRecord
from pawlab.config import MONITORS, TrainConfig
from pawlab.data import Dataset
from pawlab.data.datasets import untrained_classes, untrained_warning
from pawlab.errors import ConfigError, TrainingDiverged
from pawlab.figures import image_grid
from pawlab.inference.agreement import agreement_record
from pawlab.inference.typicality import FIT_IMAGES, Source, with_unknown
from pawlab.models.network import Network
from pawlab.preprocessing import Preprocessing
from pawlab.progress import progress_bar, stage
from pawlab.training.loop import Callback, Event, FeatureSet, Trainer
from pawlab.training.objectives import Validation
from pawlab.training.typicality import EpochFeatures, PenultimateFeatures

__all__ = [
    "BestCheckpoint",
    "Callback",
    "EarlyStopping",
    "Event",
    "EventLog",
    "InDistribution",
    "InferenceAgreement",
    "InputsLog",
    "LastState",
    "MetricsLog",
    "ModelRecord",
    "NaNGuard",
    "ProgressPrinter",
    "RunDirectory",
    "TrainingDiverged",
    "TypicalityLog",
    "ValidationLog",
    "is_better",
    "is_sampled_batch",
]


def shows_progress(trainer: Trainer) -> bool:
    """Whether this process shows progress (bars, or lines in a log): not under ``-q``, rank 0."""
    return trainer.runtime.progress and trainer.is_main


def _write_model(trainer: Trainer, path: Path, ck: checkpoint.Checkpoint) -> None:
    """The model file, with lines in a log while a large one is written."""
    with stage(f"writing the model file {path}", enabled=shows_progress(trainer)):
        checkpoint.write(path, ck)


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
    """Owns the best score: write the model file whenever the monitored validation metric
    improves (atomically), and say so in ``trainer.state.improved``; the score and its epoch
    are in the file's card (``best``, ``best_epoch``), where a resumed run reads them.

    It keeps the file's contents in memory: after the fit the network holds the best epoch's
    weights again, the run's `ModelRecord` callbacks add their records to that model, and the
    file is written once more, never read back to be amended."""

    order = 10

    def __init__(self, path: str | Path, monitor: str | None = None) -> None:
        self.path, self.monitor = Path(path), monitor  # None: the training config's monitor
        self.best: float | None = None
        self.best_epoch = 0
        self.kept: checkpoint.Checkpoint | None = None  # what the file holds

    def after_validation(self, trainer: Trainer, validation: Validation) -> None:
        monitor = self.monitor or trainer.config.monitor
        value = trainer.state.metrics[monitor]
        if is_better(value, self.best, monitor):
            self.best, self.best_epoch = value, trainer.state.epoch
            trainer.state.improved = True
            self.save(trainer)

    def save(self, trainer: Trainer) -> None:
        """Keep the model of this moment, and write it (rank 0)."""
        self.kept = trainer.dump_checkpoint().copy()
        if trainer.is_main:
            _write_model(trainer, self.path, self.kept)

    def after_fit(self, trainer: Trainer) -> None:
        if self.kept is None or trainer.state.error is not None:
            return
        trainer.network.load_state_dict(self.kept.model_state)  # the best epoch's weights
        records = [cb for cb in trainer.callbacks if isinstance(cb, ModelRecord)]
        if not trainer.is_main or not records or not trainer.state.last_phase:
            return
        ck = self.kept
        for cb in records:
            ck = cb.record(trainer, ck)
        if ck is not self.kept:
            self.kept = ck
            _write_model(trainer, self.path, ck)

    def on_save_checkpoint(self, trainer: Trainer, ck: checkpoint.Checkpoint) -> checkpoint.Checkpoint:
        training = replace(ck.card.training or TrainingRecord(), best=self.best, best_epoch=self.best_epoch)
        return replace(ck, card=replace(ck.card, training=training))

    def on_load_checkpoint(self, trainer: Trainer, ck: checkpoint.Checkpoint) -> None:
        t = ck.card.training or TrainingRecord()
        self.best, self.best_epoch = t.best, int(t.best_epoch or 0)
        if self.path.is_file():  # the resumed run's best model: what it keeps until one is better
            self.kept = checkpoint.load(self.path, with_optimizer=True)

    def best_metrics(self, history: list[dict[str, float]]) -> dict[str, float]:
        """The metrics of the best epoch (the first, if no epoch had a score)."""
        return next((m for m in history if int(m["epoch"]) == self.best_epoch), history[0])


class ModelRecord(Callback):
    """A record of the finished model in its file: at the end of the run, with the best
    epoch's weights in ``trainer.network``, `BestCheckpoint` asks each for its part (rank 0)."""

    def record(self, trainer: Trainer, ck: checkpoint.Checkpoint) -> checkpoint.Checkpoint:
        """``ck`` with this record added."""
        raise NotImplementedError


class InferenceAgreement(ModelRecord):
    """Whether guarded bf16 inference agrees with fp32 on the validation images (``inference``
    in the card; `pawlab.inference.agreement`). ``images``: uint8 (N, H, W, C), also when the
    loop trains on cached features, whose fp32 logits then come from the head alone (when the
    features are fp32 ones)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, pre: Preprocessing) -> None:
        self.images, self.labels, self.pre = images, labels, pre

    def record(self, trainer: Trainer, ck: checkpoint.Checkpoint) -> checkpoint.Checkpoint:
        network, val = cast(Network, trainer.network), trainer.val_set
        fp32 = None
        if isinstance(val, FeatureSet) and val.precision == "fp32":  # cached: only the head runs
            fp32 = lambda rows: trainer.inputs.logits(network, val.images[rows], 0)  # noqa: E731
        found = agreement_record(
            network,
            self.images,
            self.pre,
            trainer.device,
            trainer.log,
            fp32,
            self.labels,
            shows_progress(trainer),
        )
        return ck if found is None else replace(ck, card=replace(ck.card, inference=found))


class InDistribution(ModelRecord):
    """The in-distribution model ("none of these", `pawlab.unknown`): fitted on the training
    set, calibrated on the validation set, kept as the card's ``unknown`` and its tensors."""

    def __init__(self, pre: Preprocessing) -> None:
        self.pre = pre

    def record(self, trainer: Trainer, ck: checkpoint.Checkpoint) -> checkpoint.Checkpoint:
        t, v = trainer.train_set, trainer.val_set
        cached = isinstance(t, FeatureSet)
        fit_on, calibrate_on = Source(t.images, t.labels, cached), Source(v.images, None, cached)
        network = cast(Network, trainer.network)
        images = f"{min(len(t), FIT_IMAGES)} training, {len(v)} validation images"
        fitting = f"fitting the in-distribution model ({images})"
        try:
            with stage(fitting, enabled=shows_progress(trainer)):
                found, _ = with_unknown(
                    ck, network, (fit_on, calibrate_on), self.pre, trainer.device, trainer.log
                )
        except (ValueError, ConfigError) as exc:  # no linear layer to read features before; no validation
            trainer.log(f"no in-distribution model: {str(exc).splitlines()[0]}")
            return ck
        return found


class LastState(Callback):
    """Keep a resumable state: after every epoch, and when training is interrupted (then the
    weights carry the unfinished epoch's work, and a resume starts that epoch again)."""

    order = 40

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def after_epoch(self, trainer: Trainer) -> None:
        if trainer.is_main:
            checkpoint.write(self.path, trainer.dump_checkpoint())

    def after_fit(self, trainer: Trainer) -> None:
        if trainer.state.interrupted and trainer.is_main:
            checkpoint.write(self.path, trainer.dump_checkpoint())


class EarlyStopping(Callback):
    """Stop when the monitored metric has not improved for ``patience`` epochs."""

    order = 20

    def __init__(self, patience: int) -> None:
        self.patience, self.wait = patience, 0
        self.phase: str | None = None  # the phase counted in; a new phase (fine-tuning) counts anew

    def before_fit(self, trainer: Trainer) -> None:
        if self.phase is not None and self.phase != trainer.state.phase:
            self.wait = 0
        self.phase = trainer.state.phase

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


class RunDirectory(Callback):
    """The run directory's ``config.json`` (the model file, the architecture, classes, recipe
    and data of the running phase: `pawlab.runlog`), written as each phase begins, and the
    phase's first line: what trains on what, where, and how. ``fresh``: a new run, which
    starts new logs in an old run directory (a resumed one keeps them)."""

    order = -20  # first: the line opens the phase

    def __init__(self, run_dir: Path, model: Path, ds: Dataset, fresh: bool) -> None:
        self.run_dir, self.model, self.ds, self.fresh = run_dir, model, ds, fresh
        self.first = True

    def before_fit(self, trainer: Trainer) -> None:
        if trainer.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.fresh and self.first:
                runlog.start_fresh(self.run_dir)
            record = {
                "model": str(self.model.resolve()),
                "architecture": trainer.card.architecture,
                "classes": self.ds.classes,
                "config": trainer.config.to_json(),
                "data": (trainer.card.training or TrainingRecord()).data,
            }
            runlog.write_config(self.run_dir, record)
        trainer.log(self._describe(trainer))
        untrained = untrained_classes(self.ds.train.counts())
        if untrained:
            trainer.log(untrained_warning(untrained))
        self.first = False

    def _describe(self, trainer: Trainer) -> str:
        config, ds, state = trainer.config, self.ds, trainer.state
        if state.phase:
            phase = f"{state.phase} from epoch {state.epoch + 1}: "
        else:
            phase = f"resuming after epoch {state.epoch}: " if not self.fresh else ""
        c, h, w = cast(Network, trainer.network).input_shape
        where = f"{trainer.device}" + (f" x{trainer.world_size} processes" if trainer.world_size > 1 else "")
        spread = f" (/{config.lr_spread:g} for the first layers)" if config.lr_spread > 1 else ""
        feats = trainer.train_set
        head = ""
        if isinstance(feats, FeatureSet):
            head = f"; head on cached backbone features ({feats.precision}{_unmirrored(config, feats)})"
        return (
            f"{phase}training {len(ds.train)} images ({', '.join(ds.classes)}), validating on "
            f"{len(ds.validation)}, {c}x{h}x{w} on {where}{' bf16' if trainer.bf16 else ''}, "
            f"{config.optimizer} lr {config.learning_rate:g}{spread} ({config.schedule}), "
            f"augment {config.augment.describe()}{head}; run: {self.run_dir}"
        )


def _unmirrored(config: TrainConfig, feats: FeatureSet) -> str:
    """Why flips are asked for but the features have one view: the recipe's `mirror_below`."""
    if not config.augment.flip or config.mirror_below is None or feats.images.shape[1] > 1:  # (N, views, F)
        return ""
    return f", no mirrored views from {config.mirror_below:,} training images"


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


def is_sampled_batch(trainer: Trainer, samples_per_epoch: int) -> bool:
    """Whether the batch just trained is one of about ``samples_per_epoch`` evenly spaced in
    its epoch (the last always is): the batches whose loss, rate and speed are logged."""
    every = max(1, trainer.batches_per_epoch // samples_per_epoch)
    i = trainer.state.batch
    return (i + 1) % every == 0 or i + 1 == trainer.batches_per_epoch


class EventLog(Callback):
    """Every event worth watching as one JSON line in ``events.jsonl`` (kinds:
    `pawlab.runlog.EVENT_KINDS`), written as it happens: the start of the run, a sampled batch
    loss with the learning rate and images/s (about ``batches_per_epoch`` lines per epoch),
    each epoch's metrics, and the end or failure of the run. A dashboard follows it. Each phase
    starts; one that another follows (training the head before fine-tuning) writes no "end",
    unless it was interrupted: the run ends there."""

    order = 35  # after the checkpoint: an epoch's line says whether its model was saved

    def __init__(self, path: str | Path, samples_per_epoch: int = 20) -> None:
        self.path, self.samples = Path(path), samples_per_epoch

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
        if is_sampled_batch(trainer, self.samples):
            self._write(
                trainer,
                "batch",
                epoch=trainer.state.epoch,
                batch=trainer.state.batch + 1,
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
        if trainer.state.error is None and (trainer.state.last_phase or trainer.state.interrupted):
            self._write(trainer, "end", epoch=trainer.state.epoch, interrupted=trainer.state.interrupted)


class ValidationLog(Callback):
    """Every validation pass's class probabilities, and once the validation images' names,
    labels and thumbnails, in the run directory (see `pawlab.runlog`): what a dashboard's
    confusion matrix and per-image histories read. It costs no forward pass: validation has
    computed them (the `Validation` of ``after_validation``).

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
        self.progress = False  # lines in a log while the thumbnails are written (`shows_progress`)
        self.index = {"classes": classes, "names": names, "labels": [int(v) for v in labels]}

    def before_fit(self, trainer: Trainer) -> None:
        if trainer.is_main:
            self.progress = shows_progress(trainer)
            _best_effort(trainer, "the validation thumbnails", self._write_index)

    def _write_index(self) -> None:
        thumbs = self.run_dir / runlog.THUMBS
        index = self.run_dir / runlog.VALIDATION_INDEX
        if index.is_file() and runlog.read_json(index) == self.index:
            return  # a resumed run: written already
        thumbs.mkdir(parents=True, exist_ok=True)
        desc = "writing the dashboard's validation thumbnails"
        for i, image in enumerate(
            progress_bar(self.images, total=len(self.images), desc=desc, enabled=self.progress, log_only=True)
        ):
            pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
            if max(pil.size) > self.thumb_size:
                pil.thumbnail((self.thumb_size, self.thumb_size), Image.Resampling.BILINEAR)
            pil.save(thumbs / f"{i}.jpg", quality=85)
        atomic_write_text(index, json.dumps(self.index))  # last: the thumbnails are there

    def after_validation(self, trainer: Trainer, validation: Validation) -> None:
        probs = validation.probs
        if not trainer.is_main or probs is None:
            return
        path = self.run_dir / runlog.pass_file(trainer.state.epoch)
        _write_array(trainer, path, probs, "a validation pass")


class TypicalityLog(Callback):
    """Every validation pass's typicality of each validation image (`pawlab.training.typicality`:
    a live estimate, fitted from the penultimate features of the epoch's training batches), in
    the run directory beside the pass's probabilities: what a dashboard's cell sorts its odd
    images out by. Nothing for a network without a linear layer, or without class
    probabilities (the `Validation` of ``after_validation``)."""

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

    def after_validation(self, trainer: Trainer, validation: Validation) -> None:
        if self.features is None or self.kept is None:
            return
        x, probs = self.features.take(), validation.probs
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
    and images/s on a terminal, a widget in a notebook, lines in a log) and one line per epoch."""

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

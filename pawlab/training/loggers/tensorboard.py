"""``--log tensorboard``: TensorBoard event files in ``RUN_DIR/tensorboard/``.

Written by torch's own `SummaryWriter` (it needs the ``tensorboard`` package, which also
reads them: ``tensorboard --logdir RUN_DIR/tensorboard``). Per epoch (step: the epoch) the
epoch's metrics under pawlab's names (``train_loss``, ``val_loss``, ``val_accuracy``, ``lr``,
``images_per_s``, ...), the confusion matrix (``confusion_matrix``) and what the model sees
(``seen/train``: the first batch as the network gets it; ``seen/validation`` once); per
sampled batch (step: optimizer steps) ``batch/loss``, ``batch/lr`` and ``batch/images_per_s``;
the recipe as hyperparameters (the HParams tab), with the epoch metrics as its metrics.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pawlab.figures import confusion_matrix_png, image_grid
from pawlab.inference.evaluation import metrics_from_probs
from pawlab.training.callbacks import InputsLog, is_sampled_batch
from pawlab.training.inputs import ImageInputs
from pawlab.training.loggers.base import LOGGER_ORDER, LOGGERS, epoch_metrics, recipe, require
from pawlab.training.loop import Callback, FeatureSet, Trainer
from pawlab.training.objectives import Validation

__all__ = ["TensorBoardLogger"]

FOLDER = "tensorboard"


@LOGGERS.register("tensorboard")
class TensorBoardLogger(Callback):
    """TensorBoard event files in ``run_dir/tensorboard`` (rank 0); a writer per fit, closed
    by ``after_fit`` (a fine-tuning phase adds an event file beside the first)."""

    order = LOGGER_ORDER
    samples_per_epoch = 20  # sampled batches, as in events.jsonl

    def __init__(self, run_dir: Path) -> None:
        self.folder = Path(run_dir) / FOLDER
        self._tb: Any = require("tensorboard", "torch.utils.tensorboard")
        self.writer: Any = None  # a SummaryWriter while fitting
        self._fits = 0  # fits finished (a fine-tuning phase is a second)
        self._hparams_written = False

    def before_fit(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        if self._fits == 0 and trainer.state.epoch == 0:  # a new run: an earlier one's files go
            shutil.rmtree(self.folder, ignore_errors=True)
        self.writer = self._tb.SummaryWriter(log_dir=str(self.folder))
        val = trainer.val_set
        if self._fits == 0 and not isinstance(val, FeatureSet) and len(val.images):
            self._image("seen/validation", image_grid(val.images[: InputsLog.images]), trainer.state.epoch)

    def after_batch(self, trainer: Trainer) -> None:
        if self.writer is None:
            return
        x, inputs = trainer.state.inputs, trainer.inputs
        if trainer.state.batch == 0 and x is not None and x.dim() == 4 and isinstance(inputs, ImageInputs):
            grid = image_grid(inputs.pre.to_pixels(x[: InputsLog.images]))
            self._image("seen/train", grid, trainer.state.epoch)
        if is_sampled_batch(trainer, self.samples_per_epoch):
            step = trainer.state.steps
            self.writer.add_scalar("batch/loss", trainer.state.batch_loss, step)
            self.writer.add_scalar("batch/lr", trainer.lr, step)
            self.writer.add_scalar("batch/images_per_s", trainer.state.images_per_s(), step)

    def after_validation(self, trainer: Trainer, validation: Validation) -> None:
        if self.writer is None or validation.probs is None or validation.labels is None:
            return
        classes = trainer.val_set.classes
        cm = metrics_from_probs(validation.probs, validation.labels, classes)["confusion_matrix"]
        title = f"Confusion matrix, epoch {trainer.state.epoch}"
        png = confusion_matrix_png(cm, classes, title=title)
        self._image("confusion_matrix", Image.open(io.BytesIO(png)), trainer.state.epoch)

    def after_epoch(self, trainer: Trainer) -> None:
        if self.writer is None:
            return
        metrics = epoch_metrics(trainer)
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, trainer.state.epoch)
        if not self._hparams_written:  # once the metrics' names are known
            self._hparams(trainer, metrics)
        self.writer.flush()

    def after_fit(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self._fits += 1

    def _hparams(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """The recipe in the HParams plugin's form, in this run's own event file (not the
        sub-run `SummaryWriter.add_hparams` makes), its metrics the epoch scalars above."""
        shown = (int, float, str, bool)  # what the plugin takes; others (None) as JSON
        values = {k: v if isinstance(v, shown) else json.dumps(v) for k, v in recipe(trainer.config).items()}
        for summary in self._tb.summary.hparams(values, metrics):
            self.writer.file_writer.add_summary(summary)
        self._hparams_written = True

    def _image(self, tag: str, image: Image.Image, step: int) -> None:
        pixels = np.asarray(image.convert("RGB"))  # uint8 (H, W, 3)
        self.writer.add_image(tag, pixels, step, dataformats="HWC")

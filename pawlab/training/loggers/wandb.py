"""``--log wandb``: a Weights & Biases run with the recipe as its config and each epoch's
metrics (step: the epoch), in ``RUN_DIR/wandb/``.

Offline unless ``WANDB_MODE`` says otherwise (``WANDB_MODE=online`` with a logged-in account
sends it as it runs); ``wandb sync RUN_DIR/wandb/offline-run-*`` uploads an offline run later.
The project is ``WANDB_PROJECT``, else ``pawlab``; the run is named after the run directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pawlab.training.loggers.base import LOGGER_ORDER, LOGGERS, epoch_metrics, recipe, require
from pawlab.training.loop import Callback, Trainer

__all__ = ["WandbLogger"]


@LOGGERS.register("wandb")
class WandbLogger(Callback):
    """One W&B run per training run (rank 0); ``after_fit`` finishes it, and a fine-tuning
    phase or a ``--resume`` resumes it by its id."""

    order = LOGGER_ORDER

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._wandb: Any = require("wandb", "wandb")
        self.run: Any = None  # a wandb Run while fitting
        self.run_id: str | None = None

    def before_fit(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        wandb = self._wandb
        self.run = wandb.init(
            dir=str(self.run_dir),
            project=os.environ.get("WANDB_PROJECT") or "pawlab",
            name=self.run_dir.name,
            config=recipe(trainer.config),
            mode=os.environ.get("WANDB_MODE") or "offline",
            id=self.run_id,
            resume="allow" if self.run_id else None,
            # pawlab's own progress stays on the terminal, uncaptured; its one line says where
            settings=wandb.Settings(console="off", silent=True),
        )
        if self.run_id is None:
            trainer.log(f"wandb: run {self.run.id} in {Path(self.run.dir).parent}")
        self.run_id = self.run.id

    def state_dict(self) -> dict[str, Any]:
        """The run's id, kept with the resumable state: ``--resume`` resumes the same run."""
        return {"run_id": self.run_id} if self.run_id else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id") or self.run_id

    def after_epoch(self, trainer: Trainer) -> None:
        if self.run is not None:
            self.run.log(epoch_metrics(trainer), step=trainer.state.epoch)

    def after_fit(self, trainer: Trainer) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if trainer.state.error is not None else 0)
            self.run = None

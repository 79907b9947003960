"""``--log mlflow``: an MLflow run with the recipe as params, each epoch's metrics (step: the
epoch) and, at the end, the model file as an artifact.

The tracking store is ``MLFLOW_TRACKING_URI`` when set, else ``RUN_DIR/mlflow.db``, a SQLite
file (no server; MLflow's file store is deprecated), whose artifacts go to
``RUN_DIR/mlartifacts/``: ``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db`` shows
it. The experiment is ``MLFLOW_EXPERIMENT_NAME``, else ``pawlab``; the run is named after the
run directory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pawlab import runlog
from pawlab.training.loggers.base import LOGGER_ORDER, LOGGERS, epoch_metrics, recipe, require
from pawlab.training.loop import Callback, Trainer

__all__ = ["MLflowLogger"]

DATABASE = "mlflow.db"
ARTIFACTS = "mlartifacts"


@LOGGERS.register("mlflow")
class MLflowLogger(Callback):
    """One MLflow run per `MLflowLogger` (rank 0): a fine-tuning phase goes on logging to the
    head phase's run; ``after_fit`` ends it (finished, killed when interrupted, failed)."""

    order = LOGGER_ORDER

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._tracking: Any = require("mlflow", "mlflow.tracking")
        self._entities: Any = require("mlflow", "mlflow.entities")
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.run_dir.resolve() / DATABASE}"
        self.client: Any = None  # an MlflowClient while fitting
        self.run_id: str | None = None

    def before_fit(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        self.client = self._tracking.MlflowClient(tracking_uri=self.uri)
        if self.run_id is not None:  # the fine-tuning phase: the same run goes on
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(self._experiment(), run_name=self.run_dir.name)
        self.run_id = run.info.run_id
        params = [self._entities.Param(k, str(v)) for k, v in recipe(trainer.config).items()]
        self.client.log_batch(self.run_id, params=params)

    def _experiment(self) -> str:
        """The experiment's id, made if new; in the run directory's own store, its artifacts
        beside the database (MLflow's default is ./mlruns in the working folder)."""
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "pawlab"
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        own_store = not os.environ.get("MLFLOW_TRACKING_URI")
        location = (self.run_dir.resolve() / ARTIFACTS).as_uri() if own_store else None
        return str(self.client.create_experiment(name, artifact_location=location))

    def after_epoch(self, trainer: Trainer) -> None:
        if self.client is None or self.run_id is None:
            return
        now, epoch = int(time.time() * 1000), trainer.state.epoch
        metrics = [self._entities.Metric(k, v, now, epoch) for k, v in epoch_metrics(trainer).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def after_fit(self, trainer: Trainer) -> None:
        if self.client is None or self.run_id is None:
            return
        try:
            model = Path((runlog.read_config(self.run_dir) or {}).get("model", self.run_dir / runlog.MODEL))
            if trainer.state.error is None and model.is_file():
                self.client.log_artifact(self.run_id, str(model))
        finally:
            status = (
                "FAILED" if trainer.state.error else "KILLED" if trainer.state.interrupted else "FINISHED"
            )
            self.client.set_terminated(self.run_id, status=status)
            self.client = None

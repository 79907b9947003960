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
    """One MLflow run per training run (rank 0): a fine-tuning phase, and a ``--resume``, go
    on logging to the same run; ``after_fit`` ends it (finished, killed when interrupted,
    failed)."""

    order = LOGGER_ORDER

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._tracking: Any = require("mlflow", "mlflow.tracking")
        self._entities: Any = require("mlflow", "mlflow.entities")
        self._exceptions: Any = require("mlflow", "mlflow.exceptions")
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.run_dir.resolve() / DATABASE}"
        self.client: Any = None  # an MlflowClient while fitting
        self.run_id: str | None = None

    def before_fit(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        self.client = self._tracking.MlflowClient(tracking_uri=self.uri)
        if self.run_id is not None and self._goes_on(trainer):  # a later phase, or a resumed run
            return
        run = self.client.create_run(self._experiment(), run_name=self.run_dir.name)
        self.run_id = run.info.run_id
        params = [self._entities.Param(k, str(v)) for k, v in recipe(trainer.config).items()]
        self.client.log_batch(self.run_id, params=params)

    def _goes_on(self, trainer: Trainer) -> bool:
        """The run of ``run_id`` goes on (a fine-tuning phase, or ``--resume``); False where
        the store no longer has it (another ``MLFLOW_TRACKING_URI``): then a new run begins."""
        try:
            self.client.update_run(self.run_id, status="RUNNING")
        except self._exceptions.MlflowException:
            trainer.log(f"mlflow: run {self.run_id} is not in {self.uri}: a new run")
            return False
        return True

    def state_dict(self) -> dict[str, Any]:
        """The run's id, kept with the resumable state: ``--resume`` logs to the same run."""
        return {"run_id": self.run_id} if self.run_id else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id") or self.run_id

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

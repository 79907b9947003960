"""Experiment trackers as callbacks: ``pawlab train --log tensorboard,mlflow,wandb``.

Each logger is one file holding one `Callback`, registered in `LOGGERS` by name; its
tracker's package is an optional extra (``pip install 'pawlab[tensorboard]'``), imported only
when the logger is built, so a run without ``--log`` imports none of them.

    tensorboard.py  event files in RUN_DIR/tensorboard/: scalars, images, the recipe
    mlflow.py       an MLflow run in RUN_DIR/mlflow.db (or MLFLOW_TRACKING_URI)
    wandb.py        a W&B run in RUN_DIR/wandb/, offline unless WANDB_MODE says otherwise
"""

from __future__ import annotations

import os
from pathlib import Path

from pawlab.errors import ConfigError
from pawlab.training.loggers import mlflow, tensorboard, wandb  # noqa: F401 (they register)
from pawlab.training.loggers.base import LOGGERS, require
from pawlab.training.loop import Callback

__all__ = ["LOGGERS", "loggers_for", "require"]


def loggers_for(names: str, run_dir: str | os.PathLike[str]) -> list[Callback]:
    """The loggers ``names`` asks for (``"tensorboard,mlflow"``; empty: none), writing beside
    ``run_dir``. An unknown or repeated name, or a tracker not installed, is a one-line
    `ConfigError`."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in LOGGERS]
    if unknown:
        raise ConfigError(f"--log: unknown logger {unknown[0]!r} (known: {', '.join(LOGGERS.names())})")
    keys = [LOGGERS.canonical(n) for n in wanted]
    repeated = next((k for k in keys if keys.count(k) > 1), None)
    if repeated is not None:
        raise ConfigError(f"--log: {repeated} is named twice")
    return [LOGGERS.get(n)(Path(run_dir)) for n in wanted]

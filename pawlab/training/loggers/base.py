"""What the loggers share: their registry, the optional package each needs, the recipe and
the epoch's metrics in the form trackers take."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Protocol

from pawlab.config import TrainConfig
from pawlab.errors import ConfigError
from pawlab.registry import Registry
from pawlab.training.loop import Callback, Trainer

__all__ = ["LOGGERS", "LoggerFactory", "epoch_metrics", "recipe", "require"]

Scalar = float | int | str | bool | None


class LoggerFactory(Protocol):
    """A logger class: built with the run directory it logs beside."""

    def __call__(self, run_dir: Path) -> Callback: ...


# name -> logger class; each class imports its tracker's package only when it is built
LOGGERS: Registry[LoggerFactory] = Registry("logger")

# after every callback of a run (the best checkpoint writes the model file at order 10)
LOGGER_ORDER = 60


def require(name: str, module: str) -> ModuleType:
    """``module``, imported; when it is missing, a one-line error naming ``name``'s extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"--log {name} needs the {name} extra: pip install 'pawlab[{name}]'") from None


def recipe(config: TrainConfig) -> dict[str, Scalar]:
    """The recipe as flat ``name: value`` pairs (``augment.rotate``), with the learning rate
    the run uses rather than ``None`` for the optimizer's default."""
    flat: dict[str, Scalar] = {}
    for key, value in config.to_json().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    flat["lr"], flat["weight_decay"] = config.learning_rate, config.decay
    return flat


def epoch_metrics(trainer: Trainer) -> dict[str, float]:
    """The epoch's metrics (``train_loss``, ``val_loss``, ``val_accuracy``, ``lr``,
    ``images_per_s``, ``seconds``) without the epoch number, which is their step."""
    return {k: float(v) for k, v in trainer.state.metrics.items() if k != "epoch"}

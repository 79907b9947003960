"""pawlab: a workbench for training and using image classifiers.

    import pawlab
    pawlab.prepare("cats_and_dogs.zip", "data/", pawlab.DataConfig(size=64))
    pawlab.train("data/", "model.safetensors", arch="cortex-cnn", config=pawlab.TrainConfig(epochs=10))
    pawlab.load_model("model.safetensors").predict("cat.jpg")

The public names below are imported on first use, so that ``import pawlab`` (and the data
workers, which import ``pawlab.data``) do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pawlab._version import __version__

if TYPE_CHECKING:
    from pawlab.config import AugmentConfig, DataConfig, RuntimeConfig, TrainConfig
    from pawlab.data import Dataset, ImageSet, PrepareReport, load_dataset, prepare
    from pawlab.errors import (
        ArchitectureError,
        ConfigError,
        DataError,
        ModelFileError,
        OutputError,
        PawlabError,
        SmallImageWarning,
        TrainingDiverged,
        WorkerError,
    )
    from pawlab.inference import EvalReport, Model, Prediction, Predictions, evaluate, load_model, submit
    from pawlab.models import ARCHITECTURES, LAYERS, Network, build, get_architecture, load_arch_file
    from pawlab.training import Callback, Event, Trainer, TrainResult, resume, train

_EXPORTS = {
    "pawlab.config": ["AugmentConfig", "DataConfig", "RuntimeConfig", "TrainConfig"],
    "pawlab.data": ["Dataset", "ImageSet", "PrepareReport", "load_dataset", "prepare"],
    "pawlab.errors": [
        "ArchitectureError",
        "ConfigError",
        "DataError",
        "ModelFileError",
        "OutputError",
        "PawlabError",
        "SmallImageWarning",
        "TrainingDiverged",
        "WorkerError",
    ],
    "pawlab.inference": [
        "EvalReport",
        "Model",
        "Prediction",
        "Predictions",
        "evaluate",
        "load_model",
        "submit",
    ],
    "pawlab.models": ["ARCHITECTURES", "LAYERS", "Network", "build", "get_architecture", "load_arch_file"],
    "pawlab.training": ["Callback", "Event", "Trainer", "TrainResult", "resume", "train"],
    "pawlab.serve": ["serve"],  # the subpackage itself, callable
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "ARCHITECTURES",
    "LAYERS",
    "ArchitectureError",
    "AugmentConfig",
    "Callback",
    "ConfigError",
    "DataConfig",
    "DataError",
    "Dataset",
    "EvalReport",
    "Event",
    "ImageSet",
    "Model",
    "ModelFileError",
    "Network",
    "OutputError",
    "PawlabError",
    "Prediction",
    "Predictions",
    "PrepareReport",
    "RuntimeConfig",
    "SmallImageWarning",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "WorkerError",
    "__version__",
    "build",
    "evaluate",
    "get_architecture",
    "load_arch_file",
    "load_dataset",
    "load_model",
    "prepare",
    "resume",
    "serve",
    "submit",
    "train",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'pawlab' has no attribute {name!r}")
    imported = importlib.import_module(module)
    value = imported if module == f"pawlab.{name}" else getattr(imported, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

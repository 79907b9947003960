"""pawlab: a workbench for training and using image classifiers.

import pawlab
pawlab.prepare("cats_and_dogs.zip", "data/", pawlab.DataConfig(size=64))
pawlab.train("data/", "model.safetensors", arch="cortex-cnn", config=pawlab.TrainConfig(epochs=10))
pawlab.load_model("model.safetensors").predict("cat.jpg")
"""

from pawlab._version import __version__
from pawlab.config import AugmentConfig, DataConfig, TrainConfig
from pawlab.data import Dataset, ImageSet, load_dataset, prepare
from pawlab.errors import ArchitectureError, ConfigError, DataError, ModelFileError, PawlabError
from pawlab.inference import EvalReport, Model, Prediction, evaluate, load_model, submit
from pawlab.layers import LAYERS
from pawlab.models import ARCHITECTURES, Network, build, get_architecture, load_arch_file
from pawlab.training import Callback, Trainer, TrainResult, train

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
    "ImageSet",
    "Model",
    "ModelFileError",
    "Network",
    "PawlabError",
    "Prediction",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "__version__",
    "build",
    "evaluate",
    "get_architecture",
    "load_arch_file",
    "load_dataset",
    "load_model",
    "prepare",
    "submit",
    "train",
]

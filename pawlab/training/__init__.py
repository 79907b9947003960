"""Training: one plain loop with named events, and the runs built on it.

loop.py         `Trainer`: a run's phases, epochs, batches, validation, its state; fires `Event`s
                to `Callback`s
objectives.py   what the loop minimises and how validation scores: (model, batch) in, no trainer
callbacks.py    the run directory, the best model file and its records, logs, progress, early stopping
inputs.py       an epoch's order; batches of images or of cached features made into inputs
optim.py        optimizers, parameter groups, learning-rate schedules
augment.py      batch augmentation in torch
runs.py         `train` and `resume`: data, network and card, then a `Trainer` runs it
presets.py      named recipes
experiments.py  the optimizer comparison
"""

from pawlab.training.loop import Callback, Event, FeatureSet, Phase, Trainer, TrainState
from pawlab.training.runs import TrainResult, resume, train

__all__ = [
    "Callback",
    "Event",
    "FeatureSet",
    "Phase",
    "TrainResult",
    "TrainState",
    "Trainer",
    "resume",
    "train",
]

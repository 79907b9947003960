"""Training: one plain loop with named events, and the runs built on it.

loop.py         `Trainer`: epochs, batches, validation, its state; fires `Event`s to `Callback`s
objectives.py   what the loop minimises and how validation scores: (model, batch) in, no trainer
callbacks.py    checkpoints, logs (metrics.jsonl, events.jsonl), progress, early stopping
inputs.py       an epoch's order; batches of images or of cached features made into inputs
optim.py        optimizers, parameter groups, learning-rate schedules
augment.py      batch augmentation in torch
runs.py         `train` and `resume`: data, network, run directory, fine-tuning phases
presets.py      named recipes
experiments.py  the optimizer comparison
"""

from pawlab.training.loop import Callback, Event, FeatureSet, Trainer, TrainState
from pawlab.training.runs import TrainResult, resume, train

__all__ = ["Callback", "Event", "FeatureSet", "TrainResult", "TrainState", "Trainer", "resume", "train"]

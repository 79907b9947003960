"""Optimizers and learning-rate schedules by name (registries, as layers and architectures are):
what `TrainConfig` checks its names against, what the CLI's help lists, and each one's defaults.

A schedule is a multiplier of the base learning rate, from where the run is: ``t`` the share of
the scheduled steps done (0 to 1; None when the run has no end) and ``epoch`` the scheduled
epochs done.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pawlab.registry import Registry

if TYPE_CHECKING:  # torch is imported where an optimizer is built: data code and the dashboard read configs
    import torch

# (params or groups, lr, weight decay, momentum, nesterov) -> an optimizer
Build = Callable[[Any, float, float, float, bool], "torch.optim.Optimizer"]


@dataclass(frozen=True)
class OptimizerKind:
    build: Build
    lr: float  # its default learning rate
    weight_decay: float = 0.0  # its default weight decay


def _sgd(params: Any, lr: float, wd: float, momentum: float, nesterov: bool) -> torch.optim.Optimizer:
    import torch

    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)


def _rmsprop(params: Any, lr: float, wd: float, momentum: float, nesterov: bool) -> torch.optim.Optimizer:
    import torch

    return torch.optim.RMSprop(params, lr=lr, momentum=0.0, weight_decay=wd)  # as Cortex compared it


def _adagrad(params: Any, lr: float, wd: float, momentum: float, nesterov: bool) -> torch.optim.Optimizer:
    import torch

    return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)


def _adam(params: Any, lr: float, wd: float, momentum: float, nesterov: bool) -> torch.optim.Optimizer:
    import torch

    return torch.optim.Adam(params, lr=lr, weight_decay=wd)


def _adamw(params: Any, lr: float, wd: float, momentum: float, nesterov: bool) -> torch.optim.Optimizer:
    import torch

    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


OPTIMIZERS: Registry[OptimizerKind] = Registry("optimizer")
DEFAULT_OPTIMIZER = "adam"
for _name, _kind in {
    "sgd": OptimizerKind(_sgd, lr=0.01),
    "rmsprop": OptimizerKind(_rmsprop, lr=1e-3),
    "adagrad": OptimizerKind(_adagrad, lr=1e-2),
    "adam": OptimizerKind(_adam, lr=1e-3),
    "adamw": OptimizerKind(_adamw, lr=1e-3, weight_decay=0.01),
}.items():
    OPTIMIZERS.register(_name)(_kind)


@dataclass(frozen=True)
class ScheduleKind:
    # (t, epoch, step_every, step_gamma) -> the multiplier of the base learning rate
    factor: Callable[[float | None, int, int, float], float]
    needs_epochs: bool  # it needs to know where the run ends (not for --forever)


SCHEDULES: Registry[ScheduleKind] = Registry("schedule")
DEFAULT_SCHEDULE = "constant"


def _one_cycle(at: float | None, epoch: int, every: int, gamma: float) -> float:
    """Linear warm-up over the first 30% from lr/25, then cosine down to lr/1e4 (fastai's)."""
    t, warm = _at(at), 0.3
    if t < warm:
        return 1 / 25 + (1 - 1 / 25) * t / warm
    return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (t - warm) / (1 - warm)))


def _at(t: float | None) -> float:
    assert t is not None, "a schedule that needs epochs was given none"
    return t


def _constant(t: float | None, epoch: int, every: int, gamma: float) -> float:
    return 1.0


def _step(t: float | None, epoch: int, every: int, gamma: float) -> float:
    return float(gamma ** (epoch // every))


def _cosine(t: float | None, epoch: int, every: int, gamma: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * _at(t)))


for _name, _schedule in {
    "constant": ScheduleKind(_constant, needs_epochs=False),
    "step": ScheduleKind(_step, needs_epochs=False),
    "cosine": ScheduleKind(_cosine, needs_epochs=True),
    "one-cycle": ScheduleKind(_one_cycle, needs_epochs=True),
}.items():
    SCHEDULES.register(_name)(_schedule)


def choices(registry: Registry[Any], default: str) -> str:
    """``a, b or c (default b)``: a registry's names for a flag's help."""
    names = registry.names()
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    return f"{listed} (default {default})"

"""Optimizers and schedules by name: each registered one builds, each default lives in the
registry, and the CLI's help lists what is registered."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pawlab.config import TrainConfig
from pawlab.errors import ConfigError
from pawlab.optimizers import DEFAULT_OPTIMIZER, DEFAULT_SCHEDULE, OPTIMIZERS, SCHEDULES, choices
from pawlab.training.optim import make_optimizer


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_each_optimizer_builds_at_its_default_rate_and_decay(name: str) -> None:
    kind = OPTIMIZERS.get(name)
    config = TrainConfig(optimizer=name)
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(3))], config)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (kind.lr, kind.weight_decay)
    assert (config.learning_rate, config.decay) == (kind.lr, kind.weight_decay)
    assert type(optimizer).__name__.lower() == name


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_each_schedule_starts_at_most_at_the_base_rate_and_stays_positive(name: str) -> None:
    kind = SCHEDULES.get(name)
    ends = [i / 20 for i in range(20)]  # before the end (a cosine reaches 0 there)
    factors = [kind.factor(t, epoch, 3, 0.5) for epoch, t in enumerate(ends)]
    assert all(0 < f <= 1 for f in factors)
    if not kind.needs_epochs:
        assert kind.factor(None, 7, 3, 0.5) > 0
        TrainConfig(epochs=None, schedule=name)
    else:
        with pytest.raises(ConfigError, match=f"{name} needs a number of epochs"):
            TrainConfig(epochs=None, schedule=name)


def test_defaults_are_the_registries_and_unknown_names_list_them() -> None:
    assert (TrainConfig().optimizer, TrainConfig().schedule) == (DEFAULT_OPTIMIZER, DEFAULT_SCHEDULE)
    with pytest.raises(ConfigError, match="unknown optimizer 'lbfgs' \\(known: adagrad, adam, adamw"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ConfigError, match="unknown schedule 'linear' \\(known: constant, cosine"):
        TrainConfig(schedule="linear")
    assert choices(SCHEDULES, "constant") == "constant, cosine, one-cycle or step (default constant)"


def test_the_train_help_lists_every_optimizer_and_schedule() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pawlab", "train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flat = " ".join(out.split())
    assert choices(OPTIMIZERS, DEFAULT_OPTIMIZER) in flat
    assert choices(SCHEDULES, DEFAULT_SCHEDULE) in flat
    assert "default: the optimizer's (0.01 for adamw, else 0)" in flat

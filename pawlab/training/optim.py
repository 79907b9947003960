"""Optimizers, parameter groups and learning-rate schedules, from a `TrainConfig`."""

from __future__ import annotations

from typing import Any

import torch

from pawlab.config import TrainConfig
from pawlab.models.layers import BackboneFeatures
from pawlab.optimizers import OPTIMIZERS, SCHEDULES


def make_optimizer(params: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` (a name of `OPTIMIZERS`) over ``params`` at the recipe's rate and decay."""
    build = OPTIMIZERS.get(cfg.optimizer).build
    return build(params, cfg.learning_rate, cfg.decay, cfg.momentum, cfg.nesterov)


def param_groups(network: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The trainable parameters in optimizer groups (`_groups_by_rate`); with weight decay,
    each split so that biases and normalisation weights (tensors of fewer than 2 dimensions)
    are not decayed, as nanoGPT and most recipes do."""
    groups = _groups_by_rate(network, cfg)
    if cfg.decay <= 0 or cfg.decay_all:
        return groups
    split = []
    for g in groups:
        decayed = [p for p in g["params"] if p.dim() >= 2]
        kept = [p for p in g["params"] if p.dim() < 2]
        split += [{**g, "params": decayed}, {**g, "params": kept, "weight_decay": 0.0}]
    return [g for g in split if g["params"]]


def _groups_by_rate(network: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The trainable parameters in optimizer groups, each with its ``lr_scale``. With
    ``cfg.lr_spread`` > 1 and a trainable backbone: one group per backbone stage, from the input
    side, then the rest (the head); their scales rise geometrically from 1 / lr_spread to 1
    (fastai's discriminative learning rates)."""
    trainable = [p for p in network.parameters() if p.requires_grad]
    backbones = [m for m in network.modules() if isinstance(m, BackboneFeatures) and not m.frozen]
    if cfg.lr_spread <= 1 or not backbones:
        return [{"params": trainable, "lr_scale": 1.0}]
    # stage i of every trainable backbone (several in an ensemble) shares group i
    per_backbone = [b.net.stages() for b in backbones]
    stages = [
        [
            p
            for stages_of in per_backbone
            if i < len(stages_of)
            for m in stages_of[i]
            for p in m.parameters()
            if p.requires_grad
        ]
        for i in range(max(len(s) for s in per_backbone))
    ]
    stages = [s for s in stages if s]
    seen = {id(p) for s in stages for p in s}
    groups = [*stages, [p for p in trainable if id(p) not in seen]]
    n = len(groups)
    return [
        {"params": g, "lr_scale": cfg.lr_spread ** (-(n - 1 - i) / (n - 1))}
        for i, g in enumerate(groups)
        if g
    ]


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The schedule's multiplier of the base learning rate at optimizer step ``step`` (counted
    from the first epoch; the schedule runs from epoch ``cfg.schedule_start``)."""
    step = max(0, step - cfg.schedule_start * steps_per_epoch)
    t = None
    if cfg.epochs is not None:
        total = max(1, (cfg.epochs - cfg.schedule_start) * steps_per_epoch)
        t = min(step / total, 1.0)
    return SCHEDULES.get(cfg.schedule).factor(t, step // steps_per_epoch, cfg.step_every, cfg.step_gamma)

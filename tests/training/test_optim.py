"""Optimizer parameter groups (`pawlab.training.optim`); the learning-rate schedules and the
single-backbone groups are tested with the loop in test_loop.py."""

from __future__ import annotations

import pytest

from pawlab.config import TrainConfig
from pawlab.models import build, transfer_architecture
from pawlab.training.optim import param_groups


def test_an_ensembles_backbones_share_their_stages_learning_rates() -> None:
    spec = transfer_architecture("efficientnet_lite0,efficientnet_lite1", size=32, frozen=False)
    net = build(spec, 2, pretrained=False)
    cfg = TrainConfig(optimizer="adamw", lr=1e-3, lr_spread=100.0, epochs=2, weight_decay=0.0)
    groups = param_groups(net, cfg)
    members = [part.member.net for part in net.body[0].parts]  # unfrozen: no trunk
    stages = [m.stages() for m in members]
    assert len(groups) == len(stages[0]) + 1  # one per stage, then the head
    for i, group in enumerate(groups[:-1]):  # stage i of both backbones, at one rate
        expected = {id(p) for s in stages for m in s[i] for p in m.parameters() if p.requires_grad}
        assert {id(p) for p in group["params"]} == expected
    assert groups[0]["lr_scale"] == pytest.approx(0.01) and groups[-1]["lr_scale"] == pytest.approx(1.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in net.parameters() if p.requires_grad)

"""The model file's card: typed, read and written in one place, every key kept."""

from __future__ import annotations

from pathlib import Path

import torch

from pawlab import checkpoint
from pawlab.checkpoint import ModelCard, TrainingRecord


def test_a_card_keeps_the_keys_it_does_not_know_and_writes_no_null(tmp_path: Path) -> None:
    header = {
        "classes": ["a", "b"],
        "latent": 2,  # a generator's, say: not a field of the card
        "training": {"epoch": 3, "best": None, "recipe": {"vae_epochs": 4}},
    }
    card = ModelCard.from_json(header)
    assert card.classes == ["a", "b"] and card.other == {"latent": 2}
    assert card.training == TrainingRecord(epoch=3, other={"recipe": {"vae_epochs": 4}})
    assert card.to_json() == {
        "classes": ["a", "b"],
        "training": {"epoch": 3, "recipe": {"vae_epochs": 4}},
        "latent": 2,
    }
    path = checkpoint.save(tmp_path / "m.safetensors", {"w": torch.ones(2)}, card)
    assert checkpoint.read_card(path) == card and checkpoint.load(path).card == card
    assert checkpoint.read_meta(path) == {"format": "pawlab-model", "format_version": 1, **card.to_json()}


def test_a_checkpoint_copy_owns_its_tensors() -> None:
    w = torch.ones(2)
    ck = checkpoint.Checkpoint(
        ModelCard(), {"w": w}, {"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": []}
    )
    kept = ck.copy()
    w.add_(1)
    assert torch.equal(kept.model_state["w"], torch.ones(2)) and kept.optimizer_state is not None
    assert kept.optimizer_state["state"][0]["step"] is not ck.optimizer_state["state"][0]["step"]  # type: ignore[index]

"""Pretrained backbones load strictly and recognise real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pawlab._imageio import decode
from pawlab.backbones import BACKBONES, load_backbone
from pawlab.errors import ModelFileError
from tests.conftest import CATS_DOGS, requires_cats_dogs


@requires_cats_dogs
@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_recognises_a_cat(name: str) -> None:
    model, spec = load_backbone(name)
    photos = sorted((CATS_DOGS / "validation" / "cats").glob("*.jpg"))[:4]
    x = np.stack([decode(p.read_bytes(), (spec.size, spec.size)) for p in photos])
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255)
    t = (t - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        top5 = model(t).topk(5).indices.tolist()
        features = model.forward_features(t)
    assert features.shape == (4, model.features)
    cat_photos = sum(any(281 <= i <= 285 for i in row) for row in top5)  # ImageNet's cat classes
    assert cat_photos >= 3, top5


def test_wrong_weights_are_refused_with_the_keys(tmp_path: Path) -> None:
    bad = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ModelFileError, match="missing keys"):
        load_backbone("efficientnet_lite0", bad)
    with pytest.raises(ModelFileError, match="unknown backbone"):
        load_backbone("resnet9000")


def test_frozen_backbone_trains_only_its_head(tmp_path: Path) -> None:
    import io

    from pawlab import checkpoint
    from pawlab.config import TrainConfig
    from pawlab.inference import load_model
    from pawlab.models import transfer_architecture
    from pawlab.training import train
    from tests.conftest import write_tree

    src = write_tree(tmp_path / "src", {"cat": 8, "dog": 8})
    out = tmp_path / "m.safetensors"
    before, _ = load_backbone("efficientnet_lite0")
    train(
        src,
        out,
        transfer_architecture("efficientnet_lite0", size=32),
        TrainConfig(epochs=2, progress=False),
        workers=1,
        stream=io.StringIO(),
    )
    state = checkpoint.load(out).model_state
    for name, tensor in before.state_dict().items():  # weights and batch-norm statistics unchanged
        assert torch.equal(state[f"body.0.net.{name}"], tensor), name
    pred = load_model(out).predict(src / "cat" / "cat.0.jpg")
    assert set(pred.probabilities) == {"cat", "dog"}

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pawlab import checkpoint
from pawlab.augment import augment_batch, random_flip, random_rotate
from pawlab.config import AugmentConfig, DataConfig, TrainConfig
from pawlab.data import load_dataset
from pawlab.errors import ConfigError
from pawlab.training import Callback, Trainer, train

TINY = [
    {"type": "input", "size": 16, "channels": 3},
    {"type": "conv", "kernel": 3, "filters": 8, "pad": 1},
    {"type": "relu"},
    {"type": "max-pool", "kernel": 2},
    {"type": "linear"},
    {"type": "softmax"},
]
FAST = TrainConfig(epochs=4, optimizer="adam", lr=3e-3, batch_size=8, progress=False)


def _train(tree: Path, out: Path, config: TrainConfig = FAST, **kw: object) -> object:
    return train(tree, out, TINY, config, workers=1, stream=io.StringIO(), **kw)  # type: ignore[arg-type]


def test_train_writes_self_describing_model(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    result = _train(tree, out)
    ck = checkpoint.load(out, with_optimizer=True)
    assert ck.meta["classes"] == ["cat", "dog"]
    assert ck.meta["architecture"][0] == {"type": "input", "size": 16, "channels": 3}
    assert ck.meta["preprocessing"]["size"] == [16, 16]
    assert set(ck.meta["metrics"]) >= {"epoch", "train_loss", "val_loss", "val_accuracy"}
    assert ck.meta["training"]["config"]["optimizer"] == "adam"
    assert ck.meta["training"]["data"]["source"] == str(tree.resolve())
    assert ck.optimizer_state is not None and ck.optimizer_state["state"]
    assert len(result.history) == 4  # type: ignore[attr-defined]
    # the file holds the best epoch by validation loss
    best = min(result.history, key=lambda m: m["val_loss"])  # type: ignore[attr-defined]
    assert ck.meta["metrics"]["epoch"] == best["epoch"]


def test_learns_an_easy_task(tree: Path, tmp_path: Path) -> None:
    result = _train(tree, tmp_path / "m.safetensors", FAST.with_(epochs=8))
    assert result.best["val_accuracy"] >= 0.9  # type: ignore[attr-defined]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]  # type: ignore[attr-defined]


def test_saves_only_when_validation_loss_improves(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved_epochs: list[int] = []
    real_save = Trainer.save

    def spy(self: Trainer, path: object) -> Path:
        saved_epochs.append(self.state.epoch)
        return real_save(self, path)  # type: ignore[arg-type]

    monkeypatch.setattr(Trainer, "save", spy)
    result = _train(tree, tmp_path / "m.safetensors", FAST.with_(epochs=6))
    losses = [m["val_loss"] for m in result.history]  # type: ignore[attr-defined]
    expected = [i + 1 for i, v in enumerate(losses) if v < min(losses[:i], default=math.inf)]
    assert saved_epochs == expected


def test_same_seed_same_metrics(tree: Path, tmp_path: Path) -> None:
    cfg = FAST.with_(augment=AugmentConfig(rotate=20, noise=0.1, flip=True))
    a = _train(tree, tmp_path / "a.safetensors", cfg).history  # type: ignore[attr-defined]
    b = _train(tree, tmp_path / "b.safetensors", cfg).history  # type: ignore[attr-defined]
    strip = [{k: v for k, v in m.items() if k != "seconds"} for m in a]
    assert strip == [{k: v for k, v in m.items() if k != "seconds"} for m in b]


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop", "adagrad", "adam", "adamw"])
def test_every_optimizer_trains(tree: Path, tmp_path: Path, optimizer: str) -> None:
    result = _train(tree, tmp_path / "m.safetensors", FAST.with_(epochs=2, optimizer=optimizer, lr=None))
    assert all(math.isfinite(m["train_loss"]) for m in result.history)  # type: ignore[attr-defined]
    assert checkpoint.load(tmp_path / "m.safetensors").meta["training"]["config"]["optimizer"] == optimizer


def test_interrupt_keeps_best_model(tree: Path, tmp_path: Path) -> None:
    class StopAfterTwo(Callback):
        def before_epoch(self, trainer: Trainer) -> None:
            if trainer.state.epoch == 3:
                raise KeyboardInterrupt

    out = tmp_path / "m.safetensors"
    result = _train(tree, out, FAST.with_(epochs=None), callbacks=[StopAfterTwo()])
    assert result.interrupted  # type: ignore[attr-defined]
    assert len(result.history) == 2  # type: ignore[attr-defined]
    assert checkpoint.load(out).meta["metrics"]["epoch"] <= 2


def test_early_stopping(tree: Path, tmp_path: Path) -> None:
    class NeverImproves(Callback):
        order = 15  # after the checkpoint callback

        def after_validation(self, trainer: Trainer) -> None:
            trainer.state.improved = False

    result = _train(
        tree, tmp_path / "m.safetensors", FAST.with_(epochs=20), patience=2, callbacks=[NeverImproves()]
    )
    assert len(result.history) == 2  # type: ignore[attr-defined]


def test_failed_save_leaves_previous_model_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.safetensors"
    checkpoint.save(out, {"w": torch.ones(3)}, {"classes": ["a", "b"]})
    before = out.read_bytes()

    def broken(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken)
    with pytest.raises(OSError):
        checkpoint.save(out, {"w": torch.zeros(3)}, {"classes": ["a", "b"]})
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_checkpoint_round_trip_with_optimizer(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    checkpoint.save(tmp_path / "m.safetensors", net.state_dict(), {"x": [1, 2]}, opt.state_dict())
    ck = checkpoint.load(tmp_path / "m.safetensors", with_optimizer=True)
    assert ck.meta["x"] == [1, 2]
    assert torch.equal(ck.model_state["weight"], net.weight.detach())
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    assert ck.optimizer_state is not None
    opt2.load_state_dict(ck.optimizer_state)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_train_on_loaded_dataset_checks_size(tree: Path, tmp_path: Path) -> None:
    ds = load_dataset(tree, DataConfig(size=20, workers=1), progress=False)
    with pytest.raises(ConfigError, match="expects 3x16x16"):
        train(ds, tmp_path / "m.safetensors", TINY, FAST, stream=io.StringIO())


def test_progress_prints_one_line_per_epoch(tree: Path, tmp_path: Path) -> None:
    stream = io.StringIO()
    train(tree, tmp_path / "m.safetensors", TINY, FAST.with_(epochs=3), workers=1, stream=stream)
    lines = [ln for ln in stream.getvalue().splitlines() if ln.startswith("epoch")]
    assert len(lines) == 3
    assert all("train loss" in ln and "val loss" in ln and "val acc" in ln for ln in lines)
    assert "* saved" in lines[0]


# ----------------------------------------------------------------------------- augmentation


def _batch() -> torch.Tensor:
    return torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def test_augment_keeps_shape_and_range() -> None:
    cfg = AugmentConfig(rotate=25, noise=0.25, flip=True)
    out = augment_batch(_batch(), cfg, torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 12, 12)
    assert out.min() >= 0 and out.max() <= 1


def test_augment_is_seeded() -> None:
    cfg = AugmentConfig(rotate=25, noise=0.25, flip=True)
    a = augment_batch(_batch(), cfg, torch.Generator().manual_seed(3))
    b = augment_batch(_batch(), cfg, torch.Generator().manual_seed(3))
    c = augment_batch(_batch(), cfg, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_mirrors_some_images_exactly() -> None:
    x = _batch()
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and any(flipped)


def test_zero_rotation_is_identity() -> None:
    x = _batch()
    np.testing.assert_allclose(random_rotate(x, 0.0, torch.Generator()).numpy(), x.numpy(), atol=1e-5)


def test_augment_option_parsing() -> None:
    cfg = AugmentConfig.parse("rotate=25,noise=0.25,flip")
    assert cfg == AugmentConfig(rotate=25.0, noise=0.25, flip=True)
    assert AugmentConfig.parse("none") == AugmentConfig()
    with pytest.raises(ConfigError, match="unknown option 'spin'"):
        AugmentConfig.parse("spin=3")
    with pytest.raises(ConfigError, match="augment.rotate"):
        AugmentConfig.parse("rotate=abc")

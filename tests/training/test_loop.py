from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pawlab import checkpoint, runlog
from pawlab.config import AugmentConfig, DataConfig, RuntimeConfig, TrainConfig
from pawlab.data import load_dataset
from pawlab.errors import ConfigError, ModelFileError, OutputError, TrainingDiverged
from pawlab.optimizers import OPTIMIZERS, SCHEDULES
from pawlab.training import Callback, Trainer, TrainResult, resume, train
from pawlab.training.augment import augment_batch, random_flip, random_rotate
from pawlab.training.callbacks import BestCheckpoint
from pawlab.training.inputs import class_weights, epoch_order
from pawlab.training.objectives import Validation
from pawlab.training.optim import lr_factor
from tests.conftest import ROOT, TINY, run_ranks, write_tree

FAST = TrainConfig(epochs=4, optimizer="adam", lr=3e-3, batch_size=8)
QUIET = RuntimeConfig(progress=False)


def _train(tree: Path, out: Path, config: TrainConfig = FAST, **kw: object) -> object:
    kw.setdefault("runtime", QUIET)
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
    real_save = BestCheckpoint.save

    def spy(self: BestCheckpoint, trainer: Trainer) -> None:
        if self.path.name == "m.safetensors":  # the best model, not the resumable state
            saved_epochs.append(trainer.state.epoch)
        real_save(self, trainer)

    monkeypatch.setattr(BestCheckpoint, "save", spy)
    result = _train(tree, tmp_path / "m.safetensors", FAST.with_(epochs=6))
    losses = [m["val_loss"] for m in result.history]  # type: ignore[attr-defined]
    expected = [i + 1 for i, v in enumerate(losses) if v < min(losses[:i], default=math.inf)]
    assert saved_epochs == expected


def test_same_seed_same_metrics(tree: Path, tmp_path: Path) -> None:
    cfg = FAST.with_(augment=AugmentConfig(rotate=20, noise=0.1, flip=True))
    a = _train(tree, tmp_path / "a.safetensors", cfg).history  # type: ignore[attr-defined]
    b = _train(tree, tmp_path / "b.safetensors", cfg).history  # type: ignore[attr-defined]
    timing = ("seconds", "images_per_s")
    strip = [{k: v for k, v in m.items() if k not in timing} for m in a]
    assert strip == [{k: v for k, v in m.items() if k not in timing} for m in b]


@pytest.mark.parametrize("optimizer", OPTIMIZERS.names())
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
    assert len(result.history) == 2
    assert checkpoint.load(out).meta["metrics"]["epoch"] <= 2


def test_early_stopping(tree: Path, tmp_path: Path) -> None:
    class NeverImproves(Callback):
        order = 15  # after the checkpoint callback

        def after_validation(self, trainer: Trainer, validation: Validation) -> None:
            trainer.state.improved = False

    result = _train(
        tree, tmp_path / "m.safetensors", FAST.with_(epochs=20), patience=2, callbacks=[NeverImproves()]
    )
    assert len(result.history) == 2


def test_failed_save_leaves_previous_model_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.safetensors"
    checkpoint.save(out, {"w": torch.ones(3)}, {"classes": ["a", "b"]})
    before = out.read_bytes()

    def broken(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken)
    with pytest.raises(OutputError, match="disk full"):
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


# ----------------------------------------------------------------------------- run state, resume


def test_run_directory_contents(tree: Path, tmp_path: Path) -> None:
    result = _train(tree, tmp_path / "m.safetensors", FAST.with_(epochs=3))
    run = result.run_dir  # type: ignore[attr-defined]
    assert run == tmp_path / "m-run"
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [int(m["epoch"]) for m in lines] == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_accuracy", "lr"} <= set(lines[0])
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["optimizer"] == "adam" and config["model"] == str(tmp_path / "m.safetensors")
    assert checkpoint.load(run / "last.safetensors").meta["training"]["epoch"] == 3
    _train(
        tree, tmp_path / "m.safetensors", FAST.with_(epochs=2), overwrite=True
    )  # a new run in the same place
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_continues_exactly(tree: Path, tmp_path: Path) -> None:
    # a schedule's plan depends on the number of epochs, so "2 then resume to 4" equals a
    # straight 4-epoch run only with a constant (or step) schedule
    cfg = FAST.with_(epochs=4, augment=AugmentConfig(rotate=15, flip=True), schedule="step", step_every=1)
    straight = _train(tree, tmp_path / "c.safetensors", cfg).history  # type: ignore[attr-defined]
    _train(tree, tmp_path / "d.safetensors", cfg.with_(epochs=2))
    resumed = resume(tmp_path / "d-run", epochs=4, workers=1, stream=io.StringIO()).history
    timing = ("seconds", "images_per_s")
    assert [{k: v for k, v in m.items() if k not in timing} for m in resumed] == [
        {k: v for k, v in m.items() if k not in timing} for m in straight
    ]


def test_resume_never_replaces_a_better_model(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "m.safetensors"
    _train(tree, out, FAST.with_(epochs=3))
    best_before = checkpoint.load(out).meta["metrics"]
    best_value = checkpoint.load(tmp_path / "m-run" / "last.safetensors").meta["training"]["best"]
    assert best_value == pytest.approx(min(m["val_loss"] for m in checkpoint.load(out).meta["history"]))

    class Worse(Callback):  # every resumed epoch looks worse than the best so far
        order = 5

        def after_validation(self, trainer: Trainer, validation: Validation) -> None:
            trainer.state.metrics["val_loss"] = best_value + 1.0

    resume(tmp_path / "m-run", epochs=5, workers=1, stream=io.StringIO(), callbacks=[Worse()])
    assert checkpoint.load(out).meta["metrics"] == best_before
    assert checkpoint.load(tmp_path / "m-run" / "last.safetensors").meta["training"]["epoch"] == 5


def test_interrupt_mid_epoch_saves_resumable_state(tree: Path, tmp_path: Path) -> None:
    class StopInEpochTwo(Callback):
        def after_batch(self, trainer: Trainer) -> None:
            if trainer.state.epoch == 2 and trainer.state.batch == 1:
                raise KeyboardInterrupt

    result = _train(tree, tmp_path / "m.safetensors", FAST.with_(epochs=None), callbacks=[StopInEpochTwo()])
    assert result.interrupted  # type: ignore[attr-defined]
    last = checkpoint.load(tmp_path / "m-run" / "last.safetensors", with_optimizer=True)
    assert last.meta["training"]["epoch"] == 1  # epoch 2 did not finish: a resume redoes it
    assert last.meta["training"]["steps"] > result.history[0]["epoch"]  # type: ignore[attr-defined]
    resumed = resume(tmp_path / "m-run", epochs=3, workers=1, stream=io.StringIO())
    assert [int(m["epoch"]) for m in resumed.history] == [1, 2, 3]


def test_monitor_accuracy(tree: Path, tmp_path: Path) -> None:
    result = _train(tree, tmp_path / "m.safetensors", FAST.with_(epochs=4, monitor="val_accuracy"))
    saved = checkpoint.load(tmp_path / "m.safetensors").meta["metrics"]
    assert saved["val_accuracy"] == max(m["val_accuracy"] for m in result.history)  # type: ignore[attr-defined]


@pytest.mark.parametrize("schedule", SCHEDULES.names())
def test_schedules(schedule: str) -> None:
    cfg = TrainConfig(epochs=10, schedule=schedule, step_every=3, step_gamma=0.5)
    factors = [lr_factor(cfg, step, 10) for step in range(100)]
    assert all(0 < f <= 1.0 for f in factors)
    if schedule == "constant":
        assert set(factors) == {1.0}
    elif schedule == "step":
        assert factors[29] == 1.0 and factors[30] == 0.5 and factors[60] == 0.25
    elif schedule == "cosine":
        assert factors[0] == 1.0 and factors[-1] < 0.01 and factors == sorted(factors, reverse=True)
    else:
        assert schedule == "one-cycle", f"{schedule}: say here what its factors must be"
        peak = factors.index(max(factors))
        assert factors[0] < 0.1 and 25 <= peak <= 35 and factors[-1] < 0.01


def test_forever_needs_a_schedule_without_end() -> None:
    with pytest.raises(ConfigError, match="cosine needs a number of epochs"):
        TrainConfig(epochs=None, schedule="cosine")


def test_nan_guard_stops_with_a_clear_error(tree: Path, tmp_path: Path) -> None:
    class Poison(Callback):
        order = -20  # before the guard

        def after_batch(self, trainer: Trainer) -> None:
            if trainer.state.epoch == 2:
                trainer.state.batch_loss = math.nan

    with pytest.raises(TrainingDiverged, match="became nan at epoch 2"):
        _train(tree, tmp_path / "m.safetensors", FAST, callbacks=[Poison()])
    assert checkpoint.load(tmp_path / "m.safetensors").meta["metrics"]["epoch"] == 1


def test_balanced_sampler_and_class_weights() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    gen = torch.Generator().manual_seed(0)
    order = epoch_order(labels, TrainConfig(balance="sampler"), gen)
    share = float((labels[order.numpy()] == 1).mean())
    assert len(order) == 100 and 0.35 < share < 0.65
    w = class_weights(labels, 2)
    assert w[1] / w[0] == pytest.approx(9.0)


def test_augment_copies_repeat_each_image() -> None:
    labels = np.arange(10) % 2
    order = epoch_order(labels, TrainConfig(augment_copies=3), torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == sorted(list(range(10)) * 3)


def test_precision_and_memory_format_agree(tree: Path, tmp_path: Path) -> None:
    fp32 = _train(
        tree, tmp_path / "a.safetensors", runtime=QUIET.with_(precision="fp32", channels_last=False)
    )
    fast = _train(tree, tmp_path / "b.safetensors", runtime=QUIET.with_(precision="bf16", channels_last=True))
    assert abs(fp32.best["val_accuracy"] - fast.best["val_accuracy"]) <= 0.25  # type: ignore[attr-defined]
    assert math.isfinite(fast.history[-1]["train_loss"])  # type: ignore[attr-defined]


@pytest.mark.slow
def test_ddp_two_processes_train_one_model(tmp_path: Path) -> None:
    """Two CPU processes (gloo), started as torchrun starts them: RANK, WORLD_SIZE, MASTER_*."""
    src = write_tree(tmp_path / "src", {"cat": 32, "dog": 32})
    results = run_ranks([str(ROOT / "tests" / "ddp_script.py"), str(src), str(tmp_path)])
    assert [rc for rc, _, _ in results] == [0, 0], results
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    assert ranks[0]["decided"] == ranks[1]["decided"] == "rank 0's choice"
    assert ranks[0]["weights"] == ranks[1]["weights"]  # one model, kept in step on both ranks
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the loss is reduced over both shares
    assert ranks[0]["losses"][-1] < ranks[0]["losses"][0]
    assert (tmp_path / "model.safetensors").is_file()


def test_interrupt_after_an_epoch_finished_keeps_it(tree: Path, tmp_path: Path) -> None:
    class StopAfterSecondEpoch(Callback):
        order = 100

        def after_epoch(self, trainer: Trainer) -> None:
            if trainer.state.epoch == 2:
                raise KeyboardInterrupt

    _train(tree, tmp_path / "m.safetensors", FAST.with_(epochs=None), callbacks=[StopAfterSecondEpoch()])
    assert checkpoint.load(tmp_path / "m-run" / "last.safetensors").meta["training"]["epoch"] == 2


def test_resume_writes_into_the_directory_it_is_given(tree: Path, tmp_path: Path) -> None:
    _train(tree, tmp_path / "m.safetensors", FAST.with_(epochs=2))
    shutil.copytree(tmp_path / "m-run", tmp_path / "branch")
    before = (tmp_path / "m-run" / "last.safetensors").read_bytes()
    resume(
        tmp_path / "branch", epochs=3, out=tmp_path / "branch.safetensors", workers=1, stream=io.StringIO()
    )
    assert (tmp_path / "m-run" / "last.safetensors").read_bytes() == before
    assert checkpoint.load(tmp_path / "branch" / "last.safetensors").meta["training"]["epoch"] == 3


# ----------------------------------------------------------------------------- transfer learning

HEAD_LOG = "head on cached backbone features"


def _transfer(
    src: Path, out: Path, config: TrainConfig, runtime: RuntimeConfig = QUIET
) -> tuple[TrainResult, str]:
    """A frozen EfficientNet-Lite0 with a new head, at 32x32: (result, training log)."""
    from pawlab.models import transfer_architecture

    buf = io.StringIO()
    spec = transfer_architecture("efficientnet_lite0", size=32)
    return train(src, out, spec, config, workers=1, stream=buf, runtime=runtime), buf.getvalue()


def test_frozen_backbone_head_trains_on_cached_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pawlab.data.cache import cache_root
    from pawlab.inference import evaluate, load_model
    from pawlab.inference import features as _features
    from pawlab.inference.agreement import AGREE_MAX_PROB_DIFF
    from pawlab.runtime import use_bf16

    monkeypatch.setenv("PAWLAB_CACHE_DIR", str(tmp_path / "cache"))  # nothing cached yet
    src = write_tree(tmp_path / "src", {"cat": 8, "dog": 8})
    out = tmp_path / "m.safetensors"
    # fp32 features: the head's validation figures are then those of fp32 inference exactly
    result, log = _transfer(src, out, TrainConfig(epochs=2), QUIET.with_(precision="fp32"))
    assert HEAD_LOG in log
    assert len(result.history) == 2
    # the training (plain view) and validation features were cached
    assert cache_root() == tmp_path / "cache"
    assert len(list((cache_root() / "features").glob("*/features.npy"))) == 2
    ck = checkpoint.load(out)
    pre = ck.meta["preprocessing"]
    assert pre["resize"] == "crop" and pre["size"] == [32, 32] and pre["mean"] == [0.5, 0.5, 0.5]
    if "inference" in ck.meta:  # written only where the CPU runs bf16 fast
        record = ck.meta["inference"]
        assert set(record) >= {"precision", "images", "same_class", "max_prob_diff", "ok"}
        assert 0.0 <= record["same_class"] <= 1.0
        assert not record["ok"] or record["max_prob_diff"] <= AGREE_MAX_PROB_DIFF
        assert "bf16 inference" in log
    else:
        assert not use_bf16("auto", torch.device("cpu"))
    model = load_model(out, precision="fp32")
    pred = model.predict(src / "dog" / "dog.2.jpg")
    assert set(pred.probabilities) == {"cat", "dog"}
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    # the metrics measured on cached features are those of the whole network on the pixels
    report = evaluate(model, src, report_dir=tmp_path / "rep", workers=1, progress=False)
    assert report.count == ck.meta["training"]["data"]["validation_count"]
    assert report.accuracy == pytest.approx(ck.meta["metrics"]["val_accuracy"])
    assert report.log_loss == pytest.approx(ck.meta["metrics"]["val_loss"], rel=1e-3, abs=1e-4)

    # a second run on the same data computes no features: all come from the cache
    def no_compute(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("features computed again")

    monkeypatch.setattr(_features, "_passes", no_compute)
    again, log = _transfer(
        src, tmp_path / "again.safetensors", TrainConfig(epochs=1), QUIET.with_(precision="fp32")
    )
    assert HEAD_LOG in log and len(again.history) == 1


@pytest.mark.parametrize(("mirror_below", "views"), [(None, 2), (6, 1)])
def test_flips_cache_mirrored_views_only_below_the_recipes_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mirror_below: int | None, views: int
) -> None:
    from pawlab.data.cache import cache_root

    monkeypatch.setenv("PAWLAB_CACHE_DIR", str(tmp_path / "cache"))
    src = write_tree(tmp_path / "src", {"cat": 6, "dog": 6})  # 9 or 10 training images
    config = TrainConfig(epochs=1, augment=AugmentConfig(flip=True), mirror_below=mirror_below)
    _, log = _transfer(src, tmp_path / "m.safetensors", config, QUIET.with_(precision="fp32"))
    shapes = sorted(np.load(f, mmap_mode="r").shape for f in cache_root().glob("features/*/features.npy"))
    assert [s[1] for s in shapes] == [1, views]  # (N, views, F): validation's, training's
    assert HEAD_LOG in log
    assert ("no mirrored views from 6 training images" in log) == (views == 1)


def test_mirror_below_is_a_positive_number_of_images() -> None:
    flips = TrainConfig(augment=AugmentConfig(flip=True), mirror_below=10_000)
    assert flips.mirrored_views(9_999) and not flips.mirrored_views(10_000)
    assert flips.with_(mirror_below=None).mirrored_views(10**6)
    assert not TrainConfig(mirror_below=10_000).mirrored_views(10)  # no flips, no mirrors
    with pytest.raises(ConfigError, match="mirror_below: must be >= 1, got 0"):
        TrainConfig(mirror_below=0)


def test_pixel_augmentation_runs_the_frozen_backbone(tmp_path: Path) -> None:
    from pawlab.models.backbones import load_backbone

    src = write_tree(tmp_path / "src", {"cat": 6, "dog": 6})
    out = tmp_path / "rot.safetensors"
    _, log = _transfer(src, out, TrainConfig(epochs=1, augment=AugmentConfig(rotate=10)))
    assert HEAD_LOG not in log and "rotate" in log
    pretrained, _ = load_backbone("efficientnet_lite0")
    state = checkpoint.load(out).model_state
    for name, tensor in pretrained.state_dict().items():  # frozen: statistics untouched too
        assert torch.equal(state[f"body.0.net.{name}"], tensor), name
    _, log = _transfer(src, tmp_path / "nocache.safetensors", TrainConfig(epochs=1, cache_features=False))
    assert HEAD_LOG not in log


def test_resize_policy_is_recorded(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pawlab.models import get_architecture, preprocessing_for, transfer_architecture

    assert preprocessing_for(get_architecture("small-cnn")).resize == "squash"
    assert preprocessing_for(transfer_architecture("efficientnet_lite0")).resize == "crop"
    one = FAST.with_(epochs=1)
    _train(tree, tmp_path / "a.safetensors", one)
    assert checkpoint.load(tmp_path / "a.safetensors").meta["preprocessing"]["resize"] == "squash"
    _train(tree, tmp_path / "b.safetensors", one, resize="crop")
    assert checkpoint.load(tmp_path / "b.safetensors").meta["preprocessing"]["resize"] == "crop"
    # and resume loads its data with the policy the run was trained with
    loaded: list[str] = []
    from pawlab.training import runs

    real = runs._Source.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        loaded.append(args[3])  # resize (after self, spec, config)
        return real(*args, **kwargs)

    monkeypatch.setattr(runs._Source, "load", spy)
    resume(tmp_path / "b-run", epochs=2, workers=1, stream=io.StringIO())
    assert loaded == ["crop"]
    last = checkpoint.load(tmp_path / "b-run" / "last.safetensors").meta
    assert last["training"]["epoch"] == 2 and last["preprocessing"]["resize"] == "crop"


def test_resume_of_a_frozen_backbone_run_reuses_its_cached_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pawlab.inference import features as _features

    monkeypatch.setenv("PAWLAB_CACHE_DIR", str(tmp_path / "cache"))
    src = write_tree(tmp_path / "src", {"cat": 6, "dog": 6})
    _transfer(src, tmp_path / "m.safetensors", TrainConfig(epochs=1))

    def no_compute(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("features computed again: not those of the run's backbone")

    monkeypatch.setattr(_features, "_passes", no_compute)
    resume(tmp_path / "m-run", epochs=2, workers=1, stream=io.StringIO())
    assert checkpoint.load(tmp_path / "m-run" / "last.safetensors").meta["training"]["epoch"] == 2


def test_fine_tune_unfreezes_the_backbone_after_the_head(tmp_path: Path) -> None:
    from pawlab.models.backbones import load_backbone

    src = write_tree(tmp_path / "src", {"cat": 6, "dog": 6})
    out = tmp_path / "m.safetensors"
    config = TrainConfig(epochs=2, fine_tune_epochs=1, optimizer="adamw", lr=3e-3)
    result, log = _transfer(src, out, config)
    # two epochs of the head on cached features, then one of the whole network, one history
    assert HEAD_LOG in log and "fine-tuning the whole network from epoch 3" in log
    assert "lr 0.0001 (/100 for the first layers)" in log  # the head's / 30
    assert [int(m["epoch"]) for m in result.history] == [1, 2, 3]
    lines = (tmp_path / "m-run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    # the run's state is the fine-tuning phase's: resumable as it is
    last = checkpoint.load(tmp_path / "m-run" / "last.safetensors")
    backbone = last.meta["architecture"][1]
    assert backbone["type"] == "backbone" and backbone["frozen"] is False
    tuned = TrainConfig.from_json(last.meta["training"]["config"])
    assert (tuned.epochs, tuned.schedule_start, tuned.fine_tune_epochs) == (3, 2, 0)
    assert tuned.lr == pytest.approx(1e-4) and tuned.lr_spread == 100.0
    # the backbone itself was trained in the last epoch
    pretrained = load_backbone("efficientnet_lite0", None)[0].state_dict()
    key = "_conv_stem.weight"
    assert not torch.equal(last.model_state["body.0.net." + key], pretrained[key])
    # the saved model is the best epoch, whichever phase it came from
    best = checkpoint.load(out)
    assert best.meta["metrics"]["epoch"] == result.best["epoch"]
    assert best.meta["architecture"][1]["frozen"] is (result.best["epoch"] <= 2)
    # each optimizer group ran at its share of the rate: input side lr / 100 ... head lr
    last = checkpoint.load(tmp_path / "m-run" / "last.safetensors", with_optimizer=True)
    assert last.optimizer_state is not None
    groups = last.optimizer_state["param_groups"]
    assert groups[0]["lr_scale"] == pytest.approx(0.01) and groups[-1]["lr_scale"] == 1.0
    assert [g["lr"] / g["lr_scale"] for g in groups] == pytest.approx([groups[-1]["lr"]] * len(groups))
    # the fine-tuning phase resumes as it is, with its groups
    with pytest.raises(ConfigError, match="epochs: must be above 2"):
        resume(tmp_path / "m-run", epochs=2, workers=1, stream=io.StringIO())
    again = resume(tmp_path / "m-run", epochs=4, workers=1, stream=io.StringIO())
    assert [int(m["epoch"]) for m in again.history] == [1, 2, 3, 4]
    resumed = checkpoint.load(tmp_path / "m-run" / "last.safetensors", with_optimizer=True)
    assert resumed.optimizer_state is not None
    assert [g["lr_scale"] for g in resumed.optimizer_state["param_groups"]] == [g["lr_scale"] for g in groups]


def test_fine_tune_lr_sets_the_unfrozen_phase_rate(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 6, "dog": 6})
    config = TrainConfig(epochs=1, fine_tune_epochs=1, fine_tune_lr=2e-4, lr=1e-3)
    result, log = _transfer(src, tmp_path / "m.safetensors", config)
    assert "lr 0.0002 (/100 for the first layers)" in log
    last = checkpoint.load(tmp_path / "m-run" / "last.safetensors")
    assert TrainConfig.from_json(last.meta["training"]["config"]).lr == pytest.approx(2e-4)
    with pytest.raises(ConfigError, match="fine_tune_lr"):
        TrainConfig(fine_tune_lr=-1.0)


def test_fine_tune_needs_a_frozen_backbone(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fine_tune_epochs: needs a frozen pretrained backbone"):
        train(tree, tmp_path / "m.safetensors", "small-cnn", FAST.with_(fine_tune_epochs=1))


def test_discriminative_learning_rates_over_backbone_stages() -> None:
    from pawlab.models import build, transfer_architecture
    from pawlab.training.optim import param_groups

    net = build(transfer_architecture("efficientnet_lite0", size=32, frozen=False), 2, pretrained=False)
    cfg = TrainConfig(optimizer="adamw", lr=1e-3, lr_spread=100.0, epochs=2, weight_decay=0.0)
    groups = param_groups(net, cfg)  # without decay: one group per rate
    scales = [g["lr_scale"] for g in groups]
    # input side first at lr / 100, the head last at lr, geometric in between
    assert scales[0] == pytest.approx(0.01) and scales[-1] == pytest.approx(1.0)
    assert scales == sorted(scales) and len(groups) >= 3
    ratios = [b / a for a, b in zip(scales[:-1], scales[1:], strict=True)]
    assert ratios == pytest.approx([ratios[0]] * len(ratios))
    # every trainable parameter exactly once; the head's in the last group
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in net.parameters() if p.requires_grad)
    assert {id(p) for p in net.body[-1].parameters()} <= {id(p) for p in groups[-1]["params"]}
    # one rate for all without a spread, and for a frozen backbone (the head alone)
    assert [g["lr_scale"] for g in param_groups(net, cfg.with_(lr_spread=1.0))] == [1.0]
    frozen = build(transfer_architecture("efficientnet_lite0", size=32), 2, pretrained=False)
    assert [g["lr_scale"] for g in param_groups(frozen, cfg)] == [1.0]
    # the schedule sets each group's rate at its scale
    for config in (cfg, cfg.with_(schedule="one-cycle")):
        opt = torch.optim.AdamW(groups, lr=1.0)
        factor = lr_factor(config, 3, 10)
        for g in opt.param_groups:
            g["lr"] = config.learning_rate * factor * g["lr_scale"]
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 * factor * s for s in scales])


def test_weight_decay_spares_biases_and_normalisation_weights() -> None:
    from pawlab.models import build
    from pawlab.training.optim import make_optimizer, param_groups

    net = build(TINY, 2)
    cfg = TrainConfig(optimizer="adamw", weight_decay=0.05)
    groups = param_groups(net, cfg)
    decayed = [p for g in groups if "weight_decay" not in g for p in g["params"]]
    spared = [p for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]]
    assert decayed and spared and all(p.dim() >= 2 for p in decayed) and all(p.dim() < 2 for p in spared)
    assert len(decayed) + len(spared) == sum(1 for _ in net.parameters())
    opt = make_optimizer(groups, cfg)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.05]
    assert len(param_groups(net, cfg.with_(weight_decay=0.0))) == 1  # nothing to split
    assert len(param_groups(net, cfg.with_(decay_all=True))) == 1  # decay on every parameter, as asked


def test_schedule_start_begins_a_new_schedule() -> None:
    cfg = TrainConfig(epochs=5, schedule="one-cycle")
    later = cfg.with_(epochs=8, schedule_start=5)
    for step in range(0, 30, 7):  # 10 steps an epoch: epochs 6-8 follow the same curve over 3 epochs
        assert lr_factor(later, 50 + step, 10) == pytest.approx(lr_factor(cfg.with_(epochs=3), step, 10))
    with pytest.raises(ConfigError, match="schedule_start"):
        TrainConfig(epochs=3, schedule_start=3)
    with pytest.raises(ConfigError, match="lr_spread"):
        TrainConfig(lr_spread=0.5)


def test_weight_decay_zero_is_zero_and_none_is_the_optimizers_default() -> None:
    from pawlab.training.optim import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    decay = [
        make_optimizer(params, TrainConfig(optimizer=o, weight_decay=wd)).param_groups[0]["weight_decay"]
        for o, wd in (("adamw", None), ("adamw", 0.0), ("adamw", 0.05), ("sgd", None), ("adam", 0.1))
    ]
    assert decay == [0.01, 0.0, 0.05, 0.0, 0.1]
    with pytest.raises(ConfigError, match="weight_decay"):
        TrainConfig(weight_decay=-1.0)


def test_read_meta_is_the_description_without_the_tensors(tmp_path: Path) -> None:
    path = checkpoint.save(tmp_path / "m.safetensors", {"w": torch.ones(2)}, {"classes": ["a", "b"], "x": 1})
    assert checkpoint.read_meta(path) == checkpoint.load(path).meta
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    for bad, message in (
        (tmp_path / "none.safetensors", "no such model file"),
        (tmp_path / "junk.safetensors", "not a readable model file"),
    ):
        with pytest.raises(ModelFileError, match=message):
            checkpoint.read_meta(bad)
        with pytest.raises(ModelFileError, match=message):
            checkpoint.load(bad)


def test_split_seed_keeps_the_split_while_seed_changes_the_initialisation(tree: Path, tmp_path: Path) -> None:
    def run(name: str, **seeds: int) -> tuple[object, dict[str, object]]:
        out = tmp_path / f"{name}.safetensors"
        _train(tree, out, FAST.with_(epochs=1, **seeds))
        ck = checkpoint.load(out)
        return ck.model_state, ck.meta["training"]["data"]

    a_state, a_data = run("a", seed=1, split_seed=7)
    b_state, b_data = run("b", seed=2, split_seed=7)
    c_state, c_data = run("c", seed=2)
    assert a_data["seed"] == b_data["seed"] == 7 and c_data["seed"] == 2  # the split's seed is recorded
    index = {n: json.loads((tmp_path / f"{n}-run" / runlog.VALIDATION_INDEX).read_text()) for n in "abc"}
    assert index["a"]["names"] == index["b"]["names"] != index["c"]["names"]  # the validation images
    assert any(not torch.equal(a_state[k], b_state[k]) for k in a_state)  # another initialisation
    assert TrainConfig(seed=3).data_seed == 3 and TrainConfig(seed=3, split_seed=5).data_seed == 5

"""The loop's events: named, always closed by after_fit, errors reported, state by key, logged."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pawlab import checkpoint, runlog
from pawlab.config import RuntimeConfig, TrainConfig
from pawlab.data import ImageSet
from pawlab.errors import ConfigError, TrainingDiverged
from pawlab.models import build
from pawlab.preprocessing import Preprocessing
from pawlab.training import Callback, Event, Trainer
from pawlab.training.callbacks import (
    BestCheckpoint,
    EarlyStopping,
    EventLog,
    ProgressPrinter,
    TypicalityLog,
    ValidationLog,
)
from tests.conftest import TINY
from tests.training.test_loop import FAST, QUIET, _train


class Recorder(Callback):
    """Every event, in order."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.error: BaseException | None = None

    def before_fit(self, trainer: Trainer) -> None:
        self.seen.append("before_fit")

    def after_epoch(self, trainer: Trainer) -> None:
        self.seen.append("after_epoch")

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self.seen.append("on_exception")
        self.error = error

    def after_fit(self, trainer: Trainer) -> None:
        self.seen.append("after_fit")


def _sets(n: int = 24) -> tuple[ImageSet, ImageSet]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    return ImageSet(images, labels, [str(i) for i in range(n)], ["a", "b"]), ImageSet(
        images[:8], labels[:8], [str(i) for i in range(8)], ["a", "b"]
    )


def _trainer(callbacks: list[Callback], config: TrainConfig = FAST) -> Trainer:
    torch.manual_seed(0)
    train_set, val_set = _sets()
    pre = Preprocessing.for_input((3, 16, 16))
    return Trainer(build(TINY, 2), train_set, val_set, config, pre, callbacks, {}, io.StringIO(), QUIET)


def test_event_names_are_checked() -> None:
    assert [e.value for e in Event][0] == "before_fit" and Event("after_fit") is Event.AFTER_FIT
    with pytest.raises(TypeError, match="after_epcoh is not an event.*did you mean after_epoch"):

        class Misspelt(Callback):  # noqa: F841 (defining it is the test)
            def after_epcoh(self, trainer: Trainer) -> None: ...

    class Helpers(Callback):  # names that only start like an event are fine
        on_gpu = True

        def on_every_tenth_batch(self) -> None: ...

    trainer = _trainer([Helpers()])
    with pytest.raises(ValueError, match="after_everything"):
        trainer.emit("after_everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_exception carries the error"):
        trainer.emit(Event.ON_EXCEPTION)


def test_an_error_fires_on_exception_then_after_fit(tree: Path, tmp_path: Path) -> None:
    class Poison(Callback):
        order = -20  # before the NaN guard

        def after_batch(self, trainer: Trainer) -> None:
            if trainer.state.epoch == 2:
                trainer.state.batch_loss = math.nan

    rec = Recorder()
    with pytest.raises(TrainingDiverged):
        _train(tree, tmp_path / "m.safetensors", FAST, callbacks=[Poison(), rec])
    assert rec.seen == ["before_fit", "after_epoch", "on_exception", "after_fit"]
    assert isinstance(rec.error, TrainingDiverged)
    events = [json.loads(x) for x in (tmp_path / "m-run" / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "failed" and "TrainingDiverged" in events[-1]["error"]
    assert not any(e["event"] == "end" for e in events)


def test_after_fit_fires_when_before_fit_fails() -> None:
    class Broken(Callback):
        def before_fit(self, trainer: Trainer) -> None:
            raise RuntimeError("boom")

    rec = Recorder()
    with pytest.raises(RuntimeError, match="boom"):
        _trainer([Broken(), rec]).fit()  # Broken's before_fit runs first, and fails
    assert rec.seen == ["on_exception", "after_fit"]


def test_callback_state_keys_must_be_unique_and_can_be_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="EarlyStopping"):
        _trainer([EarlyStopping(2), EarlyStopping(3)])
    _trainer([ProgressPrinter(io.StringIO()), ProgressPrinter(io.StringIO())])  # no state: fine
    a, b = EarlyStopping(5), EarlyStopping(5)
    a.state_key, b.state_key = "short", "long"
    trainer = _trainer([a, b], FAST.with_(epochs=2))
    trainer.fit()
    a.wait, b.wait = 1, 4
    checkpoint.write(tmp_path / "s.safetensors", trainer.dump_checkpoint())
    saved = checkpoint.load(tmp_path / "s.safetensors").meta["training"]["callbacks"]
    assert saved["short"] == {"wait": 1} and saved["long"] == {"wait": 4}
    again = [EarlyStopping(5), EarlyStopping(5)]
    again[0].state_key, again[1].state_key = "long", "short"
    restored = _trainer(again, FAST.with_(epochs=2))  # type: ignore[arg-type]
    restored.load_state_dict({"callbacks": saved})
    assert (again[0].wait, again[1].wait) == (4, 1)


def test_ctrl_c_before_the_first_epoch_keeps_the_epoch_count() -> None:
    class StopAtOnce(Callback):
        def before_fit(self, trainer: Trainer) -> None:
            raise KeyboardInterrupt

    trainer = _trainer([StopAtOnce()])
    state = trainer.fit()
    assert state.interrupted and state.epoch == 0 and state.history == []


def test_state_dict_round_trip_continues_identically() -> None:
    """Two epochs straight, or one, a state_dict, and one more in a new trainer: the same."""
    straight = _trainer([], FAST.with_(epochs=2))
    history = straight.fit().history
    first = _trainer([], FAST.with_(epochs=1))
    first.fit()
    state = first.state_dict()
    second = _trainer([], FAST.with_(epochs=2))
    second.load_state_dict(state)
    assert second.state.epoch == 1 and second.state.steps == first.state.steps
    resumed = second.fit().history
    timing = ("seconds", "images_per_s")
    assert [{k: v for k, v in m.items() if k not in timing} for m in resumed] == [
        {k: v for k, v in m.items() if k not in timing} for m in history
    ]


def test_best_checkpoint_owns_the_best_score(tmp_path: Path) -> None:
    best = BestCheckpoint(tmp_path / "elsewhere.safetensors")
    trainer = _trainer([best], FAST.with_(epochs=3))
    history = trainer.fit().history
    losses = [m["val_loss"] for m in history]
    assert best.best == min(losses) and best.best_epoch == losses.index(min(losses)) + 1
    assert best.best_metrics(history)["val_loss"] == min(losses)
    assert (tmp_path / "elsewhere.safetensors").is_file()
    # the monitor is the training config's unless given
    by_accuracy = BestCheckpoint(tmp_path / "acc.safetensors")
    history = _trainer([by_accuracy], FAST.with_(epochs=3, monitor="val_accuracy")).fit().history
    assert by_accuracy.best == max(m["val_accuracy"] for m in history)


def test_event_log_records_the_run(tree: Path, tmp_path: Path) -> None:
    result = _train(tree, tmp_path / "m.safetensors", FAST.with_(epochs=2))
    lines = (tmp_path / "m-run" / "events.jsonl").read_text().splitlines()
    events = [json.loads(x) for x in lines]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("epoch") == 2
    start = events[0]
    assert start["epochs"] == 2 and start["config"]["lr"] == FAST.lr and "device" not in start["config"]
    batches = [e for e in events if e["event"] == "batch"]
    per_epoch = start["batches_per_epoch"]
    assert batches and all({"loss", "lr", "images_per_s", "step"} <= set(e) for e in batches)
    assert [e["batch"] for e in batches if e["epoch"] == 1][-1] == per_epoch  # the epoch's last
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["val_loss"] for e in epochs] == [m["val_loss"] for m in result.history]  # type: ignore[attr-defined]
    assert all(isinstance(e["saved"], bool) and e["time"] > 0 for e in epochs)
    # a new run in the same run directory starts a new log
    _train(tree, tmp_path / "m.safetensors", FAST.with_(epochs=1), overwrite=True)
    kinds = [json.loads(x)["event"] for x in (tmp_path / "m-run" / "events.jsonl").read_text().splitlines()]
    assert kinds.count("start") == 1 and kinds.count("epoch") == 1


def test_event_log_samples_about_twenty_batches_an_epoch(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl", samples_per_epoch=3)
    trainer = _trainer([log], FAST.with_(epochs=1, batch_size=2))  # 12 batches
    trainer.fit()
    batches = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["batch"] for e in batches if e["event"] == "batch"] == [4, 8, 12]


def test_runtime_settings_are_not_saved_with_the_recipe(tree: Path, tmp_path: Path) -> None:
    _train(tree, tmp_path / "m.safetensors", FAST.with_(epochs=1), runtime=RuntimeConfig(progress=False))
    saved = checkpoint.load(tmp_path / "m.safetensors").meta["training"]["config"]
    assert not {"device", "precision", "channels_last", "compile", "progress"} & set(saved)
    assert TrainConfig.from_json({**saved, "device": "cuda", "progress": True}) == FAST.with_(epochs=1)


def test_a_fine_tuned_run_logs_one_end(tmp_path: Path) -> None:
    from tests.conftest import write_tree
    from tests.training.test_loop import _transfer

    src = write_tree(tmp_path / "src", {"cat": 6, "dog": 6})
    _transfer(src, tmp_path / "m.safetensors", TrainConfig(epochs=1, fine_tune_epochs=1))
    events = [json.loads(x) for x in (tmp_path / "m-run" / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("start") == 2 and kinds.count("end") == 1 and kinds[-1] == "end"
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1.0, 2.0]


def test_a_resumed_model_file_describes_this_run(tree: Path, tmp_path: Path) -> None:
    """Resuming rebuilds the model file's description as training does: this pawlab's version,
    the run directory it was resumed in, the saved recipe."""
    import shutil

    from pawlab import __version__
    from pawlab.training import resume

    _train(tree, tmp_path / "m.safetensors", FAST.with_(epochs=1), overwrite=True)
    shutil.copytree(tmp_path / "m-run", tmp_path / "branch")
    resume(tmp_path / "branch", epochs=2, out=tmp_path / "b.safetensors", workers=1, stream=io.StringIO())
    first = checkpoint.load(tmp_path / "m-run" / "last.safetensors").meta
    resumed = checkpoint.load(tmp_path / "branch" / "last.safetensors").meta
    assert resumed["pawlab_version"] == __version__
    assert resumed["training"]["run_dir"] == str((tmp_path / "branch").resolve())
    for key in ("architecture", "classes", "preprocessing"):
        assert resumed[key] == first[key]
    assert resumed["training"]["config"] == {**first["training"]["config"], "epochs": 2}
    assert resumed["training"]["data"] == first["training"]["data"]


def _logs(run: Path) -> list[Callback]:
    _, val_set = _sets()
    return [TypicalityLog(run), ValidationLog(run, val_set.images, val_set.names, val_set.labels, ["a", "b"])]


def test_each_validation_pass_records_each_images_typicality(tmp_path: Path) -> None:
    _trainer(_logs(tmp_path), FAST.with_(epochs=2)).fit()
    assert runlog.pass_epochs(tmp_path) == [1, 2]
    n = len(_sets()[1].labels)
    for epoch in (1, 2):
        typical = np.load(tmp_path / runlog.typicality_file(epoch))
        assert typical.dtype == np.float16 and typical.shape == (n,)
        # calibrated on the validation images themselves: each image's share of them below it
        assert np.allclose(np.sort(typical), np.arange(n) / n, atol=1e-3)


def test_a_network_without_a_linear_layer_trains_without_typicality(tmp_path: Path) -> None:
    train_set, val_set = _sets()
    spec = [{"type": "input", "size": 16, "channels": 3}, {"type": "conv", "kernel": 16, "filters": 2}]
    network = build([*spec, {"type": "flatten"}], 2)
    pre = Preprocessing.for_input((3, 16, 16))
    config = FAST.with_(epochs=1)
    Trainer(network, train_set, val_set, config, pre, _logs(tmp_path), {}, io.StringIO(), QUIET).fit()
    assert (tmp_path / runlog.pass_file(1)).is_file()
    assert not (tmp_path / runlog.typicality_file(1)).exists()


def test_typicality_is_fitted_on_the_epochs_last_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pawlab.training import callbacks

    monkeypatch.setattr(callbacks, "FIT_IMAGES", 16)  # of 24, in batches of 8: the last two
    log = TypicalityLog(tmp_path)
    _trainer([log], FAST.with_(epochs=1)).fit()
    assert log.kept is not None and len(log.kept) == 16
    assert (tmp_path / runlog.typicality_file(1)).is_file()

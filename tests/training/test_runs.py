"""Training runs: `TrainResult` in a notebook (its curves, the best epoch's figures, where the
model went); what a run records of its data and says about it."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from pawlab import checkpoint
from pawlab.config import RuntimeConfig, TrainConfig
from pawlab.errors import ConfigError
from pawlab.inference import evaluate, load_model
from pawlab.training import Callback, Trainer, TrainResult, resume, train
from pawlab.training.objectives import Validation
from tests.conftest import TINY, write_tree
from tests.test_display import assert_self_contained

HISTORY = [
    {"epoch": 1.0, "train_loss": 0.74, "val_loss": 0.62, "val_accuracy": 0.5, "lr": 0.001, "seconds": 0.2},
    {"epoch": 2.0, "train_loss": 0.60, "val_loss": 0.50, "val_accuracy": 1.0, "lr": 0.001, "seconds": 0.1},
    {"epoch": 3.0, "train_loss": 0.55, "val_loss": 0.52, "val_accuracy": 0.75, "lr": 0.001, "seconds": 0.1},
]


def _result(interrupted: bool = False) -> TrainResult:
    return TrainResult(
        model_path=Path("out/<m>.safetensors"),
        run_dir=Path("out/m-run"),
        history=HISTORY,
        best=HISTORY[1],
        classes=["cat", "dog"],
        interrupted=interrupted,
        seconds=12.34,
    )


def test_repr_is_one_line_with_the_best_epoch() -> None:
    assert repr(_result()) == (
        "TrainResult(3 epochs, best epoch 2, val_loss 0.5000, val_accuracy 1.0000; "
        "out/<m>.safetensors; 12.3s)"
    )
    assert "3 epochs, interrupted, best epoch 2" in repr(_result(interrupted=True))


def test_html_shows_curves_best_figures_and_paths() -> None:
    html = _result()._repr_html_()
    assert html.count("<svg") == 2 and html.count("<polyline") == 3  # train/val loss, val accuracy
    assert "val_loss at 3: 0.52" in html  # a point's tooltip
    assert ">best epoch<" in html and ">2<" in html and ">0.5000<" in html and ">1.0000<" in html
    assert "out/&lt;m&gt;.safetensors" in html and "out/m-run" in html and "cat, dog" in html
    assert "12.3s" in html
    assert_self_contained(html)


def test_a_real_run_displays(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 6, "dog": 6})
    result = train(
        src,
        tmp_path / "m.safetensors",
        TINY,
        TrainConfig(epochs=1, batch_size=8),
        stream=io.StringIO(),
        runtime=RuntimeConfig(progress=False, precision="fp32"),
    )
    assert repr(result).startswith("TrainResult(1 epoch, best epoch 1, val_loss ")
    html = result._repr_html_()
    assert "<svg" in html and str(tmp_path / "m.safetensors") in html


def test_comparison_repr_names_the_best_and_html_embeds_its_figure(tmp_path: Path) -> None:
    from pawlab.training.experiments import compare_optimizers

    src = write_tree(tmp_path / "src", {"cat": 8, "dog": 8})
    comparison = compare_optimizers(
        src,
        ["sgd", "adam"],
        TrainConfig(epochs=2, batch_size=8),
        arch=TINY,
        out_dir=tmp_path / "cmp",
        runtime=RuntimeConfig(progress=False),
    )
    assert repr(comparison).startswith("Comparison(sgd, adam; best by val_loss: ")
    page = comparison._repr_html_()
    assert "optimizer comparison" in page and "<td" in page and 'src="data:image/png;base64,' in page


def test_a_layout_is_recorded_and_a_class_never_trained_is_a_warning(tmp_path: Path) -> None:
    """Flat files beside a validation/ folder (ambiguous) read with layout="split": resuming and
    evaluating read the source as training did."""
    src = write_tree(tmp_path / "src", {"cat": 6, "dog": 6}, flat=True)
    write_tree(src / "validation", {"cat": 2, "dog": 2, "owl": 1}, flat=True, start=100)
    model, log = tmp_path / "m.safetensors", io.StringIO()
    quiet = RuntimeConfig(progress=False, precision="fp32")
    train(src, model, TINY, TrainConfig(epochs=1, batch_size=8), layout="split", stream=log, runtime=quiet)
    warning = "warning: 1 class has no training image, so a model cannot learn it: owl"
    assert warning in log.getvalue().splitlines()
    assert len(resume(model, epochs=2, stream=io.StringIO(), runtime=quiet).history) == 2
    report = evaluate(model, src, report_dir=tmp_path / "eval", progress=False)
    assert report.count == 5 and report.split == "the source's validation split"


# The best model file of a run trained by pawlab 9a30c81, before `ModelCard`: the layers of
# `TINY` with 2 filters pooled by 4, `write_tree(src, {"cat": 8, "dog": 8})`, val_fraction 0.5,
# `TrainConfig(epochs=2, batch_size=8, seed=1)`, workers 1; its best score is under the
# callbacks' "BestCheckpoint" key and beside it, as that pawlab wrote it.
BEFORE_MODEL_CARD = Path(__file__).parent / "data" / "before-model-card.safetensors"


def test_a_model_file_from_before_the_model_card_is_read_and_resumed(tmp_path: Path) -> None:
    ck = checkpoint.load(BEFORE_MODEL_CARD, with_optimizer=True)
    card = ck.card
    assert card.classes == ["cat", "dog"] and card.training is not None and card.metrics is not None
    assert card.training.best == card.metrics["val_loss"] and card.training.best_epoch == 2
    assert card.inference is not None and card.unknown is not None and ck.optimizer_state is not None
    # what this pawlab writes of it is what that pawlab wrote: the same header, key for key
    again = checkpoint.write(tmp_path / "again.safetensors", ck)
    assert checkpoint.read_meta(again) == checkpoint.read_meta(BEFORE_MODEL_CARD)
    src = write_tree(tmp_path / "src", {"cat": 8, "dog": 8})
    model = load_model(BEFORE_MODEL_CARD, precision="fp32")
    assert model.classes == ["cat", "dog"] and len(model.predict(sorted(src.rglob("*.jpg")))) == 16
    # its run goes on, with its best score to beat: an epoch that is worse keeps the file's model
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(BEFORE_MODEL_CARD, run / "last.safetensors")
    out = Path(shutil.copy(BEFORE_MODEL_CARD, tmp_path / "m.safetensors"))

    class Worse(Callback):
        order = 5  # before the checkpoint callback

        def after_validation(self, trainer: Trainer, validation: Validation) -> None:
            trainer.state.metrics["val_loss"] = card.training.best + 1.0  # type: ignore[union-attr,operator]

    result = resume(run, src, epochs=3, out=out, workers=1, stream=io.StringIO(), callbacks=[Worse()])
    assert [int(m["epoch"]) for m in result.history] == [1, 2, 3]
    kept = checkpoint.load(out).card
    assert kept.metrics == card.metrics and kept.training is not None and kept.training.best_epoch == 2


def test_a_frozen_backbones_features_run_in_onnxruntime_int8_where_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pawlab.inference import feature_routes
    from pawlab.models import transfer_architecture

    src = write_tree(tmp_path / "src", {"cat": 6, "dog": 6})
    log = io.StringIO()
    int8 = RuntimeConfig(progress=False, runtime="onnxruntime", precision="int8")
    spec = transfer_architecture("efficientnet_lite0", size=32)
    graphs: list[str] = []
    real = feature_routes._make_graph

    def counted(*args: object) -> bytes:
        graphs.append(str(args[2]))
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(feature_routes, "_make_graph", counted)
    train(
        src, tmp_path / "m.safetensors", spec, TrainConfig(epochs=1, batch_size=8), stream=log, runtime=int8
    )
    assert "head on cached backbone features (onnxruntime int8" in log.getvalue()
    assert graphs == ["int8"]  # one graph, calibrated once, for the training and validation sets
    assert load_model(tmp_path / "m.safetensors").predict(src / "cat" / "cat.0.jpg").classification in (
        "cat",
        "dog",
    )
    with pytest.raises(
        ConfigError,
        match="only a frozen backbone.s cached features run there, and the network has no frozen backbone",
    ):
        train(src, tmp_path / "n.safetensors", TINY, TrainConfig(epochs=1), stream=log, runtime=int8)
    assert not (tmp_path / "n.safetensors").exists() and not (tmp_path / "n-run").exists()  # before any work


def test_an_ensembles_features_stay_in_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    import torch

    from pawlab.inference import feature_routes
    from pawlab.models import build, preprocessing_for, transfer_architecture
    from pawlab.training import runs

    spec = transfer_architecture("efficientnet_lite0,efficientnet_lite1", size=32)
    trunk, pre, cpu = build(spec, 2).trunk, preprocessing_for(spec), torch.device("cpu")
    pixels = np.zeros((4, 32, 32, 3), np.uint8)
    for settings, advice in [
        ({"runtime": "onnxruntime"}, "--runtime onnxruntime: a single backbone only .* use --runtime torch"),
        (
            {"precision": "int8"},
            "--precision int8: a single backbone only .* use --precision auto, fp32 or bf16",
        ),
    ]:
        with pytest.raises(ConfigError, match=advice) as err:
            rt = RuntimeConfig(progress=False, **settings)
            runs._features_route(rt, trunk, pre, cpu, pixels, long_job=True)
        assert "\n" not in str(err.value)

    # auto on a CPU without fast bf16 measures one backbone's routes, never an ensemble's
    def no_measuring(*args: object) -> None:
        raise AssertionError("an ensemble's routes measured")

    monkeypatch.setattr(feature_routes, "use_bf16", lambda precision, device: precision == "bf16")
    monkeypatch.setattr(runs, "choose", no_measuring)
    auto = RuntimeConfig(progress=False)
    assert str(runs._features_route(auto, trunk, pre, cpu, pixels, long_job=True)) == "torch fp32"

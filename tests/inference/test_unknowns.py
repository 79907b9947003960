"""`calibrate_unknown` and `evaluate_unknown`, and their commands: an older model file gets a
working in-distribution model; noise is told from the tiny cats and dogs."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pawlab import checkpoint
from pawlab.cli import main
from pawlab.config import DataConfig, RuntimeConfig, TrainConfig
from pawlab.data import load_dataset
from pawlab.inference import evaluate_unknown, load_model
from pawlab.inference.unknowns import SHOWN
from pawlab.training import train
from tests.conftest import train_tiny, write_tree

QUIET = RuntimeConfig(progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train_tiny(tmp_path_factory.mktemp("unk"), 20, TrainConfig(epochs=8, lr=3e-3, batch_size=8))


@pytest.fixture(scope="module")
def noise(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 PNGs of uniform noise, none of the classes."""
    folder = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"noise{i}.png")
    return folder


def stripped(model: Path, out: Path) -> Path:
    """A copy of ``model`` as written before pawlab fitted an in-distribution model."""
    ck = checkpoint.load(model)
    checkpoint.save(out, ck.model_state, {k: v for k, v in ck.meta.items() if k != "unknown"})
    return out


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_calibrate_unknown_restores_the_model_training_fitted(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, model = trained
    old = stripped(model, tmp_path / "old.safetensors")
    image = next(src.rglob("*.jpg"))
    main(["predict", str(old), str(image), "--json"])
    assert json.loads(capsys.readouterr().out)["typicality"] is None

    assert main(["calibrate-unknown", str(old), str(src), "-q"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("in-distribution model: mahalanobis on 32 training images")
    assert "calibrated on 8 validation images" in out[0]
    # the same split and fit as training's: the same calibration
    fitted, original = load_model(old).unknown, load_model(model).unknown
    assert fitted is not None and original is not None
    assert torch.allclose(fitted.tensors["calibration"], original.tensors["calibration"])

    main(["predict", str(old), str(image), "--json"])
    answer = json.loads(capsys.readouterr().out)
    assert isinstance(answer["typicality"], float) and isinstance(answer["unknown"], bool)


def test_calibrate_unknown_on_another_source_splits_it_by_seed(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, model = trained
    other = write_tree(tmp_path / "other", {"cat": 10, "dog": 10}, start=300)
    old = stripped(model, tmp_path / "old.safetensors")
    assert main(["calibrate-unknown", str(old), str(other), "-q", "--workers", "1"]) == 0
    seeded = load_dataset(other, DataConfig(size=16, workers=1), progress=False)  # 20%, seed 0
    train_n, val_n = len(seeded.train), len(seeded.validation)
    assert f"on {train_n} training images, calibrated on {val_n} validation images" in capsys.readouterr().out
    state = load_model(old).unknown
    assert state is not None and len(state.tensors["calibration"]) == val_n


def test_calibrate_unknown_errors_are_one_line(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, model = trained
    text = tmp_path / "notes.safetensors"
    text.write_text("not a model")
    one_line_error(capsys, ["calibrate-unknown", str(text), str(src), "-q"], str(text))
    birds = write_tree(tmp_path / "birds", {"cat": 4, "bird": 4})
    old = stripped(model, tmp_path / "old.safetensors")
    before = old.read_bytes()
    one_line_error(
        capsys, ["calibrate-unknown", str(old), str(birds), "-q"], "bird, cat", "not the model's (cat, dog)"
    )
    lonely = write_tree(tmp_path / "lonely", {"cat": 1, "dog": 1})
    one_line_error(capsys, ["calibrate-unknown", str(old), str(lonely), "-q"], "no image left for validation")
    assert old.read_bytes() == before  # nothing written


def test_calibrate_unknown_on_a_network_without_a_linear_layer_is_one_line(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = trained
    conv_only = [
        {"type": "input", "size": 16, "channels": 3},
        {"type": "conv", "kernel": 3, "filters": 2, "pad": 1},
        {"type": "global-avg-pool"},
        {"type": "softmax"},
    ]
    model = tmp_path / "conv.safetensors"
    train(src, model, conv_only, TrainConfig(epochs=1), workers=1, stream=io.StringIO(), runtime=QUIET)
    one_line_error(
        capsys, ["calibrate-unknown", str(model), str(src), "-q"], "no in-distribution model can be fitted"
    )


def test_evaluate_unknown_tells_noise_from_cats_and_dogs(
    trained: tuple[Path, Path], noise: Path, tmp_path: Path
) -> None:
    src, model = trained
    report = evaluate_unknown(model, src, [noise], report_dir=tmp_path, progress=False, workers=1)
    assert report.count == 8 and report.evaluated.startswith("the validation split used in training")
    [other] = report.others
    assert other.images == 20 and other.auroc > 0.95 and other.fpr_at_95 < 0.2
    assert len(other.most_typical) == SHOWN
    figure = Path(other.figure)
    assert figure.parent == tmp_path and figure.name == f"most_typical-1-{noise.name}.png"
    with Image.open(figure) as im:
        assert im.format == "PNG" and im.width > 128


def test_evaluate_unknown_json_and_its_missing_model_error(
    trained: tuple[Path, Path], noise: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, model = trained
    zipped = Path(shutil.make_archive(str(tmp_path / "noise"), "zip", noise))
    argv = ["evaluate-unknown", str(model), str(src), str(noise), str(zipped), "--json"]
    assert main([*argv, "--report-dir", str(tmp_path), "--unknown-threshold", "0.5", "--workers", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"data", "evaluated", "count", "threshold", "refused", "others"}
    assert report["threshold"] == 0.5 and 0 <= report["refused"] <= 1
    other, from_zip = report["others"]
    assert from_zip["source"] == str(zipped) and from_zip["auroc"] == other["auroc"]
    assert Path(from_zip["figure"]).name == "most_typical-2-noise.png"
    assert set(other) == {
        "source",
        "images",
        "fpr_at_95_tpr",
        "auroc",
        "accepted",
        "figure",
        "most_typical",
        "skipped",
    }
    assert other["images"] == 20 and Path(other["figure"]).is_file()
    typical = [t["typicality"] for t in other["most_typical"]]
    assert typical == sorted(typical, reverse=True)

    one_line_error(capsys, [*argv[:4], str(tmp_path / "nowhere")], "nowhere")
    old = stripped(model, tmp_path / "old.safetensors")
    one_line_error(
        capsys,
        ["evaluate-unknown", str(old), str(src), str(noise)],
        "no in-distribution model",
        "calibrate-unknown",
    )


def test_evaluate_unknown_reads_data_named_otherwise_through_a_class_map(
    trained: tuple[Path, Path], noise: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, model = trained
    plural = write_tree(tmp_path / "plural", {"cats": 5, "dogs": 5}, start=500)
    argv = ["evaluate-unknown", str(model), str(plural), str(noise), "--report-dir", str(tmp_path), "-q"]
    one_line_error(capsys, argv, "--class-map cats=cat,dogs=dog")
    assert main([*argv, "--class-map", "cats=cat,dogs=dog", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"in distribution: 10 images of {plural} (all labelled images of the source)")

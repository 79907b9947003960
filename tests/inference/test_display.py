"""Notebook displays of inference: a `Model`, the `Predictions` of a list, an `EvalReport`."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pawlab.config import TrainConfig
from pawlab.inference import EvalReport, Model, Prediction, Predictions, evaluate, load_model
from tests.conftest import train_tiny
from tests.test_display import assert_self_contained


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source tree, model file): one epoch of `TINY` on 16x16 images."""
    return train_tiny(tmp_path_factory.mktemp("display"), 10, TrainConfig(epochs=1, batch_size=8), "fp32")


@pytest.fixture(scope="module")
def model(trained: tuple[Path, Path]) -> Model:
    return load_model(trained[1], device="cpu", precision="fp32")


def test_model_repr_is_one_line_with_classes_input_and_scores(model: Model) -> None:
    text = repr(model)
    assert "\n" not in text and text.startswith("Model(2 classes: cat, dog; 16x16x3 squash; 1,250 parameters")
    assert "best epoch 1, val_loss " in text and "val_accuracy " in text
    assert "cpu fp32" in text and text.endswith("model.safetensors)")


def test_model_html_shows_layers_with_shapes_preprocessing_and_metrics(model: Model) -> None:
    html = model._repr_html_()
    for text in ("cat, dog", "16x16, 3 channels", "squash", "mean [0.5, 0.5, 0.5]", "cpu, fp32"):
        assert text in html
    # the architecture table, as `pawlab archs` describes it: layer, output shape, parameters
    summary = model.network.summary()
    for desc, shape in zip(model.network.names, model.network.shapes, strict=True):
        assert desc in html and "x".join(map(str, shape)) in html
    assert ">224<" in html and ">1,250<" in html and "1,250" in summary
    metrics = model.metrics
    assert f"{metrics['val_loss']:.4f}" in html and f"{metrics['val_accuracy']:.4f}" in html
    assert "best epoch" in html and html.count("<svg") == 2  # the curves from the file's history
    assert_self_contained(html)


def test_predict_a_list_gives_a_table_of_predictions(trained: tuple[Path, Path], model: Model) -> None:
    src, _ = trained
    path = src / "cat" / "cat.1.jpg"
    image = Image.open(src / "dog" / "dog.2.jpg").convert("RGB")
    preds = model.predict([path, str(src / "dog" / "dog.3.jpg"), image, np.asarray(image), path.read_bytes()])
    assert isinstance(preds, Predictions) and isinstance(preds, Sequence) and len(preds) == 5
    assert all(isinstance(p, Prediction) for p in preds)
    single = model.predict(path)
    assert isinstance(single, Prediction)
    assert preds[0].probabilities == pytest.approx(single.probabilities, abs=1e-5)
    assert preds == list(preds) and preds != list(preds)[:4]
    assert preds.names == [str(path), str(src / "dog" / "dog.3.jpg"), None, None, None]
    rows = preds.to_rows()
    assert [r["image"] for r in rows] == preds.names and rows[0]["classification"] == single.classification
    assert set(rows[2]) == {"image", "classification", "cat", "dog"}
    assert rows[2]["cat"] + rows[2]["dog"] == pytest.approx(1.0, abs=1e-5)
    assert isinstance(model.predict((path, image)), Predictions)  # a tuple too


def test_predictions_html_and_repr(trained: tuple[Path, Path], model: Model, tmp_path: Path) -> None:
    src, _ = trained
    images = [src / "cat" / "cat.1.jpg", tmp_path / "dog.<2>.jpg"]
    shutil.copy(src / "dog" / "dog.2.jpg", images[1])
    preds = model.predict([*images, Image.open(images[0])])
    html = preds._repr_html_()
    assert html.count('<img src="data:image/') == 3 and html.count("<tr>") == 4
    assert ">cat.1.jpg<" in html and "dog.&lt;2&gt;.jpg" in html and "<2>" not in html and ">#2<" in html
    for p in preds:
        assert f">{p.probabilities['cat']:.4f}<" in html and f">{p.probabilities['dog']:.4f}<" in html
    assert ">class<" in html and ">cat<" in html and ">dog<" in html
    assert_self_contained(html)
    text = repr(preds)
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].startswith("Predictions(3 images: ")
    assert "cat.1.jpg" in lines[1] and "dog.<2>.jpg" in lines[2] and "#2" in lines[3]


def test_predictions_sequence_behaviour_and_long_lists(model: Model) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(Predictions.SHOWN + 3)]
    preds = model.predict_many(images)
    assert len(preds) == Predictions.SHOWN + 3 and preds.thumbnails[-1] is None
    html = preds._repr_html_()
    assert html.count('<img src="data:image/') == Predictions.SHOWN and "... and 3 more" in html
    tail = preds[-2:]
    assert isinstance(tail, Predictions) and len(tail) == 2 and tail.names == [None, None]
    assert preds[-1] == list(preds)[-1] and preds == tuple(preds)
    assert len(repr(preds).splitlines()) == 7 and "... 48 more" in repr(preds)
    empty = model.predict([])
    assert len(empty) == 0 and empty.to_rows() == [] and "0 images" in repr(empty)


def test_to_rows_keeps_a_class_named_like_a_column() -> None:
    preds = Predictions([Prediction({"image": 0.25, "b": 0.75}, "b")], ["image", "b"], ["x.jpg"])
    assert preds.to_rows() == [{"image": "x.jpg", "classification": "b", "p(image)": 0.25, "b": 0.75}]


@pytest.fixture(scope="module")
def report(trained: tuple[Path, Path], model: Model, tmp_path_factory: pytest.TempPathFactory) -> EvalReport:
    src, _ = trained
    return evaluate(model, src, report_dir=tmp_path_factory.mktemp("eval"), progress=False)


def test_eval_report_repr(report: EvalReport) -> None:
    assert repr(report) == (
        f"EvalReport({report.count} images, accuracy {report.accuracy:.4f}, log loss {report.log_loss:.4f})"
    )


def test_eval_report_html_shows_metrics_confusion_matrix_and_worst_images(report: EvalReport) -> None:
    html = report._repr_html_()
    assert f"{report.accuracy:.4f}" in html and f"{report.log_loss:.4f}" in html
    for c in report.classes:
        assert f">{report.precision[c]:.4f}<" in html and f">{report.recall[c]:.4f}<" in html
    counts = re.findall(r'title="[^"]* predicted as [^"]*">(\d+)</td>', html)
    assert [int(n) for n in counts] == [n for row in report.confusion_matrix for n in row]
    assert report.top_losses and len(report.top_loss_pixels) == len(report.top_losses)
    assert html.count('<img src="data:image/') == len(report.top_losses)
    assert report.top_losses[0]["name"] in html
    assert_self_contained(html)


def test_eval_report_json_is_unchanged_by_the_thumbnails(report: EvalReport) -> None:
    data = report.to_json()
    assert "top_loss_pixels" not in data and json.loads(json.dumps(data)) == data
    assert set(data["top_losses"][0]) == {"name", "true", "predicted", "loss", "p_true"}
    without = EvalReport(**{**vars(report), "top_loss_pixels": []})
    assert without == report  # the pixels do not take part in comparisons
    assert "<img" not in without._repr_html_() and report.top_losses[0]["name"] in without._repr_html_()


def test_one_prediction_repr_and_html_show_the_probability_map() -> None:
    p = Prediction({"cats": 0.0712, "dogs": 0.9288}, "dogs")
    assert repr(p) == "Prediction(dogs: cats 0.0712, dogs 0.9288)"
    page = p._repr_html_()
    assert "prediction: dogs" in page and page.index("dogs") < page.index("0.0712")  # likeliest first
    assert_self_contained(page)

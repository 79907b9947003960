"""Runtimes and routes: a model run in onnxruntime as in torch, its graphs made once into the user
cache, int8 checked like bf16, and ``auto``'s choice measured once and then read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pawlab.config import TrainConfig
from pawlab.errors import AgreementError, ConfigError, DataError
from pawlab.inference import Route, load_model
from pawlab.inference.routes import check_route, requested
from pawlab.inference.runtimes import RuntimeCache
from tests.conftest import make_image, train_tiny
from tests.test_cli import assert_one_line_error, pawlab


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source tree, model file) trained once for the module."""
    return train_tiny(tmp_path_factory.mktemp("runtimes"), 20, TrainConfig(epochs=6, lr=3e-3, batch_size=8))


def pixels(n: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, 16, 16, 3): toy cats and dogs at the tiny model's size."""
    return np.stack([np.asarray(make_image("cat" if i % 2 else "dog", seed + i, 16)) for i in range(n)])


@pytest.mark.parametrize(
    ("runtime", "precision", "device", "needle"),
    [
        ("tensorrt", "auto", "auto", "runtime"),
        ("torch", "fp16", "auto", "precision"),
        ("torch", "int8", "auto", "int8 runs in onnxruntime"),
        ("onnxruntime", "bf16", "auto", "bf16 runs in torch"),
        ("onnxruntime", "fp32", "cuda", "runs on the CPU"),
    ],
)
def test_a_route_that_cannot_run_is_a_one_line_error(
    runtime: str, precision: str, device: str, needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        check_route(runtime, precision, device)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("runtime", "precision", "route"),
    [
        ("auto", "auto", None),
        ("auto", "fp32", Route("torch", "fp32")),  # what --precision fp32 always meant
        ("auto", "bf16", Route("torch", "bf16")),
        ("auto", "int8", Route("onnxruntime", "int8")),
        ("torch", "auto", None),
        ("onnxruntime", "auto", Route("onnxruntime", "fp32")),
        ("onnxruntime", "int8", Route("onnxruntime", "int8")),
    ],
)
def test_the_settings_name_a_route_or_leave_it_to_auto(
    runtime: str, precision: str, route: Route | None
) -> None:
    assert requested(runtime, precision) == route
    if route is not None:
        assert Route.parse(str(route)) == route


def test_onnxruntime_answers_as_torch_does(trained: tuple[Path, Path]) -> None:
    x = pixels(11)
    torch_fp32 = load_model(trained[1], precision="fp32", runtime="torch")
    ort = load_model(trained[1], runtime="onnxruntime")
    assert ort.route == Route("onnxruntime", "fp32") and "onnxruntime fp32" in repr(ort)
    np.testing.assert_allclose(ort.predict_proba(x), torch_fp32.predict_proba(x), atol=1e-5)
    np.testing.assert_allclose(
        ort.predict_proba(x, tta=True), torch_fp32.predict_proba(x, tta=True), atol=1e-5
    )
    t_ort, t_torch = ort.predict_scored(x)[1], torch_fp32.predict_scored(x)[1]
    assert t_ort is not None and t_torch is not None  # the in-distribution model reads the graph's features
    np.testing.assert_allclose(t_ort, t_torch, atol=0.2)  # a rank share: one rank apart at most here
    assert ort.predict(x[0]).classification == torch_fp32.predict(x[0]).classification


def test_the_graph_is_exported_once_into_the_user_cache(trained: tuple[Path, Path]) -> None:
    lines: list[str] = []
    first = RuntimeCache(load_model(trained[1], runtime="onnxruntime"), log=lines.append)
    graph, record = first.graph("fp32")
    again = RuntimeCache(load_model(trained[1], runtime="onnxruntime"), log=lines.append)
    assert again.graph("fp32") == (graph, record) == (graph, {})
    assert sum("exporting" in line for line in lines) <= 1  # none where an earlier test made it
    assert (first.folder / "fp32.onnx").read_bytes() == graph
    assert first.folder.parent.name == "runtimes"


def test_int8_is_checked_like_bf16_and_its_verdict_kept(trained: tuple[Path, Path]) -> None:
    lines: list[str] = []
    cache = RuntimeCache(load_model(trained[1], runtime="onnxruntime", precision="int8"), log=lines.append)
    try:
        _, record = cache.graph("int8")
    except AgreementError as exc:
        assert "\n" not in str(exc) and "agree" in str(exc)
        record = json.loads(cache.int8_file.with_suffix(".json").read_text())
        assert not record["ok"] and not cache.int8_file.exists()
    else:
        assert record["ok"] and cache.int8_file.exists()
    assert record["precision"] == "int8" and record["rule"] == "margin"
    assert record["images"] > 0 and record["calibration_images"] > 0
    made = len(lines)
    with pytest.raises(AgreementError) if not record["ok"] else _nothing():
        RuntimeCache(load_model(trained[1]), log=lines.append).graph("int8")
    assert len(lines) == made  # the recorded verdict, not a second quantization


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_without_its_data_int8_is_a_one_line_error(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAWLAB_CACHE_DIR", str(tmp_path / "cache"))  # no verdict recorded yet
    model = load_model(trained[1])
    model.meta = {**model.meta, "training": {"data": {"source": str(tmp_path / "gone")}}}
    model.chooser = RuntimeCache(model, log=lambda line: None)
    with pytest.raises(DataError, match="not here to calibrate and check int8 on") as info:
        model.chooser.graph("int8")
    assert "\n" not in str(info.value)


def test_auto_measures_once_and_then_reads_its_choice(trained: tuple[Path, Path]) -> None:
    lines: list[str] = []
    model = load_model(trained[1], compile="on")
    model.chooser = RuntimeCache(model, log=lines.append)
    model.prepare_for(1)  # compile on: a long job, so auto measures
    chosen = model.route
    assert any(line.startswith("measuring the fastest way") for line in lines)
    assert any(line.startswith(f"fastest: {chosen}") for line in lines)
    x = pixels(5)
    reference = load_model(trained[1], precision="fp32", runtime="torch").predict_proba(x)
    assert (model.predict_proba(x).argmax(1) == reference.argmax(1)).all()
    later = load_model(trained[1])  # another job: the record, no measuring
    later.chooser = RuntimeCache(later, log=lines.append)
    count = len(lines)
    later.prepare_for(10_000)
    assert later.route == chosen and len(lines) == count


def test_the_cli_takes_a_runtime(trained: tuple[Path, Path], tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    make_image("cat", 3, 16).save(image)
    ort = pawlab("predict", trained[1], image, "--runtime", "onnxruntime", "--json")
    plain = pawlab("predict", trained[1], image, "--runtime", "torch", "--precision", "fp32", "--json")
    assert ort.returncode == 0 and plain.returncode == 0, ort.stderr + plain.stderr
    a, b = json.loads(ort.stdout), json.loads(plain.stdout)
    assert a["classification"] == b["classification"]
    for c, p in a["probability-map"].items():
        assert abs(p - b["probability-map"][c]) < 1e-4
    assert_one_line_error(
        pawlab("predict", trained[1], image, "--runtime", "torch", "--precision", "int8"),
        "int8 runs in onnxruntime",
    )

"""What computes a frozen backbone's features in training: the route the settings name,
onnxruntime's features against torch's, and ``auto``'s measured choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pawlab.config import RuntimeConfig
from pawlab.errors import ConfigError
from pawlab.inference import feature_routes
from pawlab.inference import features as _features
from pawlab.inference.feature_routes import FEATURES_AGREE, choose, feature_route
from pawlab.inference.features import TORCH_FP32, trunk_features
from pawlab.inference.routes import Route
from pawlab.models import build, preprocessing_for, transfer_architecture

CPU = torch.device("cpu")
SPEC = transfer_architecture("efficientnet_lite0", size=32)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAWLAB_CACHE_DIR", str(tmp_path / "cache"))


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("runtime", "precision", "fast_bf16", "route"),
    [
        ("auto", "auto", True, "torch bf16"),
        ("auto", "auto", False, None),  # measured (`choose`)
        ("torch", "auto", False, "torch fp32"),
        ("torch", "auto", True, "torch bf16"),
        ("auto", "fp32", True, "torch fp32"),
        ("onnxruntime", "auto", True, "onnxruntime fp32"),
        ("auto", "int8", True, "onnxruntime int8"),
        ("onnxruntime", "int8", False, "onnxruntime int8"),
    ],
)
def test_the_route_the_settings_name(
    runtime: str, precision: str, fast_bf16: bool, route: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feature_routes, "use_bf16", lambda p, d: p == "bf16" or (p == "auto" and fast_bf16))
    got = feature_route(runtime, precision, CPU)
    assert (str(got) if got else None) == route


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"runtime": "torch", "precision": "int8"}, "int8 runs in onnxruntime"),
        ({"runtime": "onnxruntime", "precision": "bf16"}, "bf16 runs in torch"),
        ({"runtime": "onnxruntime", "device": "cuda"}, "runs on the CPU"),
        ({"runtime": "tensorrt"}, "runtime: must be one of auto, torch, onnxruntime"),
    ],
)
def test_a_pair_that_cannot_run_is_a_one_line_error(settings: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as err:
        RuntimeConfig(**settings)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_onnxruntime_features_are_torchs_and_int8s_entry_is_its_calibrations() -> None:
    trunk, pre = build(SPEC, 2).trunk, preprocessing_for(SPEC)
    batch = images(6, seed=1)
    kw = {"views": ("plain", "flip"), "progress": False}
    exact = trunk_features(trunk, batch, pre, CPU, **kw)  # type: ignore[arg-type]
    ort = trunk_features(trunk, batch, pre, CPU, route=Route("onnxruntime", "fp32"), **kw)  # type: ignore[arg-type]
    np.testing.assert_allclose(ort, exact, rtol=1e-3, atol=1e-4)
    int8 = Route("onnxruntime", "int8")
    with pytest.raises(ConfigError, match="no training images to calibrate"):
        trunk_features(trunk, batch, pre, CPU, route=int8, **kw)  # type: ignore[arg-type]
    # another calibration is another int8 graph: the features' entry says which (int8 itself
    # runs in tests/training/test_runs.py)
    keys = {
        _features._key(trunk, batch, pre, kw["views"], route, calibration)  # type: ignore[arg-type]
        for route, calibration in [
            (TORCH_FP32, None),
            (Route("torch", "bf16"), None),
            (Route("onnxruntime", "fp32"), None),
            (int8, images(16, seed=2)),
            (int8, images(16, seed=3)),
        ]
    }
    assert len(keys) == 5


@pytest.mark.parametrize(("int8_off_by", "fastest"), [(0.5, "onnxruntime int8"), (2.0, "onnxruntime fp32")])
def test_auto_measures_the_fastest_route_whose_features_agree_once(
    int8_off_by: float, fastest: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = build(SPEC, 2)
    trunk, pre = net.trunk, preprocessing_for(SPEC)
    ref = np.ones((4, 8), np.float32)
    seconds = {"torch fp32": 3.0, "onnxruntime fp32": 2.0, "onnxruntime int8": 1.0}
    # int8's features this far from fp32's, relative to `FEATURES_AGREE`
    int8 = ref * (1 + int8_off_by * FEATURES_AGREE)

    def timed(
        trunk: object, pre: object, route: Route, pixels: object, calibration: object
    ) -> tuple[np.ndarray, float]:
        return (int8 if route.precision == "int8" else ref), seconds[str(route)]

    monkeypatch.setattr(feature_routes, "_timed", timed)
    lines: list[str] = []
    assert str(choose(trunk, pre, images(10, seed=4), lines.append)) == fastest
    assert (
        lines[-1].startswith(f"features: {fastest} (") and "recorded for this backbone and CPU" in lines[-1]
    )

    def not_again(*args: object) -> tuple[np.ndarray, float]:
        raise AssertionError("measured again although recorded")

    monkeypatch.setattr(feature_routes, "_timed", not_again)
    assert str(choose(trunk, pre, images(10, seed=4), lines.append)) == fastest


def test_auto_leaves_out_routes_that_do_not_export_and_records_plain_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = build(SPEC, 2)
    trunk, pre = net.trunk, preprocessing_for(SPEC)

    def timed(
        trunk: object, pre: object, route: Route, pixels: object, calibration: object
    ) -> tuple[np.ndarray, float]:
        if route.runtime == "onnxruntime":
            raise ConfigError("this backbone does not export to ONNX")
        return np.ones((4, 8), np.float32), 1.0

    monkeypatch.setattr(feature_routes, "_timed", timed)
    lines: list[str] = []
    assert str(choose(trunk, pre, images(10, seed=4), lines.append)) == "torch fp32"
    assert sum("features: not onnxruntime" in line for line in lines) == 2
    assert "int8" not in lines[-1]

    def strict(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    record = json.loads(feature_routes._record_path(trunk, pre).read_text(), parse_constant=strict)
    assert record["route"] == "torch fp32" and record["int8_error"] is None

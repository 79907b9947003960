"""`pawlab export` end to end through the real entry point, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from pawlab.cli import main
from pawlab.config import TrainConfig
from pawlab.export import TOLERANCES, Tolerance
from tests.conftest import train_tiny
from tests.test_cli import assert_one_line_error, pawlab


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("cli"), 20, TrainConfig(epochs=6, lr=3e-3, batch_size=8))[1]


def test_export_writes_a_checked_onnx_file(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    proc = pawlab("export", model, "--format", "onnx", "--out", out, "-q")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "onnx.checker passed" in lines[0]
    assert lines[2].startswith("the fp32 graph agrees with pawlab's fp32 on 8 validation images")
    assert lines[-1] == f"wrote {out} (fp32)"
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert json.loads(meta["classes"]) == ["cat", "dog"] and json.loads(meta["agreement"])["fp32"]["ok"]


def test_export_int8_quantizes_and_records_the_change(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    proc = pawlab("export", model, "--int8", "--out", out, "-q")
    assert proc.returncode == 0, proc.stderr
    assert "calibrated on 32 training images" in proc.stdout
    assert f"wrote {out} (int8)" in proc.stdout
    saved = onnx.load(out)
    ops = {n.op_type for n in saved.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = {p.key: p.value for p in saved.metadata_props}
    int8 = json.loads(meta["agreement"])["int8"]
    assert meta["precision"] == "int8" and int8["calibration_images"] == 32
    assert {"accuracy_change", "log_loss_change", "same_class"} <= set(int8)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--format", "tflite", "--out", "x.onnx"], "invalid choice: 'tflite'"),
        ([], "the following arguments are required: --out"),
        (["--out", "x.onnx", "--int8", "--no-check"], "--int8 needs"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(model: Path, args: list[str], needle: str) -> None:
    proc = pawlab("export", model, *args)
    assert_one_line_error(proc, needle)
    assert proc.returncode == 2


def test_a_missing_model_is_a_one_line_error(tmp_path: Path) -> None:
    proc = pawlab("export", tmp_path / "none.safetensors", "--out", tmp_path / "x.onnx")
    assert_one_line_error(proc, "none.safetensors")
    assert proc.returncode == 1 and not (tmp_path / "x.onnx").exists()


def test_a_refused_export_is_one_line_with_the_word_agree_and_exit_1(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(TOLERANCES, "int8", Tolerance(same_class=1.01))
    out = tmp_path / "int8.onnx"
    assert main(["export", str(model), "--int8", "--out", str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pawlab export: error: the int8 graph does not agree")
    assert "same class" in err[0] and "accuracy" in err[0] and "log loss" in err[0]
    assert not out.exists()
    assert main(["export", str(model), "--int8", "--force", "--out", str(out), "-q"]) == 0
    assert "written anyway (--force)" in capsys.readouterr().out and out.is_file()

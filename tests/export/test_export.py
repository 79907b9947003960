"""`pawlab.export`: a model as a checked ONNX file, and opening one."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from pawlab import __version__
from pawlab.config import TrainConfig
from pawlab.errors import AgreementError, ConfigError, DataError, ModelFileError
from pawlab.export import TOLERANCES, Tolerance, export_onnx, load_onnx
from pawlab.inference import load_model
from tests.conftest import ROOT, make_image, train_tiny, write_tree


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source tree, model file) trained once for the module."""
    return train_tiny(tmp_path_factory.mktemp("export"), 20, TrainConfig(epochs=6, lr=3e-3, batch_size=8))


@pytest.fixture(scope="module")
def exported(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(trained[1], out)
    return out


def pixels(n: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, 16, 16, 3): toy cats and dogs at the tiny model's size."""
    return np.stack([np.asarray(make_image("cat" if i % 2 else "dog", seed + i, 16)) for i in range(n)])


def test_the_file_passes_the_checker_and_its_metadata_describes_it(
    trained: tuple[Path, Path], exported: Path
) -> None:
    onnx.checker.check_model(str(exported), full_check=True)
    meta = {p.key: p.value for p in onnx.load(exported).metadata_props}
    model = load_model(trained[1])
    assert json.loads(meta["classes"]) == model.classes == ["cat", "dog"]
    assert json.loads(meta["preprocessing"]) == model.preprocessing.to_json()
    assert json.loads(meta["input"])["shape"] == ["N", 16, 16, 3]
    assert json.loads(meta["output"])["shape"] == ["N", 2]
    assert meta["precision"] == "fp32" and meta["pawlab_version"] == __version__
    assert meta["source_model"] == "model.safetensors"
    assert meta["source_sha256"] == hashlib.sha256(trained[1].read_bytes()).hexdigest()
    agreement = json.loads(meta["agreement"])
    assert agreement["checked"] and "validation split" in agreement["images"]
    fp32 = agreement["fp32"]
    assert fp32["ok"] and fp32["images"] == 8  # 20% of the 40 images
    assert fp32["same_class"] == 1.0 and fp32["max_prob_diff"] <= 1e-4


@pytest.mark.parametrize("batch", [1, 5])
def test_any_batch_classifies_as_pawlab_does(trained: tuple[Path, Path], exported: Path, batch: int) -> None:
    x = pixels(batch)
    probs = load_onnx(exported).predict_proba(x)
    reference = load_model(trained[1], precision="fp32").predict_proba(x)
    assert probs.shape == (batch, 2)
    assert (probs.argmax(1) == reference.argmax(1)).all()
    np.testing.assert_allclose(probs, reference, atol=1e-4)


FRESH = """
import json, sys
import numpy as np
import onnxruntime as ort
session = ort.InferenceSession(sys.argv[1])
meta = session.get_modelmeta().custom_metadata_map
classes = json.loads(meta["classes"])
probs = session.run(["probabilities"], {"pixels": np.load(sys.argv[2])})[0]
assert "torch" not in sys.modules and "pawlab" not in sys.modules, "imported more than onnxruntime"
print(json.dumps({"classes": [classes[i] for i in probs.argmax(1)], "probs": probs.tolist()}))
"""


def test_a_fresh_process_with_only_onnxruntime_classifies_like_pawlab(
    trained: tuple[Path, Path], exported: Path, tmp_path: Path
) -> None:
    x = pixels(6, seed=100)
    np.save(tmp_path / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # pawlab not importable by chance
    proc = subprocess.run(
        [sys.executable, "-c", FRESH, str(exported), str(tmp_path / "x.npy")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    model = load_model(trained[1], precision="fp32")
    reference = model.predict_proba(x)
    assert out["classes"] == [model.classes[i] for i in reference.argmax(1)]
    np.testing.assert_allclose(np.array(out["probs"]), reference, atol=1e-4)


def test_a_damaged_or_foreign_file_is_a_one_line_error_naming_it(exported: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported.read_bytes()[: len(exported.read_bytes()) // 2])
    text = tmp_path / "text.onnx"
    text.write_text("not an ONNX model\n")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for path in (truncated, text, empty):
        with pytest.raises(ModelFileError, match="not a readable ONNX model") as info:
            load_onnx(path)
        assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    foreign = tmp_path / "foreign.onnx"
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    io = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in "xy"]
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([node], "g", io[:1], io[1:])), foreign)
    with pytest.raises(ModelFileError, match="without pawlab's metadata") as info:
        load_onnx(foreign)
    assert str(info.value).startswith(f"{foreign}: ") and "\n" not in str(info.value)
    with pytest.raises(ModelFileError, match="no such ONNX file"):
        load_onnx(tmp_path / "missing.onnx")


def test_metadata_that_does_not_fit_the_graph_is_an_error(exported: Path, tmp_path: Path) -> None:
    model = onnx.load(exported)
    for prop in model.metadata_props:
        if prop.key == "classes":
            prop.value = json.dumps(["cat", "dog", "bird"])
    onnx.save(model, tmp_path / "three.onnx")
    with pytest.raises(ModelFileError, match="2 probabilities for 3 classes"):
        load_onnx(tmp_path / "three.onnx")


def test_an_export_outside_the_tolerances_writes_nothing_unless_forced(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(TOLERANCES, "fp32", Tolerance(same_class=1.0, max_prob_diff=-1.0))
    out = tmp_path / "model.onnx"
    with pytest.raises(AgreementError, match=r"does not agree .*probability difference") as info:
        export_onnx(trained[1], out)
    assert "8 validation images" in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one
    report = export_onnx(trained[1], out, force=True)
    assert out.is_file() and not report.agreement["fp32"]["ok"]


def test_without_the_training_data_it_says_so_and_takes_data_or_no_check(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    shutil.copytree(trained[0], src)
    model = tmp_path / "model.safetensors"
    shutil.copy(trained[1], model)
    # the same model, its recorded source moved away
    moved = train_tiny(tmp_path / "gone", 4, TrainConfig(epochs=1, batch_size=8))[1]
    shutil.rmtree(tmp_path / "gone" / "src")
    with pytest.raises(DataError, match=r"is not here to check .*--data DIR .*--no-check"):
        export_onnx(moved, tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()
    report = export_onnx(moved, tmp_path / "b.onnx", data=src)
    assert report.agreement["fp32"]["ok"] and str(src) in report.agreement["images"]
    unchecked = export_onnx(moved, tmp_path / "c.onnx", check=False)
    assert unchecked.agreement == {"checked": False}
    assert load_onnx(tmp_path / "c.onnx").classes == ["cat", "dog"]
    other = write_tree(tmp_path / "birds", {"bird": 3, "cat": 3})
    with pytest.raises(DataError, match="are not the model's"):
        export_onnx(moved, tmp_path / "d.onnx", data=other)
    with pytest.raises(ConfigError, match="--int8 needs"):
        export_onnx(moved, tmp_path / "e.onnx", int8=True, check=False)


def readme_snippet() -> str:
    """The Python block of the README's "Export to ONNX" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Export to ONNX", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "no python block in the README's Export to ONNX section"
    return found.group(1)


def test_the_readme_snippet_classifies_an_image_like_pawlab(
    trained: tuple[Path, Path], exported: Path, tmp_path: Path
) -> None:
    shutil.copy(exported, tmp_path / "model.onnx")
    make_image("cat", 7, 16).save(tmp_path / "cat.jpg", quality=95)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", readme_snippet()], capture_output=True, text=True, cwd=tmp_path, env=env,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    pred = load_model(trained[1], precision="fp32").predict(Image.open(tmp_path / "cat.jpg"))
    name, shown = proc.stdout.split(" ", 1)
    assert name == pred.classification
    probs = json.loads(shown.replace("'", '"'))
    assert probs == pytest.approx(pred.probabilities, abs=2e-4)  # as printed: 4 decimals

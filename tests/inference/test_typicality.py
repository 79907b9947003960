"""A model's in-distribution model: fitted at the end of training, kept in the model file,
read back by `load_model`; a file from before it reads as having none."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pawlab import checkpoint, unknown
from pawlab.config import TrainConfig
from pawlab.errors import ConfigError
from pawlab.inference import load_model, submit
from pawlab.inference.typicality import FIT_IMAGES, Source
from tests.conftest import train_tiny, write_tree
from tests.inference.test_unknowns import stripped


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train_tiny(tmp_path_factory.mktemp("typ"), 20, TrainConfig(epochs=8, lr=3e-3, batch_size=8))


def test_training_keeps_a_calibrated_in_distribution_model_in_the_file(trained: tuple[Path, Path]) -> None:
    _, path = trained
    ck = checkpoint.load(path)
    assert ck.meta["unknown"]["method"] == unknown.DEFAULT_METHOD
    assert all(name.startswith(unknown.PREFIX) for name in ck.extra)
    model = load_model(path)
    assert model.unknown is not None and model.unknown.method == unknown.DEFAULT_METHOD
    calibration = model.unknown.tensors["calibration"]
    assert len(calibration) == 8  # the validation split: 20% of 40 images
    assert torch.equal(calibration, calibration.sort().values)


def test_typicality_ranks_new_cats_and_dogs_above_noise(trained: tuple[Path, Path], tmp_path: Path) -> None:
    model = load_model(trained[1])
    fresh = write_tree(tmp_path, {"cat": 10, "dog": 10}, start=1000)  # as the validation images were made
    seen = np.stack([model._load_image(f) for f in sorted(fresh.rglob("*.jpg"))])
    unseen = np.random.default_rng(0).integers(
        0, 256, (20, 16, 16, 3), dtype=np.uint8
    )  # noise in every pixel
    typical_seen, typical_unseen = model.typicality(seen), model.typicality(unseen)
    assert typical_seen is not None and typical_unseen is not None
    assert typical_seen.shape == (20,) and ((typical_seen >= 0) & (typical_seen <= 1)).all()
    assert np.median(typical_seen) > np.median(typical_unseen)
    assert (typical_unseen < unknown.DEFAULT_THRESHOLD).all()


def test_a_model_file_from_before_has_no_in_distribution_model(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    old = stripped(trained[1], tmp_path / "old.safetensors")
    model = load_model(old)
    assert model.unknown is None
    assert model.typicality(np.zeros((2, 16, 16, 3), np.uint8)) is None
    assert model.predict(np.zeros((16, 16, 3), np.uint8)).classification in ("cat", "dog")


def test_extra_tensors_round_trip_and_may_not_take_the_weights_names(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, {"w": torch.ones(2)}, {}, extra={"unknown.mean": torch.arange(3.0)})
    assert torch.equal(checkpoint.load(path).extra["unknown.mean"], torch.arange(3.0))
    with pytest.raises(ValueError, match="model.w: an extra tensor's name"):
        checkpoint.save(path, {}, {}, extra={"model.w": torch.ones(1)})


def test_the_fit_uses_a_seeded_sample_of_at_most_fit_images() -> None:
    data = np.arange(FIT_IMAGES + 10)
    sample = Source(data, data).sample(FIT_IMAGES)
    assert len(sample) == FIT_IMAGES and (np.diff(sample.data) > 0).all()
    assert np.array_equal(sample.labels, sample.data)  # type: ignore[arg-type]
    assert np.array_equal(Source(data, data).sample(FIT_IMAGES).data, sample.data)
    few = Source(data[:5])
    assert few.sample(FIT_IMAGES) is few


def test_submit_writes_the_unknown_column(trained: tuple[Path, Path], tmp_path: Path) -> None:
    src, path = trained
    test = tmp_path / "test"
    test.mkdir()
    shutil.copy(sorted((src / "cat").iterdir())[0], test / "1.jpg")
    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(noise).save(test / "2.png")
    (test / "3.jpg").write_bytes(b"not an image")
    out = tmp_path / "sub.csv"
    submit(path, test, out, progress=False, unknown_column=True)
    lines = out.read_text().splitlines()
    assert lines[0] == "id,label,unknown"
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3"]
    assert lines[2].endswith(",1")  # noise: none of the classes
    assert lines[3] == "3,0.5,"  # undecodable: no verdict
    submit(path, test, out, progress=False)  # another job: the file is written afresh
    assert out.read_text().splitlines()[0] == "id,label"


def test_submit_s_unknown_column_needs_an_in_distribution_model(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    old = stripped(trained[1], tmp_path / "old.safetensors")
    with pytest.raises(ConfigError, match="no in-distribution model for --unknown-column"):
        submit(old, trained[0], tmp_path / "sub.csv", progress=False, unknown_column=True)
    assert not (tmp_path / "sub.csv").exists()

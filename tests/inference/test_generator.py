from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pawlab import checkpoint
from pawlab.errors import DataError, ModelFileError
from pawlab.inference import load_generator, load_model
from pawlab.models import build
from tests.conftest import TINY_DECODER as DECODER


def _write(path: Path, **meta: object) -> Path:
    net = build(DECODER, 3, output=(1, 8, 8))
    header = {"kind": "generator", "architecture": DECODER, "classes": ["a", "b", "c"], "latent": 2}
    header |= {"image_shape": [1, 8, 8], "output": "bernoulli-logits", **meta}
    checkpoint.save(path, net.state_dict(), header)
    return path


def test_a_generator_file_draws_uint8_images_of_its_classes(tmp_path: Path) -> None:
    gen = load_generator(_write(tmp_path / "g.safetensors"))
    images = gen.generate([0, 2, 1], np.zeros((3, 2)))
    assert gen.latent == 2 and images.shape == (3, 8, 8) and images.dtype == np.uint8
    assert np.array_equal(gen.generate([0], np.ones((1, 2))), gen.generate([0], np.ones((1, 2))))
    with pytest.raises(DataError, match=r"latents \(N, 2\)"):
        gen.generate([0], np.zeros((1, 3)))
    with pytest.raises(DataError, match="labels must be in 0..2"):
        gen.generate([3], np.zeros((1, 2)))


def test_the_wrong_kind_of_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "g.safetensors")
    with pytest.raises(ModelFileError, match="a generator model file, not a classifier"):
        load_model(path)
    with pytest.raises(ModelFileError, match="damaged generator file"):
        load_generator(_write(tmp_path / "bad.safetensors", output="gaussian"))

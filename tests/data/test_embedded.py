from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from pawlab.data.embedded import mnist_5k, mnist_idx
from pawlab.errors import DataError


def test_the_embedded_digits_are_5000_labelled_28x28_images() -> None:
    x, y = mnist_5k()
    assert x.shape == (5000, 28, 28) and x.dtype == np.uint8 and set(y.tolist()) == set(range(10))


def _idx(path: Path, magic: int, array: np.ndarray) -> Path:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return path


def test_idx_files_round_trip_and_bad_ones_are_one_line_errors(tmp_path: Path) -> None:
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    xi = _idx(tmp_path / "x.gz", 0x803, images)
    yi = _idx(tmp_path / "y.gz", 0x801, np.array([1, 2, 3]))
    x, y = mnist_idx(xi, yi)
    assert np.array_equal(x, images) and y.tolist() == [1, 2, 3] and x.flags.writeable
    with pytest.raises(DataError, match="not an MNIST IDX file"):
        mnist_idx(yi, xi)
    (tmp_path / "short.gz").write_bytes(gzip.compress(gzip.decompress(xi.read_bytes())[:40]))
    with pytest.raises(DataError, match="truncated IDX file"):
        mnist_idx(tmp_path / "short.gz", yi)
    with pytest.raises(DataError, match="2 labels"):
        mnist_idx(xi, _idx(tmp_path / "y2.gz", 0x801, np.array([1, 2])))

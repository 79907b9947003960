"""Shared fixtures: tiny generated image sets, so tests need no data files."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CATS_DOGS = SHARED / "cats_and_dogs_filtered"

requires_cats_dogs = pytest.mark.skipif(
    not CATS_DOGS.is_dir(), reason=f"shared data not found at {CATS_DOGS}"
)


def make_image(label: str, seed: int, size: int = 24) -> Image.Image:
    """A learnable toy image: 'cat' is bright on the left half, 'dog' on the right."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    half = slice(0, size // 2) if label in ("cat", "cats") else slice(size // 2, size)
    arr[:, half] += 150
    return Image.fromarray(arr)


def write_tree(
    root: Path, counts: dict[str, int], *, flat: bool = False, ext: str = ".jpg", start: int = 0
) -> Path:
    """class-per-folder (``root/cat/cat.3.jpg``) or Kaggle-flat (``root/cat.3.jpg``) images."""
    for label, n in counts.items():
        for i in range(start, start + n):
            folder = root if flat else root / label
            folder.mkdir(parents=True, exist_ok=True)
            make_image(label, seed=zlib.crc32(f"{label}.{i}".encode())).save(folder / f"{label}.{i}{ext}")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A class-per-folder tree of 20 cats and 20 dogs."""
    return write_tree(tmp_path / "src", {"cat": 20, "dog": 20})


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Packed caches of test sources go to a temporary folder, not ~/.cache."""
    os.environ["PAWLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("pawlab-cache"))

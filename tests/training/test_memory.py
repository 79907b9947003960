"""Training from a prepared set holds no image and no feature of it in memory: the packed
arrays and the cached features are memory-mapped, and every pass reads a batch at a time."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import pytest

from pawlab.config import RuntimeConfig, TrainConfig
from pawlab.models import transfer_architecture
from pawlab.training import train
from tests.conftest import write_tree

SIZE = 128  # an image is 48 KiB packed; its features (and their mirror's) 10 KiB


def _peak_numpy_bytes(root: Path, per_class: int) -> int:
    """The peak of the memory numpy (and Python) allocated while ``pawlab.train`` prepared
    ``2 * per_class`` photos, computed a frozen backbone's features and trained its head:
    tracemalloc sees every numpy array, and nothing of memory-mapped files."""
    src = write_tree(root / "src", {"cat": per_class, "dog": per_class})
    spec = transfer_architecture("efficientnet_lite0", size=SIZE)
    runtime = RuntimeConfig(progress=False, precision="fp32")
    tracemalloc.start()
    try:
        train(
            src,
            root / "m.safetensors",
            spec,
            TrainConfig(epochs=1),
            workers=1,
            stream=io.StringIO(),
            runtime=runtime,
        )
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAWLAB_CACHE_DIR", str(tmp_path / "cache"))
    _peak_numpy_bytes(tmp_path / "first", 10)  # what a process allocates once (imports, weights)
    small = _peak_numpy_bytes(tmp_path / "small", 40)
    large = _peak_numpy_bytes(tmp_path / "large", 160)
    per_photo = SIZE * SIZE * 3 + 2 * 1280 * 4  # a packed image and its two views' features
    extra = 2 * (160 - 40)  # photos
    held = extra * per_photo  # what holding them and their features would add
    # names, labels and the manifest's rows grow with the set: about a kilobyte a photo
    assert large - small < 0.1 * held, f"peak grew by {(large - small) / 2**20:.1f} MiB for {extra} photos"
    # and a limit the large set cannot fit in: half of what its images and features alone take
    photos = 2 * 160
    limit = photos * per_photo // 2
    assert large < limit, f"peak {large / 2**20:.1f} MiB, over {limit / 2**20:.1f} MiB for {photos} photos"

"""Shared fixtures: tiny generated image sets, so tests need no data files."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CATS_DOGS = SHARED / "cats_and_dogs_filtered"

# A network small enough to train in a fraction of a second on 16x16 images.
TINY = [
    {"type": "input", "size": 16, "channels": 3},
    {"type": "conv", "kernel": 3, "filters": 8, "pad": 1},
    {"type": "relu"},
    {"type": "max-pool", "kernel": 2},
    {"type": "linear"},
    {"type": "softmax"},
]

# A tiny generator (latent 2, classes 3): a vector in, an 8x8 image's logits out.
TINY_DECODER: list[dict[str, Any]] = [
    {"type": "input", "features": 2 + 3},
    {"type": "linear", "units": 2 * 4 * 4},
    {"type": "reshape", "to": [2, 4, 4]},
    {"type": "upsample", "scale": 2},
    {"type": "conv", "kernel": 3, "pad": 1, "filters": 1},
]
requires_cats_dogs = pytest.mark.skipif(
    not CATS_DOGS.is_dir(), reason=f"shared data not found at {CATS_DOGS}"
)


def make_image(label: str, seed: int, size: int = 24) -> Image.Image:
    """A learnable toy image: 'cat' is bright on the left half, 'dog' (or any other label) on
    the right, 'bird' in the middle (a third class)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    half = slice(0, size // 2) if label in ("cat", "cats") else slice(size // 2, size)
    half = slice(size // 4, 3 * size // 4) if label == "bird" else half
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


def train_tiny(root: Path, per_class: int, config: Any, precision: str = "auto") -> tuple[Path, Path]:
    """(source tree, model file): `TINY` trained with ``config`` (a `TrainConfig`) on
    ``per_class`` generated cats and dogs under ``root``, quietly, in this process."""
    from pawlab.config import RuntimeConfig
    from pawlab.training import train

    src = write_tree(root / "src", {"cat": per_class, "dog": per_class})
    model = root / "model.safetensors"
    runtime = RuntimeConfig(progress=False, precision=precision)
    train(src, model, TINY, config, workers=1, stream=io.StringIO(), runtime=runtime)
    return src, model


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A class-per-folder tree of 20 cats and 20 dogs."""
    return write_tree(tmp_path / "src", {"cat": 20, "dog": 20})


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Packed caches of test sources go to a temporary folder, not ~/.cache."""
    os.environ["PAWLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("pawlab-cache"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_ranks(args: list[str], world: int = 2, timeout: float = 240) -> list[tuple[int, str, str]]:
    """``python ARGS`` in ``world`` CPU processes started as torchrun starts them (RANK,
    LOCAL_RANK, WORLD_SIZE, MASTER_*): (return code, stdout, stderr) per rank. (Running
    torch.distributed.run itself inside pytest hung at its rendezvous.)"""
    base = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, *args],
            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]

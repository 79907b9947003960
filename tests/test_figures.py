"""Figures in pawlab.figures: top losses (the list and the grid), the confusion matrix plot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pawlab.figures import (
    RIGHT,
    UNSURE,
    WRONG,
    confusion_matrix_plot,
    prediction_grid,
    top_losses,
    top_losses_grid,
)

PAD, CAPTION = 6, 30  # the grid layout in pawlab.figures


def solid_images(colours: list[int], size: int = 16, channels: int = 3) -> np.ndarray:
    """One flat image per entry: grey level ``colours[i]`` in every channel."""
    return np.stack([np.full((size, size, channels), c, dtype=np.uint8) for c in colours])


def tile_centre(n: int, columns: int, tile: int) -> tuple[int, int]:
    r, c = divmod(n, columns)
    return PAD + c * (tile + PAD) + tile // 2, PAD + r * (tile + CAPTION + PAD) + tile // 2


def frame_pixel(n: int, columns: int, tile: int) -> tuple[int, int]:
    """A pixel on the left edge of tile ``n``'s frame."""
    x, y = tile_centre(n, columns, tile)
    return x - tile // 2 - 2, y


# ----------------------------------------------------------------------------- top_losses


def test_top_losses_order_and_values() -> None:
    labels = np.array([0, 1, 2, 1])
    probs = np.array(
        [
            [0.9, 0.05, 0.05],  # right, confident: -log 0.9
            [0.7, 0.2, 0.1],  # wrong: -log 0.2
            [0.1, 0.1, 0.8],  # right: -log 0.8
            [0.0, 0.0, 1.0],  # wrong, p(true) = 0: clipped to 1e-15
        ]
    )
    got = top_losses(labels, probs, 4)
    assert [i for i, _ in got] == [3, 1, 2, 0]
    expected = [-math.log(1e-15), -math.log(0.2), -math.log(0.8), -math.log(0.9)]
    assert [loss for _, loss in got] == pytest.approx(expected, rel=1e-12)
    assert all(isinstance(i, int) and isinstance(loss, float) for i, loss in got)
    assert top_losses(labels, probs, 2) == got[:2]


def test_top_losses_k_beyond_n_ties_and_empty() -> None:
    labels = np.array([1, 0, 1])
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.75, 0.25]])
    got = top_losses(labels, probs, 10)
    assert [i for i, _ in got] == [2, 0, 1]  # equal losses keep their order
    assert got[1][1] == pytest.approx(math.log(2)) and got[2][1] == pytest.approx(math.log(2))
    assert top_losses(labels, probs, 0) == []
    assert top_losses(np.zeros(0, dtype=int), np.zeros((0, 2)), 5) == []


def test_top_losses_rejects_bad_input() -> None:
    probs = np.array([[0.5, 0.5]])
    with pytest.raises(ValueError):
        top_losses(np.array([0]), probs, -1)
    with pytest.raises(ValueError):
        top_losses(np.array([0, 1]), probs, 1)  # two labels, one row
    with pytest.raises(ValueError):
        top_losses(np.array([2]), probs, 1)  # no class 2


# ----------------------------------------------------------------------------- top_losses_grid


def test_top_losses_grid_order_frames_and_size(tmp_path: Path) -> None:
    labels = np.array([0, 0, 1, 1, 0])
    probs = np.array([[0.4, 0.6], [0.55, 0.45], [0.99, 0.01], [0.1, 0.9], [0.95, 0.05]])
    # losses: 0.92 (wrong), 0.60 (right), 4.61 (wrong), 0.11 (right), 0.05 (right)
    images = solid_images([10, 60, 110, 160, 210])
    tile, columns = 40, 2
    out = top_losses_grid(
        images, labels, probs, ["cat", "dog"], tmp_path / "sub" / "top.png", k=3, tile=tile, columns=columns
    )
    assert out == tmp_path / "sub" / "top.png" and out.is_file()
    with Image.open(out) as im:
        assert im.format == "PNG"
        sheet = im.convert("RGB")
    assert sheet.size == (columns * (tile + PAD) + PAD, 2 * (tile + CAPTION + PAD) + PAD)
    # highest loss first: images 2, 0, 1
    for n, grey in enumerate([110, 10, 60]):
        assert sheet.getpixel(tile_centre(n, columns, tile)) == (grey, grey, grey)
    assert sheet.getpixel(frame_pixel(0, columns, tile)) == WRONG
    assert sheet.getpixel(frame_pixel(1, columns, tile)) == WRONG
    assert sheet.getpixel(frame_pixel(2, columns, tile)) == UNSURE  # right, but a high loss
    # captions are drawn: some dark ink below the first tile
    caption = np.asarray(sheet.crop((PAD, PAD + tile + 2, PAD + tile, PAD + tile + CAPTION)))
    assert (caption.min(axis=2) < 128).any()


def test_top_losses_grid_k_larger_than_n(tmp_path: Path) -> None:
    images = solid_images([0, 100, 200], size=8)
    labels = np.array([0, 1, 2])
    probs = np.full((3, 3), 1 / 3)
    tile = 32
    out = top_losses_grid(images, labels, probs, ["a", "b", "c"], tmp_path / "t.png", k=12, tile=tile)
    with Image.open(out) as im:
        # three tiles: one row, only as wide as needed
        assert im.size == (3 * (tile + PAD) + PAD, tile + CAPTION + 2 * PAD)


def test_top_losses_grid_grayscale(tmp_path: Path) -> None:
    images = solid_images([30, 220], size=20, channels=1)
    assert images.shape == (2, 20, 20, 1)
    labels = np.array([0, 1])
    probs = np.array([[0.2, 0.8], [0.3, 0.7]])
    tile = 48
    out = top_losses_grid(images, labels, probs, ["cat", "dog"], tmp_path / "g.png", tile=tile)
    with Image.open(out) as im:
        sheet = im.convert("RGB")
    assert sheet.getpixel(tile_centre(0, 2, tile)) == (30, 30, 30)  # loss 1.61 before 0.36
    assert sheet.getpixel(tile_centre(1, 2, tile)) == (220, 220, 220)
    assert sheet.getpixel(frame_pixel(0, 2, tile)) == WRONG
    assert sheet.getpixel(frame_pixel(1, 2, tile)) == UNSURE


def test_top_losses_grid_no_images(tmp_path: Path) -> None:
    out = top_losses_grid(
        np.zeros((0, 16, 16, 3), dtype=np.uint8),
        np.zeros(0, dtype=int),
        np.zeros((0, 2)),
        ["a", "b"],
        tmp_path / "none.png",
    )
    with Image.open(out) as im:
        assert im.format == "PNG"
        w, h = im.size
        pixels = np.asarray(im.convert("L"))
    assert 0 < w <= 400 and 0 < h <= 100
    assert (pixels < 128).any() and (pixels == 255).mean() > 0.8  # some text on white


def test_top_losses_grid_long_class_names(tmp_path: Path) -> None:
    classes = ["a" * 60, "b" * 60]
    out = top_losses_grid(
        solid_images([5, 6]),
        np.array([0, 1]),
        np.array([[0.1, 0.9], [0.6, 0.4]]),
        classes,
        tmp_path / "long.png",
        tile=64,
    )
    with Image.open(out) as im:
        assert im.size == (2 * (64 + PAD) + PAD, 64 + CAPTION + 2 * PAD)


def test_prediction_grid_still_draws(tmp_path: Path) -> None:
    images = solid_images([40, 80, 120, 160])
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8]])
    tile, columns = 32, 3
    out = prediction_grid(
        images, labels, probs, ["cat", "dog"], tmp_path / "p.png", tile=tile, columns=columns
    )
    with Image.open(out) as im:
        sheet = im.convert("RGB")
    assert sheet.size == (columns * (tile + PAD) + PAD, 2 * (tile + CAPTION + PAD) + PAD)
    # samples come back in index order: 0 right, 1 wrong, 2 wrong, 3 right
    for n, (grey, colour) in enumerate([(40, RIGHT), (80, WRONG), (120, WRONG), (160, RIGHT)]):
        assert sheet.getpixel(tile_centre(n, columns, tile)) == (grey, grey, grey)
        assert sheet.getpixel(frame_pixel(n, columns, tile)) == colour


# ----------------------------------------------------------------------------- confusion matrix


def test_confusion_matrix_plot_two_classes(tmp_path: Path) -> None:
    out = confusion_matrix_plot([[48, 2], [5, 45]], ["cat", "dog"], tmp_path / "figs" / "cm.png")
    assert out == tmp_path / "figs" / "cm.png"
    with Image.open(out) as im:
        assert im.format == "PNG"
        w, h = im.size
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert 250 < w < 900 and 250 < h < 900
    dark_blue = (rgb[..., 2] > 90) & (rgb[..., 0] < 40)  # the diagonal cells
    white = (rgb == 255).all(axis=2)
    assert dark_blue.mean() > 0.05 and white.any()


def test_confusion_matrix_plot_grows_with_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sizes = {}
    for n in (2, 12, 20):
        cm = rng.integers(0, 10, (n, n)) + np.diag(rng.integers(50, 200, n))
        cm[n - 1] = 0  # a class with no examples
        classes = [f"class_{i}" for i in range(n)]
        out = confusion_matrix_plot(cm, classes, tmp_path / f"cm{n}.png", title=f"{n} classes")
        with Image.open(out) as im:
            sizes[n] = im.size
    assert sizes[2][0] < sizes[12][0] < sizes[20][0]
    assert sizes[2][1] < sizes[12][1] < sizes[20][1]
    assert max(sizes[20]) < 2500


def test_confusion_matrix_plot_rejects_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        confusion_matrix_plot([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(ValueError):
        confusion_matrix_plot([[1, 2, 3]], ["a"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()

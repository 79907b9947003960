"""Both JPEG decoders (libjpeg-turbo via simplejpeg, and Pillow) behave alike."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pawlab.data import decode as decode_module
from pawlab.data.decode import ImageDecodeError, decode


def _jpeg(w: int, h: int, orientation: int | None = None) -> bytes:
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[: h // 2, : w // 2] = 255  # bright top-left quadrant
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if orientation is None:
        im.save(buf, "JPEG", quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


@pytest.fixture(params=["turbo", "pillow"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "pillow":
        monkeypatch.setattr(decode_module, "simplejpeg", None)
    elif decode_module.simplejpeg is None:
        pytest.skip("simplejpeg is not installed")
    return str(request.param)


@pytest.mark.parametrize("size", [(16, 16), (50, 50), (224, 224)])
def test_scaled_decode_shape(decoder: str, size: tuple[int, int]) -> None:
    out = decode(_jpeg(447, 374), size)
    assert out.shape == (*size, 3) and out.dtype == np.uint8
    assert out[: size[0] // 4, : size[1] // 4].mean() > 200  # the bright quadrant stays top-left
    assert out[-size[0] // 4 :, -size[1] // 4 :].mean() < 50


def test_exif_orientation_applied(decoder: str) -> None:
    # stored 80x40 with its bright quadrant top-left; orientation 6 shows it rotated 90 degrees
    # clockwise: 40 wide, 80 high, the bright quadrant at the top right
    out = decode(_jpeg(80, 40, orientation=6), (32, 32))
    assert out[:8, -8:].mean() > 200 and out[:8, :8].mean() < 50


def test_truncated_jpeg_is_reported(decoder: str) -> None:
    data = _jpeg(300, 200)
    with pytest.raises(ImageDecodeError, match="truncated|cannot decode"):
        decode(data[: len(data) // 2], (32, 32))


def test_decoders_agree() -> None:
    if decode_module.simplejpeg is None:
        pytest.skip("simplejpeg is not installed")
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (12, 16, 3)), np.ones((32, 32, 1))).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(smooth).save(buf, "JPEG", quality=92)
    turbo = decode(buf.getvalue(), (64, 64)).astype(int)
    decode_module.simplejpeg, saved = None, decode_module.simplejpeg
    try:
        pillow = decode(buf.getvalue(), (64, 64)).astype(int)
    finally:
        decode_module.simplejpeg = saved
    assert np.abs(turbo - pillow).mean() < 3


# ----------------------------------------------------------------------------- resize policies

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _thirds(w: int, h: int, fmt: str = "PNG") -> bytes:
    """Red, green and blue thirds: side by side when wide, stacked when tall."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    wide = w >= h
    n = w if wide else h
    for i, colour in enumerate((RED, GREEN, BLUE)):
        part = slice(i * n // 3, (i + 1) * n // 3)
        if wide:
            arr[:, part] = colour
        else:
            arr[part, :] = colour
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _colour_share(arr: np.ndarray, colour: tuple[int, int, int]) -> float:
    """The share of pixels within 60 of ``colour`` on every channel."""
    return float((np.abs(arr.astype(int) - np.array(colour)).max(-1) < 60).mean())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_crop_keeps_the_centre_of_a_wide_image(decoder: str, fmt: str) -> None:
    data = _thirds(300, 100, fmt)
    crop = decode(data, (32, 32), resize="crop")
    assert crop.shape == (32, 32, 3)
    # only the middle third is left (JPEG chroma may tint the outermost pixels)
    assert _colour_share(crop[1:-1, 1:-1], GREEN) == 1.0 and crop[..., 1].min() > 128
    assert _colour_share(crop, RED) == 0 and _colour_share(crop, BLUE) == 0
    squash = decode(data, (32, 32), resize="squash")
    assert squash.shape == (32, 32, 3)
    assert _colour_share(squash[:, :8], RED) > 0.95  # the whole width, squeezed
    assert _colour_share(squash[:, 12:20], GREEN) > 0.95
    assert _colour_share(squash[:, -8:], BLUE) > 0.95
    assert np.array_equal(squash, decode(data, (32, 32)))  # squash is the default


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_crop_keeps_the_centre_of_a_tall_image(decoder: str, fmt: str) -> None:
    data = _thirds(100, 300, fmt)
    crop = decode(data, (32, 32), resize="crop")
    assert crop.shape == (32, 32, 3)
    assert _colour_share(crop[1:-1, 1:-1], GREEN) == 1.0 and crop[..., 1].min() > 128
    assert _colour_share(crop, RED) == 0 and _colour_share(crop, BLUE) == 0
    squash = decode(data, (32, 32), resize="squash")
    assert _colour_share(squash[:8], RED) > 0.95
    assert _colour_share(squash[12:20], GREEN) > 0.95
    assert _colour_share(squash[-8:], BLUE) > 0.95


def test_crop_to_a_non_square_size_and_of_a_square_image() -> None:
    # a 300x100 image cropped to 16 high and 48 wide: the aspect ratios match, nothing is cut
    data = _thirds(300, 100)
    wide = decode(data, (16, 48), resize="crop")
    assert wide.shape == (16, 48, 3)
    assert _colour_share(wide[:, :14], RED) > 0.95 and _colour_share(wide[:, -14:], BLUE) > 0.95
    # a square image is the same either way
    square = _thirds(90, 90)
    assert np.array_equal(decode(square, (30, 30), resize="crop"), decode(square, (30, 30)))


@pytest.mark.parametrize("resize", ["squash", "crop"])
def test_large_reductions_average_instead_of_aliasing(resize: str) -> None:
    # a checkerboard of 2x2 squares (no JPEG scaling to help) shrunk 10x must come out flat
    # grey, not as a moire of black and white samples
    board = ((np.indices((640, 640)) // 2).sum(0) % 2 * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.repeat(board[..., None], 3, -1)).save(buf, "PNG")
    out = decode(buf.getvalue(), (64, 64), resize=resize).astype(int)
    assert out.shape == (64, 64, 3)
    assert np.abs(out - 127.5).max() <= 8


def test_small_reductions_interpolate_between_neighbours() -> None:
    # a horizontal ramp resized 100 -> 80 stays a monotone ramp over the same range
    ramp = np.repeat(np.linspace(0, 255, 100).round().astype(np.uint8)[None, :, None], 3, -1)
    ramp = np.repeat(ramp, 100, 0)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    row = decode(buf.getvalue(), (80, 80))[40, :, 0].astype(int)
    assert (np.diff(row) >= 0).all() and row[0] <= 3 and row[-1] >= 252

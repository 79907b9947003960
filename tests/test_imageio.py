"""Both JPEG decoders (libjpeg-turbo via simplejpeg, and Pillow) behave alike."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pawlab import _imageio
from pawlab._imageio import ImageDecodeError, decode


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
        monkeypatch.setattr(_imageio, "simplejpeg", None)
    elif _imageio.simplejpeg is None:
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
    if _imageio.simplejpeg is None:
        pytest.skip("simplejpeg is not installed")
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (12, 16, 3)), np.ones((32, 32, 1))).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(smooth).save(buf, "JPEG", quality=92)
    turbo = decode(buf.getvalue(), (64, 64)).astype(int)
    _imageio.simplejpeg, saved = None, _imageio.simplejpeg
    try:
        pillow = decode(buf.getvalue(), (64, 64)).astype(int)
    finally:
        _imageio.simplejpeg = saved
    assert np.abs(turbo - pillow).mean() < 3

"""Both JPEG decoders (libjpeg-turbo via simplejpeg, and Pillow) behave alike; PIL images and
arrays become the pixels their files would; what is not an image is a one-line error."""

from __future__ import annotations

import colorsys
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from pawlab.data import decode as decode_module
from pawlab.data.decode import ImageDecodeError, decode, far_smaller, from_memory, load_image
from pawlab.errors import DataError


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


# ----------------------------------------------------------------------------- images in memory

COLOURS = np.array([[(200, 30, 60), (20, 180, 90)], [(250, 250, 250), (0, 0, 40)]], dtype=np.uint8)
PATCHES = Image.fromarray(np.kron(COLOURS, np.ones((5, 6, 1), dtype=np.uint8)))  # 12x10, four colours


def _saved(im: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


# every mode TIFF stores as it is (PNG would change some)
FILE_MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I", "I;16", "I;16B", "F"]


@pytest.mark.parametrize("mode", FILE_MODES)
def test_pil_images_give_the_pixels_their_files_give(mode: str) -> None:
    im = PATCHES.convert("RGBA").convert(mode) if mode == "PA" else PATCHES.convert(mode)
    data = _saved(im, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == mode
    from_file = decode(data, (8, 8))
    assert np.array_equal(from_memory(im, (8, 8)), from_file)
    assert np.array_equal(from_memory(Image.open(io.BytesIO(data)), (8, 8)), from_file)  # opened lazily
    assert np.array_equal(from_memory(im, None), decode(data, None))  # no resize: (10, 12, 3)


def _patch(colour: tuple[int, ...], mode: str) -> Image.Image:
    return Image.new(mode, (6, 4), colour)


def test_colour_spaces_come_out_as_the_rgb_they_hold() -> None:
    r, g, b = rgb = (200, 30, 60)
    hsv = tuple(round(v * 255) for v in colorsys.rgb_to_hsv(r / 255, g / 255, b / 255))
    srgb_to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    lab = ImageCms.applyTransform(_patch(rgb, "RGB"), srgb_to_lab)
    assert lab is not None and lab.mode == "LAB"
    ycbcr = (  # JPEG's full-range YCbCr
        round(0.299 * r + 0.587 * g + 0.114 * b),
        round(128 - 0.168736 * r - 0.331264 * g + 0.5 * b),
        round(128 + 0.5 * r - 0.418688 * g - 0.081312 * b),
    )
    for what, im in {
        "HSV": _patch(hsv, "HSV"),
        "LAB": lab,
        "YCbCr": _patch(ycbcr, "YCbCr"),
        "CMYK": _patch((255 - r, 255 - g, 255 - b, 0), "CMYK"),
        "RGBX": _patch((*rgb, 0), "RGBX"),
    }.items():
        out = from_memory(im, None).astype(int)
        assert out.shape == (4, 6, 3), what
        assert np.abs(out - rgb).max() <= 3, (what, out[0, 0])


def test_alpha_premultiplied_or_not_is_composited_onto_white() -> None:
    half = _patch((200, 30, 60, 128), "RGBA")
    expected = np.round(np.array([200, 30, 60]) * 128 / 255 + 255 * 127 / 255)
    assert np.abs(from_memory(half, None)[0, 0] - expected).max() <= 1
    assert np.abs(from_memory(half.convert("RGBa"), None).astype(int) - from_memory(half, None)).max() <= 1
    grey = _patch((100, 128), "LA")
    assert np.abs(from_memory(grey.convert("La"), None).astype(int) - from_memory(grey, None)).max() <= 1


def test_16_bit_modes_of_either_byte_order_are_scaled_alike() -> None:
    deep = np.arange(60, dtype=np.uint16).reshape(6, 10) * 1000
    scaled = from_memory(Image.fromarray(deep), None)
    assert scaled[0, 1, 0] == round(1000 / 257) and scaled[5, 9, 0] == round(59000 / 257)
    for mode, dtype in (("I;16L", "<u2"), ("I;16B", ">u2"), ("I;16N", "=u2")):
        im = Image.frombytes(mode, (10, 6), deep.astype(dtype).tobytes())
        assert np.array_equal(from_memory(im, None), scaled), mode
    assert np.array_equal(from_memory(Image.fromarray(deep.astype(np.int32)), None), scaled)  # mode I


def test_a_lazily_opened_image_is_turned_by_its_exif_orientation() -> None:
    stored = np.zeros((40, 80, 3), dtype=np.uint8)
    stored[:20, :40] = 255  # bright top-left quadrant, stored 80 wide and 40 high
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the quadrant at the top right
    data = _saved(Image.fromarray(stored), "PNG", exif=exif)
    out = from_memory(Image.open(io.BytesIO(data)), None)
    assert out.shape == (80, 40, 3) and out[:8, -8:].mean() > 200 and out[:8, :8].mean() < 50
    assert np.array_equal(out, decode(data, None))


GREY = 100  # one grey level, as each accepted array type writes it


@pytest.mark.parametrize(
    "array",
    [
        np.full((6, 8), GREY, np.uint8),
        np.full((6, 8, 1), GREY, np.uint8),
        np.stack([np.full((6, 8), GREY, np.uint8), np.full((6, 8), 255, np.uint8)], -1),  # grey, opaque
        np.full((6, 8, 3), GREY, np.uint8),
        np.full((6, 8, 4), GREY, np.uint8) | np.array([0, 0, 0, 255], np.uint8),  # RGBA, opaque
        np.full((6, 16, 3), GREY, np.uint8)[:, ::2],  # not contiguous
        np.full((6, 8), GREY * 257, np.uint16),
        np.full((6, 8), GREY * 257, ">u2"),
        np.full((6, 8, 3), GREY / 255, np.float32),
        np.full((6, 8), GREY / 255, np.float64),
    ],
    ids=lambda a: f"{a.shape}-{a.dtype}",
)
def test_arrays_of_every_accepted_dtype_and_shape(array: np.ndarray) -> None:
    out = from_memory(array, (3, 4))
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8 and (out == GREY).all()
    assert (from_memory(array, (3, 4), channels=1) == GREY).all()


def test_bool_and_transparent_arrays_are_black_and_white() -> None:
    mask = np.zeros((4, 4), bool)
    mask[:, 2:] = True
    assert from_memory(mask, None)[..., 0].tolist() == [[0, 0, 255, 255]] * 4
    clear = np.zeros((4, 4, 4), np.uint8)  # black, fully transparent
    assert (from_memory(clear, None) == 255).all()


SHAPES = "an array is (H, W) or (H, W, C), C = 1 to 4 channels last"


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (
            np.zeros((6, 8), np.int64),
            "cannot read int64 pixels: an image array holds uint8, uint16 (16-bit, as 16-bit files), bool, "
            "or float in [0, 1]",
        ),
        (
            np.linspace(0, 255, 48).reshape(6, 8),
            "float pixels must be in [0, 1], these span [0, 255] (pixels of 0-255: pass uint8)",
        ),
        (np.full((6, 8), np.nan, np.float32), "float pixels must be in [0, 1], got NaN"),
        (np.zeros((0, 0, 3), np.uint8), "empty image (0x0 pixels)"),
        (np.zeros((6, 0), np.uint8), "empty image (0x6 pixels)"),
        (np.zeros((6, 8, 5), np.uint8), f"not an image: {SHAPES}"),
        (np.zeros((3, 6, 8), np.uint8), f"not an image: {SHAPES}"),  # channels first
        (np.zeros((2, 6, 8, 3), np.uint8), f"not an image: {SHAPES}; several images: pass a list of arrays"),
        (
            np.zeros(64, np.uint8),
            "a 1-D array is not an image (an encoded file: pass its bytes, arr.tobytes())",
        ),
    ],
    ids=lambda v: f"{v.shape}-{v.dtype}" if isinstance(v, np.ndarray) else "",
)
def test_arrays_that_are_not_images_are_one_line_errors_naming_them(array: np.ndarray, reason: str) -> None:
    with pytest.raises(DataError) as error:
        load_image(array, (8, 8))
    assert str(error.value) == f"<array {array.shape} {array.dtype}>: {reason}"


def test_the_pixel_limit_is_the_files_one_and_is_checked_before_any_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 20000x20000 RGB, as a view of one byte: converting any of it would take seconds and gigabytes
    huge = np.broadcast_to(np.zeros(1, np.uint8), (20000, 20000, 3))
    with pytest.raises(DataError) as error:
        load_image(huge, (8, 8))
    assert str(error.value) == (
        "<array (20000, 20000, 3) uint8>: too large: 20000x20000 is 400,000,000 pixels, over the limit "
        f"of {Image.MAX_IMAGE_PIXELS:,} (PIL.Image.MAX_IMAGE_PIXELS, as for files)"
    )
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    small, large = _saved(Image.new("L", (10, 10)), "PNG"), _saved(Image.new("L", (11, 10)), "PNG")
    assert decode(small, (4, 4)).shape == from_memory(np.zeros((10, 10), np.uint8), (4, 4)).shape
    with pytest.raises(ImageDecodeError, match="decompression bomb guard"):
        decode(large, (4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # Image.open's own warning
        lazy = Image.open(io.BytesIO(large))
    for image in (np.zeros((10, 11), np.uint8), Image.new("L", (11, 10)), lazy):
        with pytest.raises(ImageDecodeError, match="too large: 11x10 is 110 pixels, over the limit of 100"):
            from_memory(image, (4, 4))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # no limit, as Pillow allows
    assert from_memory(np.zeros((10, 11), np.uint8), (4, 4)).shape == (4, 4, 3)


def test_bytes_like_and_binary_files_decode_as_encoded_files(tmp_path: Path) -> None:
    data = _thirds(30, 20)
    expected = decode(data, (8, 8))
    path = tmp_path / "thirds.png"
    path.write_bytes(data)
    with open(path, "rb") as fh:
        from_file_object = load_image(fh, (8, 8))
    for image in (
        data,
        bytearray(data),
        memoryview(data),
        np.bytes_(data),
        io.BytesIO(data),
        path,
        str(path),
    ):
        assert np.array_equal(load_image(image, (8, 8)), expected), type(image)
    assert np.array_equal(from_file_object, expected)


def test_what_is_not_an_image_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    accepted = "pass a path, bytes, a binary file, a PIL image or a NumPy array"
    cases = {
        "<bytes>: not a readable image": b"hello",
        f"{path}: not a readable image": path,
        f"cannot read an image of type int: {accepted}": 3,
        "<PIL.Image mode=RGB 0x0>: empty image (0x0 pixels)": Image.new("RGB", (0, 0)),
    }
    for message, image in cases.items():
        with pytest.raises(DataError) as error:
            load_image(image, (8, 8))  # type: ignore[arg-type]
        assert str(error.value) == message
    with (
        open(path) as text,
        pytest.raises(DataError, match="notes.txt: a file opened in text mode; open images with 'rb'"),
    ):
        load_image(text, (8, 8))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- far smaller images


def test_far_smaller_means_upscaled_more_than_4x_along_a_side() -> None:
    assert (
        far_smaller((1, 1, 3), (28, 28))
        == "1x1 pixels, far smaller than the model's 28x28 input (upscaled 28x)"
    )
    assert far_smaller((7, 7), (28, 28)) is None  # exactly 4x
    assert (
        far_smaller((6, 100), (28, 28))
        == "100x6 pixels, far smaller than the model's 28x28 input (upscaled 4.7x)"
    )
    assert far_smaller((100, 6), (28, 14)) is None  # 14 / 6: a non-square input, each side against its own
    assert far_smaller((200, 300), (224, 224)) is None


def test_load_image_notes_a_far_smaller_image_by_name(decoder: str, tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.jpg"
    tiny.write_bytes(_jpeg(5, 4))
    notes: list[str] = []
    assert load_image(tiny, (64, 64), notes=notes).shape == (64, 64, 3)
    assert notes == [f"{tiny}: 5x4 pixels, far smaller than the model's 64x64 input (upscaled 16x)"]
    # a large JPEG decoded at a reduced scale is never taken for a small one
    for image in (_jpeg(447, 374), _jpeg(64, 16), np.zeros((16, 17), np.uint8), Image.new("RGB", (20, 16))):
        load_image(image, (64, 64), notes=notes)
    assert len(notes) == 1
    load_image(np.zeros((15, 64), np.uint8), (64, 64), notes=notes)
    load_image(Image.new("CMYK", (3, 64)), (64, 64), notes=notes)
    assert notes[1:] == [
        "<array (15, 64) uint8>: 64x15 pixels, far smaller than the model's 64x64 input (upscaled 4.3x)",
        "<PIL.Image mode=CMYK 3x64>: 3x64 pixels, far smaller than the model's 64x64 input (upscaled 21.3x)",
    ]

"""Decoding and resizing one image, robustly (`pawlab.data.workers` runs many).

`decode` is the single place where bytes become pixels, and `from_memory` where a PIL image or
an array does, through the same conversions; `load_image` takes any of them and names what it
refuses. Nothing damaged passes as an image: truncated files, decompression bombs, non-images
and arrays that are not pixels raise `ImageDecodeError` with a short reason, which callers
record as a skipped file.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import cv2
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from pawlab.errors import DataError

try:
    import simplejpeg
except ImportError:  # optional: Pillow decodes everything without it, more slowly
    simplejpeg = None

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# A partial decode must fail loudly, never produce a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# One image is too small to share between threads; decoding runs one process per core, and in
# the main process OpenCV's threads would only compete with torch's.
cv2.setNumThreads(1)


# Everything `load_image` takes: a path, an encoded file's bytes, a binary file, a PIL image or an array.
ImageLike = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray

# An image upscaled more than this along a side to reach the input size is "far smaller" than it.
FAR_SMALLER = 4


class ImageDecodeError(Exception):
    """A file is not a usable image; ``str(exc)`` is the one-line reason."""


def _flatten_alpha(im: Image.Image) -> Image.Image:
    """Composite transparent images onto white, as viewers show them."""
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = (im.convert("LA") if im.mode == "La" else im).convert("RGBA")  # La -> RGBA: unsupported
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba).convert("RGB")
    return im


def _scaled(a: np.ndarray, scale: float) -> np.ndarray:
    """``a * scale`` rounded into uint8 (same shape)."""
    return np.clip(np.asarray(a, dtype=np.float64) * scale, 0, 255).round().astype(np.uint8)


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and float modes: scale to 8 bits instead of clipping everything to white."""
    if im.mode.startswith("I;16") or im.mode == "I":
        return Image.fromarray(_scaled(np.asarray(im), 1 / 257.0))
    if im.mode == "F":
        a = np.asarray(im)
        return Image.fromarray(_scaled(a, 255.0 if a.max(initial=0.0) <= 1.0 else 1.0))
    return im


def _to_rgb(im: Image.Image) -> np.ndarray:
    """A loaded, upright image of any mode -> (h, w, 3) uint8: 16-bit and float modes scaled,
    alpha composited onto white, CMYK, YCbCr, LAB and HSV converted (Pillow >= 9.4 knows LAB)."""
    im = _flatten_alpha(_to_8bit(im))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _decode_jpeg_scaled(data: bytes, size: tuple[int, int]) -> np.ndarray | None:
    """libjpeg-turbo (simplejpeg) decoding straight to the smallest M/8 scale still at least
    ``size``: 447x374 -> 224 decodes at 5/8, not in full. None: let Pillow do it (CMYK, or
    anything simplejpeg does not take, so that Pillow gives the precise error)."""
    if simplejpeg is None or not data.startswith(b"\xff\xd8"):
        return None
    try:
        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("Gray", "YCbCr", "RGB"):
        return None
    # no Exif segment, no orientation: skip parsing the header for most files
    orientation = Image.open(io.BytesIO(data)).getexif().get(0x0112, 1) if b"Exif\0\0" in data else 1
    h, w = size
    if orientation in (5, 6, 7, 8):  # stored sideways
        h, w = w, h
    try:
        arr: np.ndarray = simplejpeg.decode_jpeg(
            data, colorspace="RGB", fastdct=True, fastupsample=True, min_height=h, min_width=w, strict=True
        )
    except ValueError as exc:
        reason = str(exc)
        if "premature end" in reason.lower():
            raise ImageDecodeError(f"truncated image ({reason})") from None
        raise ImageDecodeError(f"cannot decode image ({reason})") from None
    transpose = _ORIENTATION.get(orientation)
    if transpose is None:
        return arr
    return np.asarray(Image.fromarray(arr).transpose(transpose))


def _upright(im: Image.Image) -> Image.Image:
    """A loaded image turned as its EXIF orientation says (as ``ImageOps.exif_transpose``, with
    no copy when there is nothing to turn). Loaded first: a PNG's eXIf chunk may follow its pixels."""
    transpose = _ORIENTATION.get(im.getexif().get(0x0112, 1))
    return im if transpose is None else im.transpose(transpose)


def _open_pillow(data: bytes, size: tuple[int, int] | None) -> np.ndarray:
    """Pillow decoding, JPEGs scaled by a power of two (``draft``), EXIF orientation applied,
    alpha composited onto white: (H, W, 3) uint8."""
    im: Image.Image = Image.open(io.BytesIO(data))
    if size is not None and isinstance(im, JpegImageFile):
        # draft() takes the stored orientation; asking for the larger side both ways keeps an
        # EXIF rotation from leaving the image below the target.
        side = max(size)
        im.draft("RGB" if im.mode != "CMYK" else None, (side, side))
    im.load()
    return _to_rgb(_upright(im))


def _crop_box(width: int, height: int, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centred region of a (width, height) image with the aspect ratio of ``size`` (H, W)."""
    target = size[1] / size[0]
    if width / height > target:  # too wide: keep the full height
        w = height * target
        return ((width - w) / 2, 0.0, (width + w) / 2, float(height))
    h = width / target
    return (0.0, (height - h) / 2, float(width), (height + h) / 2)


def _resize(arr: np.ndarray, size: tuple[int, int], policy: str) -> np.ndarray:
    """(h, w, 3) -> ``size`` (H, W): bilinear after scale-on-decode has brought the image
    within 2x of the target, area averaging for larger reductions (no aliasing). OpenCV's
    SIMD resize costs a sixth of Pillow's, and decoding at 224 px is dominated by resizing."""
    if policy == "crop":
        # whole pixels inside the box: a pixel the box only grazes belongs to what is cut off
        x0, y0, x1, y1 = _crop_box(arr.shape[1], arr.shape[0], size)
        top, left = math.ceil(y0 - 1e-6), math.ceil(x0 - 1e-6)
        arr = arr[top : max(math.floor(y1 + 1e-6), top + 1), left : max(math.floor(x1 + 1e-6), left + 1)]
    if arr.shape[:2] == size:
        return arr
    reduce = arr.shape[0] >= 2 * size[0] or arr.shape[1] >= 2 * size[1]
    resized: np.ndarray = cv2.resize(
        np.ascontiguousarray(arr),
        (size[1], size[0]),
        interpolation=cv2.INTER_AREA if reduce else cv2.INTER_LINEAR,
    )
    return resized


def far_smaller(shape: tuple[int, ...], size: tuple[int, int]) -> str | None:
    """A note when an image of ``shape`` (h, w, ...) is far smaller than a model's input
    ``size`` (H, W): upscaled more than `FAR_SMALLER` times along a side (by either resize
    policy), so that little of what the model learnt can be in it. None otherwise."""
    h, w = shape[:2]
    factor = max(size[0] / h, size[1] / w)
    if factor <= FAR_SMALLER:
        return None
    model = f"the model's {size[1]}x{size[0]} input"
    return f"{w}x{h} pixels, far smaller than {model} (upscaled {round(factor, 1):g}x)"


@contextlib.contextmanager
def _decoding(notes: list[str] | None) -> Iterator[None]:
    """Decoders' refusals as `ImageDecodeError` with a short reason. Their warnings about a
    usable image (Pillow's "Corrupt EXIF data", say) are never printed: each becomes one line
    appended to ``notes``, or is dropped when it is None."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
        if notes is not None:
            notes.extend(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb guard: {exc}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not a readable image") from None
    except OSError as exc:
        reason = str(exc)
        if "truncated" in reason.lower():
            raise ImageDecodeError(f"truncated image ({reason})") from None
        raise ImageDecodeError(f"cannot decode image ({reason})") from None
    except (ValueError, SyntaxError, EOFError, TypeError, cv2.error) as exc:
        raise ImageDecodeError(f"cannot decode image ({exc})") from None


def _fit(
    arr: np.ndarray, size: tuple[int, int] | None, resize: str, small_notes: list[str] | None
) -> np.ndarray:
    """Upright (h, w, 3) uint8 -> ``size`` (H, W) by the ``resize`` policy (`_resize`), with a
    `far_smaller` note appended to ``small_notes`` when there is one."""
    if size is not None:
        note = far_smaller(arr.shape, size)
        if note is not None and small_notes is not None:
            small_notes.append(note)
        arr = _resize(arr, size, resize)
    return np.array(arr, dtype=np.uint8)  # writable, contiguous, detached from Pillow


def decode(
    data: bytes,
    size: tuple[int, int] | None,
    channels: int = 3,
    resize: str = "squash",
    *,
    notes: list[str] | None = None,
    small_notes: list[str] | None = None,
) -> np.ndarray:
    """Bytes to a uint8 array of shape (H, W, channels), resized to ``size`` = (H, W).

    JPEGs are scaled while decoding (libjpeg-turbo's DCT scaling by M/8, or Pillow's
    ``Image.draft`` by powers of two) to the smallest reduction still at least ``size``,
    then resized (`_resize`): the quality of a full decode at a fraction of the cost. EXIF orientation
    is applied. ``resize``: ``squash`` resizes the whole image to ``size`` (aspect ratio not
    kept), as in the Cortex and Keras tutorials; ``crop`` resizes the shorter side to fit and
    keeps the centre (as ImageNet models are evaluated).

    ``notes`` gets the decoders' warnings (`_decoding`); ``small_notes`` the `far_smaller` note.
    Scaling on decode never goes below ``size``, so the decoded size tells a far smaller image.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    with _decoding(notes):
        arr = _decode_jpeg_scaled(data, size) if size is not None else None
        if arr is None:
            arr = _open_pillow(data, size)
        arr = _fit(arr, size, resize, small_notes)
    return to_channels(arr, channels)


def _check_pixels(width: int, height: int) -> None:
    """No empty image, and none over Pillow's decompression-bomb limit for files
    (``PIL.Image.MAX_IMAGE_PIXELS``; None: no limit): checked before any work."""
    if width * height == 0:
        raise ImageDecodeError(f"empty image ({width}x{height} pixels)")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ImageDecodeError(
            f"too large: {width}x{height} is {width * height:,} pixels, over the limit of {limit:,} "
            "(PIL.Image.MAX_IMAGE_PIXELS, as for files)"
        )


def _array_to_8bit(arr: np.ndarray) -> np.ndarray:
    """An image array's pixels as uint8, same shape; a refusal for any other dtype or for
    floats outside [0, 1] (is 1.0 white, or nearly black? an array does not say)."""
    kind, width = arr.dtype.kind, arr.dtype.itemsize
    if kind == "u" and width == 1:
        return arr
    if kind == "b":
        return arr.view(np.uint8) * np.uint8(255)
    if kind == "u" and width == 2:
        return _scaled(arr, 1 / 257.0)
    if kind == "f":
        lo, hi = float(arr.min()), float(arr.max())
        if math.isnan(lo) or math.isnan(hi):
            raise ImageDecodeError("float pixels must be in [0, 1], got NaN")
        if lo < 0 or hi > 1:
            raise ImageDecodeError(
                f"float pixels must be in [0, 1], these span [{lo:g}, {hi:g}] (pixels of 0-255: pass uint8)"
            )
        return _scaled(arr, 255.0)
    raise ImageDecodeError(
        f"cannot read {arr.dtype} pixels: an image array holds uint8, uint16 (16-bit, as 16-bit files), "
        "bool, or float in [0, 1]"
    )


def _array_image(arr: np.ndarray) -> Image.Image:
    """(H, W) or (H, W, C) channels last, C = 1 (grey), 2 (grey and alpha), 3 (RGB) or 4 (RGBA),
    of the dtypes `_array_to_8bit` takes -> a Pillow image, its size checked before any work."""
    if arr.ndim == 1:
        raise ImageDecodeError("a 1-D array is not an image (an encoded file: pass its bytes, arr.tobytes())")
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and not 1 <= arr.shape[2] <= 4):
        several = "; several images: pass a list of arrays" if arr.ndim > 3 else ""
        raise ImageDecodeError(
            f"not an image: an array is (H, W) or (H, W, C), C = 1 to 4 channels last{several}"
        )
    _check_pixels(arr.shape[1], arr.shape[0])
    pixels = _array_to_8bit(arr)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    return Image.fromarray(np.ascontiguousarray(pixels))  # L, LA, RGB or RGBA by the channels


def from_memory(
    image: Image.Image | np.ndarray,
    size: tuple[int, int] | None,
    channels: int = 3,
    resize: str = "squash",
    *,
    small_notes: list[str] | None = None,
) -> np.ndarray:
    """A PIL image or an array -> uint8 (H, W, channels) at ``size``, as `decode` makes a
    file's pixels, with no encoding round-trip: a PIL image of any mode (loaded if it was
    opened lazily, EXIF orientation applied; 16-bit and float modes, alpha, CMYK, YCbCr, LAB
    and HSV as in files), or an array (`_array_image`: RGB, never BGR). The number of pixels
    is checked first, against the limit for files."""
    with _decoding(None):
        if isinstance(image, np.ndarray):
            im = _array_image(image)
        else:
            _check_pixels(*image.size)
            image.load()
            im = _upright(image)
        arr = _fit(_to_rgb(im), size, resize, small_notes)
    return to_channels(arr, channels)


def read_file(path: str | os.PathLike[str]) -> bytes:
    """A file's bytes, or a one-line `DataError` naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def _image_name(image: object) -> str:
    """How messages name an image: its path, ``<bytes>``, a file's name (or ``<file>``),
    ``<PIL.Image mode=CMYK 10x10>``, ``<array (28, 28, 1) uint8>``."""
    if isinstance(image, str | os.PathLike):
        return str(os.fspath(image))
    if isinstance(image, bytes | bytearray | memoryview):
        return "<bytes>"
    if isinstance(image, Image.Image):
        return f"<PIL.Image mode={image.mode} {image.width}x{image.height}>"
    if isinstance(image, np.ndarray):
        return f"<array {image.shape} {image.dtype}>"
    name = getattr(image, "name", None)
    return name if isinstance(name, str) else "<file>"


def load_image(
    image: ImageLike,
    size: tuple[int, int] | None,
    channels: int = 3,
    resize: str = "squash",
    *,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Anything image-like -> uint8 (H, W, channels) at ``size`` (H, W): a path, an encoded
    file's bytes (bytes, bytearray, memoryview) or a binary file object through `decode`; a PIL
    image or an array through `from_memory`. A refusal is a one-line `DataError` naming the
    image (`_image_name`); ``notes`` gets "NAME: ..." when it is far smaller than ``size``."""
    name = _image_name(image)
    small: list[str] = []
    try:
        if isinstance(image, Image.Image | np.ndarray):
            pixels = from_memory(image, size, channels, resize, small_notes=small)
        else:
            pixels = decode(_encoded(image, name), size, channels, resize, small_notes=small)
    except ImageDecodeError as exc:
        raise DataError(f"{name}: {exc}") from None
    if notes is not None:
        notes.extend(f"{name}: {note}" for note in small)
    return pixels


def _encoded(image: object, name: str) -> bytes:
    """The encoded file a path, bytes-like or binary file object holds."""
    if isinstance(image, str | os.PathLike):
        return read_file(image)
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    read = getattr(image, "read", None)
    if not callable(read):
        raise DataError(
            f"cannot read an image of type {type(image).__name__}: pass a path, bytes, a binary file, "
            "a PIL image or a NumPy array"
        )
    data = read()
    if not isinstance(data, bytes):
        raise DataError(f"{name}: a file opened in text mode; open images with 'rb'")
    return data


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """RGB (..., 3) uint8 -> (..., channels): 1 is ITU-R 601 luma, as Pillow's "L" mode."""
    if images.shape[-1] == channels:
        return images
    if channels != 1 or images.shape[-1] != 3:
        raise ValueError(f"cannot convert {images.shape[-1]} channels to {channels}")
    luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS

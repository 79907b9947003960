"""Decoding and resizing one image, robustly (`pawlab.data.workers` runs many).

`decode` is the single place where bytes become pixels. It never lets a damaged file pass
as an image: truncated files, decompression bombs and non-images raise `ImageDecodeError`
with a short reason, which callers record as a skipped file.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
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


class ImageDecodeError(Exception):
    """A file is not a usable image; ``str(exc)`` is the one-line reason."""


def _flatten_alpha(im: Image.Image) -> Image.Image:
    """Composite transparent images onto white, as viewers show them."""
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba).convert("RGB")
    return im


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and float modes: scale to 8 bits instead of clipping everything to white."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(a / 257.0, 0, 255).round().astype(np.uint8), "L")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(a * scale, 0, 255).round().astype(np.uint8), "L")
    return im


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
    im = _flatten_alpha(_to_8bit(ImageOps.exif_transpose(im)))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


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


def decode(
    data: bytes,
    size: tuple[int, int] | None,
    channels: int = 3,
    resize: str = "squash",
    *,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Bytes to a uint8 array of shape (H, W, channels), resized to ``size`` = (H, W).

    JPEGs are scaled while decoding (libjpeg-turbo's DCT scaling by M/8, or Pillow's
    ``Image.draft`` by powers of two) to the smallest reduction still at least ``size``,
    then resized (`_resize`): the quality of a full decode at a fraction of the cost. EXIF orientation
    is applied. ``resize``: ``squash`` resizes the whole image to ``size`` (aspect ratio not
    kept), as in the Cortex and Keras tutorials; ``crop`` resizes the shorter side to fit and
    keeps the centre (as ImageNet models are evaluated).

    Warnings the decoders raise about a usable image (Pillow's "Corrupt EXIF data", say) are
    never printed: each becomes one line appended to ``notes``, or is dropped when it is None.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            arr = _decode_jpeg_scaled(data, size) if size is not None else None
            if arr is None:
                arr = _open_pillow(data, size)
            if size is not None:
                arr = _resize(arr, size, resize)
            arr = np.array(arr, dtype=np.uint8)  # writable, contiguous, detached from Pillow
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
    return to_channels(arr, channels)


def read_file(path: str | os.PathLike[str]) -> bytes:
    """A file's bytes, or a one-line `DataError` naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def decode_named(
    data: bytes, name: str, size: tuple[int, int] | None, channels: int = 3, resize: str = "squash"
) -> np.ndarray:
    """`decode`, its refusal a one-line `DataError` naming the image (a path, ``<bytes>``)."""
    try:
        return decode(data, size, channels, resize)
    except ImageDecodeError as exc:
        raise DataError(f"{name}: {exc}") from None


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

"""Decoding and resizing one image, robustly; and a process pool to do many.

`decode` is the single place where bytes become pixels. It never lets a damaged file pass
as an image: truncated files, decompression bombs and non-images raise `ImageDecodeError`
with a short reason, which callers record as a skipped file.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

try:
    import simplejpeg
except ImportError:  # optional: Pillow decodes everything without it, more slowly
    simplejpeg = None

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# A partial decode must fail loudly, never produce a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False

T = TypeVar("T")
R = TypeVar("R")


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


def _decode_jpeg_scaled(data: bytes, size: tuple[int, int]) -> Image.Image | None:
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
    orientation = Image.open(io.BytesIO(data)).getexif().get(0x0112, 1)
    h, w = size
    if orientation in (5, 6, 7, 8):  # stored sideways
        h, w = w, h
    try:
        arr = simplejpeg.decode_jpeg(
            data, colorspace="RGB", fastdct=True, fastupsample=True, min_height=h, min_width=w, strict=True
        )
    except ValueError as exc:
        reason = str(exc)
        if "premature end" in reason.lower():
            raise ImageDecodeError(f"truncated image ({reason})") from None
        raise ImageDecodeError(f"cannot decode image ({reason})") from None
    im = Image.fromarray(arr)
    transpose = _ORIENTATION.get(orientation)
    return im.transpose(transpose) if transpose is not None else im


def _open_pillow(data: bytes, size: tuple[int, int] | None) -> Image.Image:
    """Pillow decoding, JPEGs scaled by a power of two (``draft``), EXIF orientation applied."""
    im: Image.Image = Image.open(io.BytesIO(data))
    if size is not None and isinstance(im, JpegImageFile):
        # draft() takes the stored orientation; asking for the larger side both ways keeps an
        # EXIF rotation from leaving the image below the target.
        side = max(size)
        im.draft("RGB" if im.mode != "CMYK" else None, (side, side))
    im.load()
    return ImageOps.exif_transpose(im)


def _crop_box(width: int, height: int, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centred region of a (width, height) image with the aspect ratio of ``size`` (H, W)."""
    target = size[1] / size[0]
    if width / height > target:  # too wide: keep the full height
        w = height * target
        return ((width - w) / 2, 0.0, (width + w) / 2, float(height))
    h = width / target
    return (0.0, (height - h) / 2, float(width), (height + h) / 2)


def decode(
    data: bytes, size: tuple[int, int] | None, channels: int = 3, resize: str = "squash"
) -> np.ndarray:
    """Bytes to a uint8 array of shape (H, W, channels), resized to ``size`` = (H, W).

    JPEGs are scaled while decoding (libjpeg-turbo's DCT scaling by M/8, or Pillow's
    ``Image.draft`` by powers of two) to the smallest reduction still at least ``size``,
    then resized: the quality of a full decode at a fraction of the cost. EXIF orientation
    is applied. ``resize``: ``squash`` resizes the whole image to ``size`` (aspect ratio not
    kept), as in the Cortex and Keras tutorials; ``crop`` resizes the shorter side to fit and
    keeps the centre (as ImageNet models are evaluated).
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = (_decode_jpeg_scaled(data, size) if size is not None else None) or _open_pillow(data, size)
            im = _flatten_alpha(_to_8bit(im))
            if im.mode != "RGB":
                im = im.convert("RGB")
            if size is not None and resize == "crop":
                box = _crop_box(im.width, im.height, size)
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box)
            elif size is not None and (im.height, im.width) != size:
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.array(im, dtype=np.uint8)  # a writable copy, detached from Pillow
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb guard: {exc}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not a readable image") from None
    except OSError as exc:
        reason = str(exc)
        if "truncated" in reason.lower():
            raise ImageDecodeError(f"truncated image ({reason})") from None
        raise ImageDecodeError(f"cannot decode image ({reason})") from None
    except (ValueError, SyntaxError, EOFError, TypeError) as exc:
        raise ImageDecodeError(f"cannot decode image ({exc})") from None
    return to_channels(arr, channels)


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


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Workers:
    """A process pool for the stages of one job, started on first use (small jobs run
    in-process) and shared by the stages, so that a job pays for starting workers once.

    ``forkserver`` keeps workers clean of the parent's threads (torch, OpenMP), which makes
    starting them safe even after a model was built.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: Any = None

    def map(self, fn: Callable[[T], R], tasks: Sequence[T], chunksize: int = 16) -> Iterator[R]:
        """``map(fn, tasks)``, in order."""
        if self.workers <= 1 or len(tasks) < 2 * chunksize:
            return map(fn, tasks)
        if self._pool is None:
            methods = mp.get_all_start_methods()
            self._pool = mp.get_context("forkserver" if "forkserver" in methods else "spawn").Pool(
                self.workers
            )
        return iter(self._pool.imap(fn, tasks, chunksize=chunksize))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parallel_map(
    fn: Callable[[T], R], tasks: Sequence[T], *, workers: int, chunksize: int = 16
) -> Iterator[R]:
    """``map(fn, tasks)`` in order, in ``workers`` processes when the job is big enough."""
    with Workers(workers) as pool:
        yield from pool.map(fn, tasks, chunksize)

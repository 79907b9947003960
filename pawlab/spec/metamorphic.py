"""Label-preserving variants of known images, for metamorphic robustness specs.

Each transform takes a uint8 image, (H, W) or (H, W, C) with C 1 or 3, and a severity in
[-1, 1], and returns a uint8 image of the same shape. The sign is the direction where there is
one (rotate anticlockwise or clockwise, brighter or darker); unsigned transforms use
``|severity|``. Severity 0 is exactly the input, and severity 1 is the transform's own maximum
parameter (``rotate`` with ``max_degrees=15`` turns by 15 degrees at severity 1). Every
transform is deterministic: the same image and severity give the same output (noise is seeded
from both, not from a global random state), so a Hypothesis failure replays.

    @given(variants(image, "rotate", max_degrees=15))
    def test_rotations_keep_the_class(variant):
        assert model.predict(variant).classification == "cats"

The severity is drawn so that it shrinks toward 0: a failure reports the mildest transform that
still breaks the property (in words, through ``hypothesis.note``).
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import currently_in_test_context, note
from hypothesis import strategies as st
from PIL import Image

from pawlab.errors import ConfigError, DataError
from pawlab.registry import Registry

Apply = Callable[..., np.ndarray]  # (image, severity, **params) -> image
Describe = Callable[..., str]  # (severity, **params) -> words
Theta = Callable[..., list[list[float]]]  # (severity, h, w, **params) -> 2x3 affine map


@dataclass(frozen=True)
class Transform:
    """A registered transform: ``apply(image, severity, **params)``, ``describe(severity,
    **params)``, its parameters with their defaults and valid ranges (inclusive), and whether
    the sign of the severity means a direction."""

    name: str
    apply: Apply
    describe: Describe
    defaults: dict[str, float]
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    signed: bool = True
    theta: Theta | None = None  # geometric transforms: their affine map, so batches warp at once


TRANSFORMS: Registry[Transform] = Registry("transform")

# Flips are label-preserving only for some classes (not digits: 6 and 9); see allowed_transforms.
FLIP = "flip"


def _register(
    name: str, describe: Describe, signed: bool, **params: tuple[float, float, float]
) -> Callable[[Apply], Apply]:
    """Register ``apply`` under ``name``; ``params``: name -> (default, low, high)."""

    def deco(fn: Apply) -> Apply:
        defaults = {k: v[0] for k, v in params.items()}
        ranges = {k: (v[1], v[2]) for k, v in params.items()}
        TRANSFORMS.register(name)(Transform(name, fn, describe, defaults, ranges, signed))
        return fn

    return deco


def _register_warp(
    name: str, describe: Describe, signed: bool, **params: tuple[float, float, float]
) -> Callable[[Theta], Theta]:
    """Register a geometric transform given by its affine map ``theta(severity, h, w,
    **params)`` (output -> input, in ``affine_grid``'s [-1, 1] coordinates)."""

    def deco(theta: Theta) -> Theta:
        def warp(image: np.ndarray, severity: float, **values: float) -> np.ndarray:
            h, w = image.shape[:2]
            out: np.ndarray = _warp(image[None], [theta(severity, h, w, **values)])[0]
            return out

        warp.__doc__ = theta.__doc__
        defaults = {k: v[0] for k, v in params.items()}
        ranges = {k: (v[1], v[2]) for k, v in params.items()}
        TRANSFORMS.register(name)(Transform(name, warp, describe, defaults, ranges, signed, theta))
        return theta

    return deco


# ---------------------------------------------------------------------------- checks


def check_image(image: Any) -> np.ndarray:
    """``image`` as a uint8 (H, W) or (H, W, C) array with C 1 or 3, or a one-line DataError."""
    if not isinstance(image, np.ndarray):
        raise DataError(f"image must be a NumPy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise DataError(f"image must be uint8, got dtype {image.dtype}")
    ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))
    if not ok or min(image.shape[:2]) < 2:
        shape = "x".join(str(d) for d in image.shape)
        raise DataError(f"image must have shape (H, W) or (H, W, C) with C 1 or 3 and H, W >= 2, got {shape}")
    return image


def get_transform(kind: str) -> Transform:
    """The registered transform ``kind``, or a one-line ConfigError naming the known ones."""
    if not isinstance(kind, str) or kind not in TRANSFORMS:
        raise ConfigError(f"transform: unknown transform {kind!r} (known: {', '.join(TRANSFORMS.names())})")
    return TRANSFORMS.get(kind)


def resolve_params(t: Transform, params: dict[str, Any]) -> dict[str, float]:
    """``params`` merged over ``t``'s defaults, each checked: a one-line ConfigError names an
    unknown parameter (and the known ones) or a value out of its range."""
    known = ", ".join(t.defaults) or "none"
    for key, value in params.items():
        if key not in t.defaults:
            raise ConfigError(f"{t.name}: unknown parameter {key!r} (known: {known})")
        low, high = t.ranges[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float | np.integer | np.floating)
            or not low <= value <= high
        ):
            raise ConfigError(f"{t.name}: {key} must be a number in [{low:g}, {high:g}], got {value!r}")
    return {**t.defaults, **{k: float(v) for k, v in params.items()}}


def _check_severity(severity: Any) -> float:
    if (
        isinstance(severity, bool)
        or not isinstance(severity, int | float | np.integer | np.floating)
        or not -1 <= severity <= 1
    ):
        raise ConfigError(f"severity must be a number in [-1, 1], got {severity!r}")
    return float(severity)


def apply(image: np.ndarray, kind: str, severity: float, **params: float) -> np.ndarray:
    """Transform ``kind`` at ``severity`` in [-1, 1] applied to uint8 ``image`` (H, W) or
    (H, W, C): a new uint8 array of the same shape; severity 0 gives an exact copy."""
    t = get_transform(kind)
    values = resolve_params(t, params)
    s = _check_severity(severity)
    image = check_image(image)
    if s == 0:
        return image.copy()
    return t.apply(image, s, **values)


def describe(kind: str, severity: float, **params: float) -> str:
    """Transform ``kind`` at ``severity`` in words, e.g. ``rotate 12.3° anticlockwise``."""
    t = get_transform(kind)
    return t.describe(_check_severity(severity), **resolve_params(t, params))


def apply_many(images: np.ndarray, kind: str, levels: np.ndarray, **params: float) -> np.ndarray:
    """Each of uint8 ``images`` (N, H, W[, C]) transformed at its own severity ``levels`` (N,):
    the same pixels as `apply` one by one, geometric transforms warped in batches of 64."""
    t = get_transform(kind)
    values = resolve_params(t, params)
    sev = [_check_severity(float(v)) for v in np.asarray(levels, dtype=np.float64).reshape(-1)]
    if not isinstance(images, np.ndarray) or images.ndim not in (3, 4) or len(sev) != len(images):
        raise DataError(f"need images (N, H, W[, C]) and one severity each, got {len(sev)} severities")
    if len(images) == 0:
        return images.copy()
    check_image(images[0])
    if t.theta is None:
        return np.stack([apply(im, kind, s, **values) for im, s in zip(images, sev, strict=True)])
    h, w = images.shape[1:3]
    out = images.copy()  # severity 0 stays exactly the input
    moved = [i for i, s in enumerate(sev) if s != 0]
    for k in range(0, len(moved), 64):
        idx = moved[k : k + 64]
        out[idx] = _warp(images[idx], [t.theta(sev[i], h, w, **values) for i in idx])
    return out


# ---------------------------------------------------------------------------- helpers


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W), pixels 0..255 (a copy: the
    input may be read-only)."""
    arr = images[..., None] if images.ndim == 3 else images
    return torch.from_numpy(arr.astype(np.float32)).permute(0, 3, 1, 2)


def _to_uint8(x: torch.Tensor | np.ndarray, like: np.ndarray) -> np.ndarray:
    """float (N, C, H, W) tensor or an array shaped as ``like``, pixels 0..255 -> uint8 shaped
    as ``like``."""
    if isinstance(x, torch.Tensor):
        x = x.permute(0, 2, 3, 1).numpy()
    out: np.ndarray = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return out.reshape(like.shape)


def _warp(images: np.ndarray, thetas: list[list[list[float]]]) -> np.ndarray:
    """Resample each of ``images`` (N, H, W[, C]) through its affine map (N x 2x3, output ->
    input, in ``affine_grid``'s [-1, 1] coordinates), reflecting at the edges as training's
    augmentation does (no black corners a network never saw). One image gives the same pixels
    alone as in a batch: grid_sample treats each image on its own."""
    x = _to_tensor(images)
    with torch.inference_mode():
        grid = F.affine_grid(torch.tensor(thetas, dtype=torch.float32), list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return _to_uint8(out, images)


def _sign(severity: float, positive: str, negative: str) -> str:
    return positive if severity > 0 else negative


# ---------------------------------------------------------------------------- geometry


def _describe_rotate(s: float, max_degrees: float) -> str:
    return f"rotate {abs(s) * max_degrees:.1f}° {_sign(s, 'anticlockwise', 'clockwise')}"


@_register_warp("rotate", _describe_rotate, True, max_degrees=(15.0, 0.0, 180.0))
def rotate(severity: float, h: int, w: int, max_degrees: float) -> list[list[float]]:
    """Turn about the centre by ``severity * max_degrees`` degrees (positive: anticlockwise)."""
    a = math.radians(severity * max_degrees)
    cos, sin = math.cos(a), math.sin(a)
    # pixel-space rotation written in normalised coordinates (x / (W/2), y / (H/2)); y points down
    return [[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]]


def _describe_translate(s: float, max_fraction: float) -> str:
    return f"shift {abs(s) * max_fraction * 100:.1f}% of the size {_sign(s, 'right and down', 'left and up')}"


@_register_warp("translate", _describe_translate, True, max_fraction=(0.1, 0.0, 0.5))
def translate(severity: float, h: int, w: int, max_fraction: float) -> list[list[float]]:
    """Shift by ``severity * max_fraction`` of the width and of the height (positive: right and
    down), reflecting at the edges."""
    d = -2.0 * severity * max_fraction  # the sample point moves against the content
    return [[1.0, 0.0, d], [0.0, 1.0, d]]


def _describe_scale(s: float, max_change: float) -> str:
    return f"scale x{1 + s * max_change:.3f} ({_sign(s, 'zoom in', 'zoom out')})"


@_register_warp("scale", _describe_scale, True, max_change=(0.15, 0.0, 0.9))
def scale(severity: float, h: int, w: int, max_change: float) -> list[list[float]]:
    """Zoom about the centre by ``1 + severity * max_change`` (positive: in), reflecting at the
    edges when zooming out."""
    k = 1.0 / (1.0 + severity * max_change)
    return [[k, 0.0, 0.0], [0.0, k, 0.0]]


def _describe_crop(s: float, min_area: float) -> str:
    area = 1 - abs(s) * (1 - min_area)
    return f"crop {area * 100:.1f}% of the area at the {_sign(s, 'right', 'left')}, resized back"


@_register_warp("crop", _describe_crop, True, min_area=(0.7, 0.05, 1.0))
def crop(severity: float, h: int, w: int, min_area: float) -> list[list[float]]:
    """Keep a window of ``1 - |severity| * (1 - min_area)`` of the area (the image's aspect),
    against the right edge (positive) or the left, vertically centred, resized back to the
    full size. (``scale`` zooms about the centre; a crop also moves the subject.)"""
    side = math.sqrt(1 - abs(severity) * (1 - min_area))
    shift = math.copysign(1 - side, severity)
    return [[side, 0.0, shift], [0.0, side, 0.0]]


def _describe_flip(s: float) -> str:
    return "mirrored left-right" if s != 0 else "not mirrored"


@_register(FLIP, _describe_flip, False)
def flip(image: np.ndarray, severity: float) -> np.ndarray:
    """Mirror left-right for any non-zero severity (a flip has no degrees)."""
    return image[:, ::-1].copy() if severity != 0 else image.copy()


# ---------------------------------------------------------------------------- photometry


def _describe_brightness(s: float, max_change: float) -> str:
    return f"{_sign(s, 'brighter', 'darker')} by {abs(s) * max_change * 100:.1f}% of full scale"


@_register("brightness", _describe_brightness, True, max_change=(0.4, 0.0, 1.0))
def brightness(image: np.ndarray, severity: float, max_change: float) -> np.ndarray:
    """Add ``severity * max_change`` of full scale (255) to every pixel (positive: brighter)."""
    return _to_uint8(image.astype(np.float32) + severity * max_change * 255.0, image)


def _describe_contrast(s: float, max_change: float) -> str:
    return f"contrast x{1 + s * max_change:.3f} ({_sign(s, 'more', 'less')})"


@_register("contrast", _describe_contrast, True, max_change=(0.4, 0.0, 1.0))
def contrast(image: np.ndarray, severity: float, max_change: float) -> np.ndarray:
    """Scale each pixel's distance from the image's mean by ``1 + severity * max_change``."""
    x = image.astype(np.float32)
    mean = float(x.mean())
    return _to_uint8(mean + (x - mean) * (1.0 + severity * max_change), image)


def _describe_blur(s: float, max_sigma: float) -> str:
    return f"Gaussian blur sigma {abs(s) * max_sigma:.2f} px"


@_register("blur", _describe_blur, False, max_sigma=(1.5, 0.0, 10.0))
def blur(image: np.ndarray, severity: float, max_sigma: float) -> np.ndarray:
    """Separable Gaussian blur of standard deviation ``|severity| * max_sigma`` pixels, the
    kernel cut at 3 sigma (and at the image's size), reflecting at the edges."""
    sigma = abs(severity) * max_sigma
    if sigma == 0:
        return image.copy()
    radius = max(1, min(math.ceil(3 * sigma), min(image.shape[:2]) - 1))
    taps = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    x = image.astype(np.float32)
    for axis in (0, 1):  # rows, then columns: a sum of shifted copies (NumPy, no thread start-up)
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="reflect")
        n = x.shape[axis]
        x = sum(
            (w * padded.take(np.arange(k, k + n), axis=axis) for k, w in enumerate(kernel)), np.zeros_like(x)
        )
    return _to_uint8(x, image)


def _quality(s: float, min_quality: float) -> int:
    return max(1, min(100, round(100 - abs(s) * (100 - min_quality))))


def _describe_jpeg(s: float, min_quality: float) -> str:
    return f"JPEG quality {_quality(s, min_quality)}"


@_register("jpeg", _describe_jpeg, False, min_quality=(10.0, 1.0, 100.0))
def jpeg(image: np.ndarray, severity: float, min_quality: float) -> np.ndarray:
    """Encode as JPEG at quality ``100 - |severity| * (100 - min_quality)`` and decode again
    (Pillow's libjpeg, default chroma subsampling)."""
    gray = image.ndim == 2 or image.shape[2] == 1
    pil = Image.fromarray(image.reshape(image.shape[:2]) if gray else image)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=_quality(severity, min_quality))
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L" if gray else "RGB"))
    return out.reshape(image.shape).copy()


def _describe_noise(s: float, max_std: float) -> str:
    return f"Gaussian noise std {abs(s) * max_std:.3f} (of full scale)"


@_register("noise", _describe_noise, False, max_std=(0.1, 0.0, 1.0))
def noise(image: np.ndarray, severity: float, max_std: float) -> np.ndarray:
    """Add Gaussian noise of standard deviation ``|severity| * max_std`` of full scale, as
    training's ``--augment noise=`` does; seeded from the image's bytes and the severity, so
    the same call always draws the same noise."""
    seed = zlib.crc32(struct.pack("<d", severity), zlib.crc32(image.tobytes()))
    rng = np.random.default_rng(seed)
    std = abs(severity) * max_std * 255.0
    return _to_uint8(
        image.astype(np.float32) + rng.standard_normal(image.shape, dtype=np.float32) * std, image
    )


# ---------------------------------------------------------------------------- strategies


def severities(kind: str) -> st.SearchStrategy[float]:
    """Hypothesis draws of a severity for transform ``kind`` that shrink toward 0, the mildest
    transform: thousandths from integers (``st.floats`` would favour the endpoints), signed
    for transforms with a direction, in [0, 1] otherwise; a flip is a boolean (shrinks to no
    flip)."""
    t = get_transform(kind)
    if t.name == FLIP:
        return st.booleans().map(float)
    return st.integers(-1000 if t.signed else 0, 1000).map(lambda i: i / 1000)


def variants(image: np.ndarray, kind: str, **params: float) -> st.SearchStrategy[np.ndarray]:
    """A Hypothesis strategy of ``image`` (uint8 (H, W) or (H, W, C)) transformed by ``kind``
    at a drawn severity, with ``params`` (e.g. ``max_degrees=15``) over the transform's
    defaults. A failing property shrinks toward the identity and notes the severity in words.
    Unknown ``kind`` or parameter: ConfigError; a bad image: DataError (both when called)."""
    t = get_transform(kind)
    values = resolve_params(t, params)
    frozen = check_image(image).copy()  # later changes to the caller's array change nothing
    frozen.flags.writeable = False

    def build(severity: float) -> np.ndarray:
        if currently_in_test_context():
            note(f"{t.name} severity {severity:+.3f}: {t.describe(severity, **values)}")
        return frozen.copy() if severity == 0 else t.apply(frozen, severity, **values)

    return severities(t.name).map(build)


def _trained_with_flips(model_meta: dict[str, Any]) -> bool:
    augment = model_meta.get("training", {}).get("config", {}).get("augment", {})
    return bool(augment.get("flip", False))


def allowed_transforms(model_meta: dict[str, Any], *, flip: bool | None = None) -> list[str]:
    """The transforms that keep a model's classes: all but ``flip`` always; ``flip`` when asked
    for (``flip=True``), or by default (``None``) when the model was trained with flip
    augmentation (its file's ``training.config.augment.flip``) and its classes are not all
    digits (a mirrored 6 or 9 is not a digit; mirrored cats are cats)."""
    names = [n for n in TRANSFORMS.names() if n != FLIP]
    if flip is None:
        classes = [str(c) for c in model_meta.get("classes", [])]
        digits = bool(classes) and all(c.strip().isdigit() for c in classes)
        flip = _trained_with_flips(model_meta) and not digits
    return [*names, FLIP] if flip else names

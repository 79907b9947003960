from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

from pawlab.errors import ConfigError, DataError
from pawlab.spec.metamorphic import (
    FLIP,
    TRANSFORMS,
    allowed_transforms,
    apply,
    apply_many,
    describe,
    severities,
    variants,
)

KINDS = TRANSFORMS.names()
GRADED = [k for k in KINDS if k != FLIP]  # transforms with a degree of severity


def picture(size: int = 32, channels: int = 3) -> np.ndarray:
    """A structured uint8 image (a gradient, a bright off-centre square, mild texture): every
    transform changes it, and none saturates it everywhere."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:size, 0:size]
    base = 40 + 3 * x + 2 * y + rng.integers(0, 20, (size, size))
    base[size // 5 : size // 2, size // 6 : size // 2] += 90
    img = np.clip(base, 0, 255).astype(np.uint8)
    return img if channels == 0 else np.repeat(img[:, :, None], channels, axis=2)


def change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels", [0, 1, 3])
def test_identity_at_zero_and_shape_kept(kind: str, channels: int) -> None:
    img = picture(channels=channels)
    same = apply(img, kind, 0.0)
    assert same.dtype == np.uint8 and np.array_equal(same, img) and same is not img
    for s in (-1.0, -0.3, 0.5, 1.0):
        out = apply(img, kind, s)
        assert out.dtype == np.uint8 and out.shape == img.shape
        assert change(out, img) > 0, f"{kind} at {s} changed nothing"


@pytest.mark.parametrize("kind", GRADED)
def test_a_bigger_severity_changes_more(kind: str) -> None:
    img = picture()
    mild, strong = change(apply(img, kind, 0.25), img), change(apply(img, kind, 1.0), img)
    assert 0 < mild < strong
    if TRANSFORMS.get(kind).signed:
        assert not np.array_equal(apply(img, kind, 0.5), apply(img, kind, -0.5))


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic(kind: str) -> None:
    img = picture()
    np.random.seed(1)
    a = apply(img, kind, 0.7)
    np.random.seed(2)
    assert np.array_equal(a, apply(img.copy(), kind, 0.7))


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_gives_the_same_pixels_as_one_by_one(kind: str) -> None:
    images = np.stack([picture(), picture()[::-1].copy(), picture()[:, ::-1].copy()])
    sev = np.array([0.0, -0.4, 0.9])
    batch = apply_many(images, kind, sev)
    assert np.array_equal(batch, np.stack([apply(im, kind, s) for im, s in zip(images, sev, strict=True)]))
    assert np.array_equal(batch[0], images[0])
    with pytest.raises(DataError, match="one severity each"):
        apply_many(images, kind, sev[:2])


def test_directions_and_maximum_parameters() -> None:
    dot = np.zeros((21, 21), np.uint8)
    dot[10, 17:20] = 255  # right of centre
    up = np.argwhere(apply(dot, "rotate", 1.0, max_degrees=90) > 128)
    assert (up[:, 0] < 5).all(), "positive rotation turns anticlockwise: right -> top"
    moved = np.argwhere(apply(dot, "translate", 1.0, max_fraction=0.1) > 128)
    assert moved[:, 0].min() == 12, "positive translation moves down (and right)"
    img = picture()
    assert apply(img, "brightness", 0.5).mean() > img.mean() > apply(img, "brightness", -0.5).mean()
    assert np.array_equal(apply(img, "flip", 1.0), img[:, ::-1])
    assert apply(img, "rotate", 1.0, max_degrees=0).tolist() == img.tolist()
    assert describe("rotate", -0.82, max_degrees=15) == "rotate 12.3° clockwise"
    assert describe("jpeg", 1.0) == "JPEG quality 10"
    assert "noise" in describe("noise", 0.5)


def test_unsigned_transforms_use_the_magnitude() -> None:
    img = picture()
    assert np.array_equal(apply(img, "blur", -0.6), apply(img, "blur", 0.6))
    assert np.array_equal(apply(img, "jpeg", -0.6), apply(img, "jpeg", 0.6))


@settings(max_examples=25, deadline=None)
@given(variants(picture(), "rotate", max_degrees=15))
def test_small_rotations_keep_the_bright_square_where_it_was(variant: np.ndarray) -> None:
    """A real property over variants: the middle of the bright square stays bright (a 15°
    turn about the image's centre moves it about 2 pixels; the square is 10 wide)."""
    assert variant[10:13, 9:12].mean() > 150 > variant[24:27, 9:12].mean()


@pytest.mark.parametrize("kind", KINDS)
def test_variants_shrink_toward_the_mildest_transform(kind: str) -> None:
    """A failing property shrinks to the mildest severity that still fails it: the smallest
    (in thousandths, either sign) at which the image changes more than at severity 0.3."""
    img = picture()
    if kind == FLIP:
        assert np.array_equal(find(variants(img, kind), lambda v: True), img)  # shrinks to no flip
        assert np.array_equal(find(variants(img, kind), lambda v: change(v, img) > 0), img[:, ::-1])
        return
    limit = change(apply(img, kind, 0.3), img)

    def too_far(v: np.ndarray) -> bool:
        return change(v, img) > limit

    smallest = find(variants(img, kind), too_far, settings=settings(max_examples=500, database=None))
    signs = (1, -1) if TRANSFORMS.get(kind).signed else (1,)
    near: list[float] = []  # the failing severities up to 0.01 above the mildest one
    for i in range(1001):
        near += [s * i / 1000 for s in signs if too_far(apply(img, kind, s * i / 1000))]
        if near and i / 1000 >= abs(near[0]) + 0.01:
            break
    assert any(np.array_equal(smallest, apply(img, kind, s)) for s in near)


def test_a_failing_property_reports_the_severity_in_words() -> None:
    img = picture()
    limit = change(apply(img, "rotate", 0.5), img)

    @settings(max_examples=200, database=None, deadline=None)
    @given(variants(img, "rotate", max_degrees=15))
    def prop(v: np.ndarray) -> None:
        assert change(v, img) <= limit

    with pytest.raises(AssertionError) as info:
        prop()
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "rotate severity" in notes and "°" in notes


def test_severities_shrink_toward_zero() -> None:
    assert find(severities("rotate"), lambda s: abs(s) > 0.3) in (0.301, -0.301)
    assert find(severities("jpeg"), lambda s: s > 0.3) == 0.301
    assert find(severities("flip"), lambda s: True) == 0.0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: variants(picture(), "spin"), ConfigError, "unknown transform 'spin' .*known: blur, "),
        (
            lambda: variants(picture(), "rotate", degrees=3),
            ConfigError,
            "unknown parameter 'degrees' .*max_degrees",
        ),
        (
            lambda: variants(picture(), "rotate", max_degrees=500),
            ConfigError,
            r"max_degrees must be .*\[0, 180\]",
        ),
        (
            lambda: variants(picture().astype(np.float32), "rotate"),
            DataError,
            "must be uint8, got dtype float32",
        ),
        (lambda: variants(np.zeros((4, 4, 5), np.uint8), "blur"), DataError, "got 4x4x5"),
        (lambda: variants([[1, 2]], "blur"), DataError, "NumPy array, got list"),  # type: ignore[arg-type]
        (lambda: apply(picture(), "blur", 2.0), ConfigError, r"severity must be .*\[-1, 1\]"),
    ],
)
def test_bad_inputs_are_one_line_errors(call: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def meta(classes: list[str], flip: bool | None) -> dict[str, Any]:
    augment = {} if flip is None else {"flip": flip}
    return {"classes": classes, "training": {"config": {"augment": augment}}}


def test_flips_only_where_the_classes_allow() -> None:
    assert FLIP in allowed_transforms(meta(["cats", "dogs"], True))
    assert FLIP not in allowed_transforms(meta(["cats", "dogs"], False))
    assert FLIP not in allowed_transforms(meta(["cats", "dogs"], None))
    assert FLIP not in allowed_transforms({})
    digits = [str(d) for d in range(10)]
    assert FLIP not in allowed_transforms(meta(digits, True)), "a mirrored 6 or 9 is not a digit"
    assert FLIP in allowed_transforms(meta(digits, True), flip=True)
    assert FLIP not in allowed_transforms(meta(["cats", "dogs"], True), flip=False)
    assert set(allowed_transforms({})) == set(KINDS) - {FLIP}


def test_the_strategy_does_not_see_later_changes_to_the_image() -> None:
    img = picture()
    strategy = variants(img, "brightness")
    img[:] = 0

    @settings(max_examples=5, database=None, deadline=None)
    @given(strategy, st.just(None))
    def prop(v: np.ndarray, _: None) -> None:
        assert v.max() > 0

    prop()

"""Data ingestion: labelling, cataloguing, splitting, decoding, loading and preparing.

Every image is generated in ``tmp_path``; only ``test_load_dataset_multiprocess_*`` starts
a process pool (everything else passes ``workers=1``).
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import PIL.Image
import pytest
from PIL import Image

from pawlab.config import DataConfig
from pawlab.data import Dataset, Item, load_dataset, prepare
from pawlab.data import workers as workers_module
from pawlab.data.catalog import Catalog, assign_splits, catalog, is_hidden, label_of, name_label, parent_label
from pawlab.data.decode import ImageDecodeError, decode
from pawlab.data.pack import MANIFEST
from pawlab.errors import DataError, OutputError
from tests.conftest import make_image, write_tree

ONE = DataConfig(size=16, workers=1)  # tiny and in-process


# ----------------------------------------------------------------------------- helpers


def encode(im: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def jpeg_bytes(seed: int = 0, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), "JPEG")


def labels_of(cat: Catalog) -> dict[str, str | None]:
    return {it.name: it.label for it in cat.items}


def splits_of(cat: Catalog) -> dict[str, str | None]:
    return {it.name: it.split for it in cat.items}


def skipped_names(cat: Catalog) -> set[str]:
    return {s.name for s in cat.skipped}


def load(path: Path, config: DataConfig = ONE) -> Dataset:
    return load_dataset(path, config, progress=False)


def zip_tree(folder: Path, dest: Path, prefix: str = "", extra: Iterable[str] = ()) -> Path:
    """Zip every file of ``folder`` under ``prefix``; ``extra`` names get junk bytes."""
    with zipfile.ZipFile(dest, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.writestr(prefix + f.relative_to(folder).as_posix(), f.read_bytes())
        for name in extra:
            z.writestr(name, b"\x00\x05\x16\x07 resource fork")
    return dest


def by_class_and_file(
    images: np.ndarray, labels: np.ndarray, names: list[str], classes: list[str]
) -> list[tuple[str, str, str]]:
    """(class, file name within the class, pixel digest) rows, sorted: comparable across sources."""
    rows = [
        (classes[int(lab)], PurePosixPath(n).name, hashlib.sha1(img.tobytes()).hexdigest())
        for img, lab, n in zip(images, labels, names, strict=True)
    ]
    return sorted(rows)


def all_rows(ds: Dataset) -> list[tuple[str, str, str]]:
    images = np.concatenate([ds.train.images, ds.validation.images])
    labels = np.concatenate([ds.train.labels, ds.validation.labels])
    return by_class_and_file(images, labels, ds.train.names + ds.validation.names, ds.classes)


def split_rows(ds: Dataset, split: str) -> list[tuple[str, str, str]]:
    s = ds.train if split == "train" else ds.validation
    return by_class_and_file(s.images, s.labels, s.names, ds.classes)


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


def add_bad_files(root: Path) -> dict[str, str]:
    """Unusable files in a class-per-folder tree -> the word their skip reason must contain."""
    (root / "cat" / "cat.empty.jpg").write_bytes(b"")
    (root / "dog" / "dog.text.jpg").write_bytes(b"this is not a picture\n" * 20)
    whole = (root / "cat" / "cat.0.jpg").read_bytes()
    (root / "cat" / "cat.cut.jpg").write_bytes(whole[: len(whole) // 2])
    return {
        "cat/cat.empty.jpg": "empty",
        "dog/dog.text.jpg": "not a readable image",
        "cat/cat.cut.jpg": "truncated",
    }


# ----------------------------------------------------------------------------- labelling


@pytest.mark.parametrize(
    ("name", "expected"),
    [("cat/12.jpg", "cat"), ("cat/sub/12.jpg", "cat"), ("cat.12.jpg", None), ("12.jpg", None)],
)
def test_parent_label(name: str, expected: str | None) -> None:
    assert parent_label(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cat.12.jpg", "cat"),
        ("dog.1.JPG", "dog"),
        ("some/folder/cat.12.jpg", "cat"),
        ("12.jpg", None),  # no dot-part: no label
        ("cat.jpg", None),  # the only dot is the extension's
        (".12.jpg", None),  # empty head
    ],
)
def test_name_label(name: str, expected: str | None) -> None:
    assert name_label(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cats/dog.3.jpg", "cats"),  # the folder wins over the name
        ("dog.3.jpg", "dog"),
        ("3.jpg", None),
    ],
)
def test_label_of(name: str, expected: str | None) -> None:
    assert label_of(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (".DS_Store", True),
        ("cat/._cat.1.jpg", True),
        ("__MACOSX/cat/cat.1.jpg", True),
        (".git/objects/ab.jpg", True),
        ("cat/cat.1.jpg", False),
        ("MACOSX/cat.1.jpg", False),
    ],
)
def test_is_hidden(name: str, expected: bool) -> None:
    assert is_hidden(name) is expected


# ----------------------------------------------------------------------------- catalog


def test_catalog_class_per_folder() -> None:
    cat = catalog(["cat/1.jpg", "cat/2.png", "dog/a.jpeg"])
    assert labels_of(cat) == {"cat/1.jpg": "cat", "cat/2.png": "cat", "dog/a.jpeg": "dog"}
    assert not cat.presplit
    assert all(it.split is None for it in cat.items)
    assert cat.skipped == []


def test_catalog_kaggle_flat() -> None:
    cat = catalog(["cat.12.jpg", "dog.7.jpg", "cat.3.jpg"])
    assert labels_of(cat) == {"cat.12.jpg": "cat", "dog.7.jpg": "dog", "cat.3.jpg": "cat"}
    assert not cat.presplit


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["wrap/cat/1.jpg", "wrap/dog/2.jpg"], {"wrap/cat/1.jpg": "cat", "wrap/dog/2.jpg": "dog"}),
        (["a/b/cat/1.jpg", "a/b/dog/2.jpg"], {"a/b/cat/1.jpg": "cat", "a/b/dog/2.jpg": "dog"}),
        # a Kaggle zip: everything under train/, and no validation/ beside it
        (["train/cat.1.jpg", "train/dog.2.jpg"], {"train/cat.1.jpg": "cat", "train/dog.2.jpg": "dog"}),
    ],
    ids=["wrapper", "two-wrappers", "zip-train-only"],
)
def test_catalog_looks_through_a_single_wrapper(names: list[str], expected: dict[str, str]) -> None:
    cat = catalog(names)
    assert labels_of(cat) == expected
    assert not cat.presplit
    assert all(it.split is None for it in cat.items)


@pytest.mark.parametrize("val_dir", ["validation", "val", "valid", "test"])
def test_catalog_presplit_keeps_the_split(val_dir: str) -> None:
    names = ["train/cat/1.jpg", "train/dog/2.jpg", f"{val_dir}/cat/3.jpg", f"{val_dir}/dog/4.jpg"]
    cat = catalog(names)
    assert cat.presplit
    assert labels_of(cat) == dict(zip(names, ["cat", "dog", "cat", "dog"], strict=True))
    assert splits_of(cat) == dict(zip(names, ["train", "train", "validation", "validation"], strict=True))


def test_catalog_presplit_under_a_wrapper_with_flat_names() -> None:
    names = ["data/train/cat.1.jpg", "data/train/dog.2.jpg", "data/validation/dog.3.jpg"]
    cat = catalog(names)
    assert cat.presplit
    assert labels_of(cat) == dict(zip(names, ["cat", "dog", "dog"], strict=True))
    assert splits_of(cat)["data/validation/dog.3.jpg"] == "validation"


BESIDE_EXTRA = ["train/cat/1.jpg", "validation/cat/2.jpg", "extra/cat/3.jpg"]


def test_catalog_layout_split_skips_other_top_folders() -> None:
    cat = catalog(BESIDE_EXTRA, "split")
    assert [it.name for it in cat.items] == ["train/cat/1.jpg", "validation/cat/2.jpg"]
    (skip,) = cat.skipped
    assert (skip.name, skip.reason) == ("extra/cat/3.jpg", "outside the train/ and validation/ folders")


def test_catalog_layout_classes_makes_every_top_folder_a_class() -> None:
    cat = catalog(BESIDE_EXTRA, "classes")
    assert labels_of(cat) == dict(zip(BESIDE_EXTRA, ["train", "validation", "extra"], strict=True))
    assert not cat.presplit and all(it.split is None for it in cat.items)


@pytest.mark.parametrize("wrapper", ["", "vehicles/"])
@pytest.mark.parametrize("file", ["{c}.1.jpg", "IMG_1.jpg"])
def test_catalog_a_class_named_like_a_split_is_a_class(wrapper: str, file: str) -> None:
    names = [f"{wrapper}{c}/{file.format(c=c)}" for c in ("bus", "car", "train", "test", "val")]
    cat = catalog(names)
    assert sorted(labels_of(cat).values()) == ["bus", "car", "test", "train", "val"]
    assert cat.skipped == [] and not cat.presplit


FLAT_BESIDE_VALIDATION = [
    "cat.1.jpg",
    "dog.2.jpg",
    "cat.3.jpg",
    "validation/cat.4.jpg",
    "validation/dog.5.jpg",
]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (
            BESIDE_EXTRA,
            "src: ambiguous layout: split folders train/, validation/ beside other images (extra/); "
            "--layout split keeps their split and skips the rest, --layout classes makes every top folder "
            "a class",
        ),
        (
            FLAT_BESIDE_VALIDATION,
            "src: ambiguous layout: split folder validation/ beside other images (3 labelled files like "
            "cat.1.jpg); --layout split keeps its split and trains on the rest, --layout classes makes every "
            "top folder a class",
        ),
    ],
    ids=["beside-a-folder", "beside-flat-files"],
)
def test_catalog_split_folders_beside_other_images_are_ambiguous(names: list[str], message: str) -> None:
    with pytest.raises(DataError) as err:
        catalog(names, where="src")
    assert str(err.value) == message


@pytest.mark.parametrize(
    "names",
    [
        FLAT_BESIDE_VALIDATION,
        ["cat/1.jpg", "dog/2.jpg", "cat/3.jpg", "validation/cat/4.jpg", "validation/dog/5.jpg"],
    ],
    ids=["flat", "class-folders"],
)
def test_catalog_layout_split_trains_on_what_is_beside_a_validation_folder(names: list[str]) -> None:
    cat = catalog(names, "split")
    assert cat.presplit
    assert labels_of(cat) == dict(zip(names, ["cat", "dog", "cat", "cat", "dog"], strict=True))
    assert splits_of(cat) == dict(zip(names, ["train"] * 3 + ["validation", "validation"], strict=True))
    assert cat.skipped == []


def test_catalog_layout_split_without_train_skips_other_split_folders() -> None:
    cat = catalog(["cat.1.jpg", "dog.2.jpg", "val/cat.3.jpg", "test/4.jpg"], "split")
    assert splits_of(cat) == {"cat.1.jpg": "train", "dog.2.jpg": "train", "val/cat.3.jpg": "validation"}
    assert [(sk.name, sk.reason) for sk in cat.skipped] == [
        ("test/4.jpg", "outside the val/ folder and the images beside it")
    ]


def test_catalog_split_folders_without_train_or_anything_beside_them() -> None:
    with pytest.raises(DataError, match=r"^src: no train/ folder, and no images beside validation/, test/$"):
        catalog(["validation/cat/1.jpg", "validation/dog/2.jpg", "test/cat/3.jpg"], where="src")


def test_catalog_layout_split_without_split_folders() -> None:
    with pytest.raises(DataError, match=r"^src: --layout split: no train/, validation/ \(val/, valid/\)"):
        catalog(["cat/1.jpg", "dog/2.jpg"], "split", where="src")


def test_catalog_layout_split_does_not_look_through_a_train_wrapper() -> None:
    cat = catalog(["train/cat/1.jpg", "train/dog/2.jpg"], "split")
    assert labels_of(cat) == {"train/cat/1.jpg": "cat", "train/dog/2.jpg": "dog"}
    assert not cat.presplit and [it.key for it in cat.items] == ["cat/1.jpg", "dog/2.jpg"]


UNLABELLED_TEST = ["train/cat.1.jpg", "train/dog.2.jpg", "test/1.jpg", "test/2.jpg"]


@pytest.mark.parametrize("test", ["test", "test1"])  # Kaggle's dogs-vs-cats test1.zip: test1/
def test_catalog_unlabelled_test_is_not_a_split(test: str) -> None:
    assert not catalog([n.replace("test/", f"{test}/") for n in UNLABELLED_TEST]).presplit


def test_catalog_a_labelled_test1_is_never_the_validation_set() -> None:
    cat = catalog(["train/cat/1.jpg", "train/dog/2.jpg", "test1/cat/3.jpg", "test1/dog/4.jpg"])
    assert not cat.presplit and {it.split for it in cat.items} == {None}
    assert skipped_names(cat) == {"test1/cat/3.jpg", "test1/dog/4.jpg"}


@pytest.mark.parametrize("test", ["test", "test1"])
def test_catalog_unlabelled_test_beside_train_labels_the_training_images(test: str) -> None:
    cat = catalog([n.replace("test/", f"{test}/") for n in UNLABELLED_TEST])
    assert labels_of(cat) == {"train/cat.1.jpg": "cat", "train/dog.2.jpg": "dog"}
    assert skipped_names(cat) == {f"{test}/1.jpg", f"{test}/2.jpg"}


def test_catalog_skips_files_without_label_with_a_reason() -> None:
    cat = catalog(["cat/1.jpg", "dog/2.jpg", "3.jpg"])
    assert [it.name for it in cat.items] == ["cat/1.jpg", "dog/2.jpg"]
    (skip,) = cat.skipped
    assert skip.name == "3.jpg"
    assert "no label" in skip.reason


@pytest.mark.parametrize(
    "junk",
    [".DS_Store", "cat/._cat.1.jpg", "__MACOSX/cat/._cat.1.jpg", "__MACOSX/cat.1.jpg", "cat/.hidden.jpg"],
)
def test_catalog_skips_hidden_files(junk: str) -> None:
    cat = catalog(["cat/cat.1.jpg", "dog/dog.1.jpg", junk])
    assert junk not in labels_of(cat)
    assert [(s.name, "hidden" in s.reason) for s in cat.skipped] == [(junk, True)]


def test_catalog_macosx_does_not_defeat_wrapper_stripping() -> None:
    cat = catalog(["wrap/cat/1.jpg", "wrap/dog/2.jpg", "__MACOSX/wrap/cat/._1.jpg"])
    assert labels_of(cat) == {"wrap/cat/1.jpg": "cat", "wrap/dog/2.jpg": "dog"}


@pytest.mark.parametrize("junk", ["cat/notes.txt", "dog/dog.1.mp4", "cat/cat.2", "Thumbs.db"])
def test_catalog_skips_non_image_extensions(junk: str) -> None:
    cat = catalog(["cat/cat.1.jpg", "dog/dog.1.jpg", junk])
    assert junk not in labels_of(cat)
    assert [(s.name, "not an image" in s.reason) for s in cat.skipped] == [(junk, True)]


@pytest.mark.parametrize("ext", [".JPG", ".Jpeg", ".PNG", ".WEBP", ".BMP", ".GIF", ".TIFF"])
def test_catalog_accepts_upper_case_extensions(ext: str) -> None:
    cat = catalog([f"cat.1{ext}", f"dog/2{ext}"])
    assert labels_of(cat) == {f"cat.1{ext}": "cat", f"dog/2{ext}": "dog"}


def test_catalog_ignores_root_manifest_silently() -> None:
    cat = catalog([MANIFEST, "train/cat/1.png", "validation/dog/2.png"])
    assert MANIFEST not in labels_of(cat)
    assert cat.skipped == []
    assert cat.presplit


# ----------------------------------------------------------------------------- assign_splits


def items(counts: dict[str, int], start: int = 0) -> list[Item]:
    return [
        Item(f"{label}/{label}.{i}.jpg", label)
        for label, n in counts.items()
        for i in range(start, start + n)
    ]


def validation_names(split_items: Iterable[Item]) -> set[str]:
    return {it.name for it in split_items if it.split == "validation"}


def test_assign_splits_is_deterministic() -> None:
    its = items({"cat": 50, "dog": 50})
    assert assign_splits(its, 0.2, seed=3) == assign_splits(its, 0.2, seed=3)


def test_assign_splits_gives_every_item_a_split() -> None:
    out = assign_splits(items({"cat": 30, "dog": 30}), 0.2, seed=0)
    assert sorted(it.name for it in out) == sorted(it.name for it in items({"cat": 30, "dog": 30}))
    assert {it.split for it in out} == {"train", "validation"}


def test_assign_splits_different_seeds_differ() -> None:
    its = items({"cat": 100, "dog": 100})
    assert validation_names(assign_splits(its, 0.2, 0)) != validation_names(assign_splits(its, 0.2, 1))


@pytest.mark.parametrize("val_fraction", [0.1, 0.25, 0.5])
def test_assign_splits_is_stratified(val_fraction: float) -> None:
    counts = {"cat": 400, "dog": 100}
    out = assign_splits(items(counts), val_fraction, seed=7)
    for label, n in counts.items():
        in_val = sum(1 for it in out if it.label == label and it.split == "validation")
        assert in_val / n == pytest.approx(val_fraction, abs=0.1), label


@pytest.mark.parametrize("val_fraction", [0.01, 0.5, 0.99])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_assign_splits_small_classes_get_both_splits(val_fraction: float, n: int) -> None:
    out = assign_splits(items({"cat": n, "dog": n, "owl": 1}), val_fraction, seed=0)
    for label in ("cat", "dog"):
        assert {it.split for it in out if it.label == label} == {"train", "validation"}
    assert len([it for it in out if it.label == "owl"]) == 1


def test_assign_splits_adding_files_never_moves_existing_ones() -> None:
    before = {it.name: it.split for it in assign_splits(items({"cat": 60, "dog": 60}), 0.2, 0)}
    grown = items({"cat": 60, "dog": 60}) + items({"cat": 90}, start=60)
    after = {it.name: it.split for it in assign_splits(grown, 0.2, 0)}
    assert {n: after[n] for n in before} == before


@pytest.mark.parametrize("seed", range(5))
def test_assign_splits_keeps_a_single_file_class_in_training(seed: int) -> None:
    out = assign_splits(items({"cat": 10, **{f"c{k}": 1 for k in range(50)}}), 0.99, seed)
    assert {it.split for it in out if it.label != "cat"} == {"train"}
    assert {it.split for it in out if it.label == "cat"} == {"train", "validation"}


def test_assign_splits_keeps_presplit_items() -> None:
    fixed = [Item("train/cat/1.jpg", "cat", "train"), Item("validation/dog/2.jpg", "dog", "validation")]
    out = assign_splits(fixed, 0.99, seed=0)
    assert out == fixed


# ----------------------------------------------------------------------------- decode


@pytest.mark.parametrize(("channels", "mode"), [(3, "RGB"), (1, "L")])
def test_decode_shape_and_dtype(channels: int, mode: str) -> None:
    data = encode(Image.new(mode, (30, 20), 128), "PNG")  # (W, H)
    out = decode(data, (10, 12), channels)
    assert out.shape == (10, 12, channels)
    assert out.dtype == np.uint8
    assert out.flags.writeable


def test_decode_size_none_keeps_the_stored_size() -> None:
    assert decode(encode(Image.new("RGB", (30, 20)), "PNG"), None).shape == (20, 30, 3)


def test_decode_grayscale_to_rgb_repeats_the_value() -> None:
    out = decode(encode(Image.new("L", (4, 4), 77), "PNG"), None)
    assert (out == 77).all()


def test_decode_rgb_to_one_channel() -> None:
    out = decode(encode(Image.new("RGB", (4, 4), (200, 200, 200)), "PNG"), None, channels=1)
    assert out.shape == (4, 4, 1)
    assert (out == 200).all()


def test_decode_palette() -> None:
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    assert decode(encode(im, "PNG"), None)[0, 0].tolist() == [255, 0, 0]


def test_decode_rgba_composites_on_white() -> None:
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[0, 0] = (255, 0, 0, 0)  # fully transparent red
    arr[0, 1] = (0, 0, 255, 255)  # opaque blue
    arr[1, 0] = (0, 0, 0, 128)  # half-transparent black
    out = decode(encode(Image.fromarray(arr, "RGBA"), "PNG"), None)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [0, 0, 255]
    assert np.abs(out[1, 0].astype(int) - 127).max() <= 1


def test_decode_palette_transparency_composites_on_white() -> None:
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 (transparent) is black
    assert decode(encode(im, "PNG", transparency=0), None)[0, 0].tolist() == [255, 255, 255]


def test_decode_cmyk_jpeg() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # red
    for size in (None, (8, 8)):
        r, g, b = decode(data, size)[4, 4].tolist()
        assert r > 230 and g < 25 and b < 25, size


def test_decode_16_bit_png_is_scaled_not_clipped() -> None:
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really 16 bits on disk
    out = decode(data, None)
    assert out[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize("size", [None, (40, 20), (8, 8)])
def test_decode_applies_exif_orientation(size: tuple[int, int] | None) -> None:
    """Stored 40 wide x 20 high, bright top-left; Orientation 6 = rotate 90 clockwise."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:6, :6] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode(encode(Image.fromarray(arr), "JPEG", exif=exif, quality=95), size)
    h, w = out.shape[:2]
    if size is None:
        assert (h, w) == (40, 20)  # now tall
    corner = max(1, h // 8), max(1, w // 8)
    assert out[: corner[0], -corner[1] :].mean() > 200  # the bright corner is top-right
    assert out[: corner[0], : corner[1]].mean() < 60
    assert out[-corner[0] :, -corner[1] :].mean() < 60


def test_decode_empty_file() -> None:
    with pytest.raises(ImageDecodeError, match="empty"):
        decode(b"", (8, 8))


def test_decode_random_bytes() -> None:
    data = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        decode(data, (8, 8))


@pytest.mark.parametrize("size", [None, (8, 8)])
def test_decode_truncated_jpeg(size: tuple[int, int] | None) -> None:
    data = jpeg_bytes()
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode(data[: len(data) // 2], size)


def test_decode_jpeg_truncated_in_its_header_is_reported_as_truncated() -> None:
    data = encode(Image.new("RGB", (24, 24), (10, 200, 30)), "JPEG")
    with pytest.raises(ImageDecodeError, match="^truncated image"):
        decode(data[: len(data) // 2], None)


def test_decode_gif_first_frame() -> None:
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert decode(data, None)[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("PNG", {}), ("BMP", {}), ("WEBP", {"lossless": True}), ("TIFF", {}), ("GIF", {})],
)
def test_decode_lossless_formats(fmt: str, options: dict[str, object]) -> None:
    arr = np.zeros((6, 10, 3), np.uint8)
    arr[:, :5] = (200, 40, 90)
    arr[:, 5:] = (10, 220, 30)
    out = decode(encode(Image.fromarray(arr), fmt, **options), None)
    assert out.shape == (6, 10, 3)
    assert np.array_equal(out, arr)


@pytest.mark.parametrize("side", [12, 24], ids=["warning-zone", "error-zone"])
def test_decode_decompression_bomb_guard(monkeypatch: pytest.MonkeyPatch, side: int) -> None:
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)  # 144 > limit; 576 > 2 x limit
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode(encode(Image.new("RGB", (side, side)), "PNG"), (8, 8))


# ----------------------------------------------------------------------------- load_dataset


def test_load_dataset_folder(tree: Path) -> None:
    ds = load(tree)
    assert ds.classes == ["cat", "dog"]
    assert not ds.presplit
    assert ds.size == (16, 16)
    for part in (ds.train, ds.validation):
        assert part.images.shape == (len(part), 16, 16, 3)
        assert part.images.dtype == np.uint8
        assert part.labels.dtype == np.int64
        assert part.classes == ["cat", "dog"]
    assert len(ds.train) + len(ds.validation) == 40
    total = {c: ds.train.counts()[c] + ds.validation.counts()[c] for c in ds.classes}
    assert total == {"cat": 20, "dog": 20}
    assert ds.skipped == []


def test_load_dataset_labels_match_pixels(tree: Path) -> None:
    """Toy cats are bright on the left, dogs on the right: labels must follow the pixels."""
    ds = load(tree)
    for part in (ds.train, ds.validation):
        left = part.images[:, :, :8].mean(axis=(1, 2, 3))
        right = part.images[:, :, 8:].mean(axis=(1, 2, 3))
        assert np.array_equal(part.labels, (right > left).astype(np.int64))


def test_load_dataset_classes_sorted(tmp_path: Path) -> None:
    ds = load(write_tree(tmp_path / "src", {"zebra": 3, "ant": 3, "moose": 3}))
    assert ds.classes == ["ant", "moose", "zebra"]
    for part in (ds.train, ds.validation):
        for name, label in zip(part.names, part.labels, strict=True):
            assert name.startswith(f"{ds.classes[int(label)]}/")


def test_load_dataset_kaggle_flat(tmp_path: Path) -> None:
    ds = load(write_tree(tmp_path / "flat", {"cat": 6, "dog": 6}, flat=True))
    assert ds.classes == ["cat", "dog"]
    assert len(ds.train) + len(ds.validation) == 12


def test_load_dataset_one_channel(tree: Path) -> None:
    ds = load_dataset(tree, ONE, channels=1, progress=False)
    assert ds.train.images.shape[1:] == (16, 16, 1)


def test_load_dataset_skips_bad_files_with_reasons(tree: Path) -> None:
    expected = add_bad_files(tree)
    ds = load(tree)
    reasons = {s.name: s.reason for s in ds.skipped}
    assert set(reasons) == set(expected)
    for name, word in expected.items():
        assert word in reasons[name].lower(), (name, reasons[name])
    assert len(ds.train) + len(ds.validation) == 40
    assert not set(expected) & set(ds.train.names + ds.validation.names)


def test_load_dataset_zip_equals_folder(tree: Path, tmp_path: Path) -> None:
    macosx = "__MACOSX/wrap/cat/._cat.0.jpg"
    zp = zip_tree(tree, tmp_path / "data.zip", prefix="wrap/", extra=[macosx])
    folder, zipped = load(tree), load(zp)
    assert zipped.classes == folder.classes
    assert all_rows(zipped) == all_rows(folder)
    assert [s.name for s in zipped.skipped] == [macosx]
    assert zipped.source == str(zp.resolve())


def test_load_dataset_zip_without_wrapper_splits_like_folder(tree: Path, tmp_path: Path) -> None:
    zipped, folder = load(zip_tree(tree, tmp_path / "data.zip")), load(tree)
    for split in ("train", "validation"):
        assert split_rows(zipped, split) == split_rows(folder, split)


def test_load_dataset_zip_with_wrapper_splits_like_folder(tree: Path, tmp_path: Path) -> None:
    zipped, folder = load(zip_tree(tree, tmp_path / "data.zip", prefix="wrap/")), load(tree)
    for split in ("train", "validation"):
        files = [row[:2] for row in split_rows(zipped, split)]
        assert files == [row[:2] for row in split_rows(folder, split)], split


def test_load_dataset_rereads_a_zip_replaced_at_the_same_path(tmp_path: Path) -> None:
    zp = tmp_path / "data.zip"
    zip_tree(write_tree(tmp_path / "a", {"cat": 3, "dog": 3}), zp)
    load(zp)
    zp.unlink()
    zip_tree(write_tree(tmp_path / "b", {"cat": 3, "dog": 3}, start=100), zp)
    ds = load(zp)
    assert len(ds.train) + len(ds.validation) == 6


def test_load_dataset_skips_a_corrupt_zip_member(tree: Path, tmp_path: Path) -> None:
    zp = tmp_path / "data.zip"
    with zipfile.ZipFile(zp, "w", zipfile.ZIP_STORED) as z:
        for f in sorted(tree.rglob("*.jpg")):
            z.writestr(f.relative_to(tree).as_posix(), f.read_bytes())
    raw = bytearray(zp.read_bytes())
    with zipfile.ZipFile(zp) as z:
        info = z.getinfo("cat/cat.0.jpg")
    raw[info.header_offset + 30 + len(info.filename) + len(info.extra) + 50] ^= 0xFF
    zp.write_bytes(bytes(raw))
    ds = load(zp)
    assert [s.name for s in ds.skipped] == ["cat/cat.0.jpg"]


def test_load_dataset_presplit_folder_keeps_its_split(tmp_path: Path) -> None:
    write_tree(tmp_path / "src" / "train", {"cat": 4, "dog": 4})
    write_tree(tmp_path / "src" / "validation", {"cat": 2, "dog": 3}, start=100)
    ds = load(tmp_path / "src", DataConfig(size=8, workers=1, val_fraction=0.9))
    assert ds.presplit
    assert ds.train.counts() == {"cat": 4, "dog": 4}
    assert ds.validation.counts() == {"cat": 2, "dog": 3}
    assert all(n.startswith("validation/") for n in ds.validation.names)


def test_load_dataset_class_folders_named_like_splits_folder_and_zip(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "vehicles", {"bus": 4, "car": 4, "train": 4})
    folder = load(src)
    zipped = load(zip_tree(src, tmp_path / "vehicles.zip", prefix="vehicles/"))
    assert folder.classes == zipped.classes == ["bus", "car", "train"]
    assert not folder.presplit and folder.skipped == []
    assert all_rows(zipped) == all_rows(folder) and len(all_rows(folder)) == 12


def test_load_dataset_ambiguous_tree_names_the_flags(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 4, "dog": 4}, flat=True)
    write_tree(src / "validation", {"cat": 2, "dog": 2}, flat=True, start=100)
    with pytest.raises(DataError, match="ambiguous layout: split folder validation/ beside") as exc:
        load(src)
    assert str(exc.value).startswith(f"{src.resolve()}: ") and "--layout split" in str(exc.value)
    ds = load(src, DataConfig(size=8, workers=1, layout="split"))
    assert ds.presplit and ds.classes == ["cat", "dog"]
    assert ds.train.counts() == {"cat": 4, "dog": 4} and ds.validation.counts() == {"cat": 2, "dog": 2}
    assert ds.origin["layout"] == "split"


def test_load_dataset_single_image_classes_train_and_none_left_for_validation(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 5, "dog": 5, **{f"c{k}": 1 for k in range(12)}})
    ds = load(src, DataConfig(size=8, workers=1, val_fraction=0.9))
    assert all(ds.train.counts()[f"c{k}"] == 1 for k in range(12))
    only_one = write_tree(tmp_path / "one", {f"c{k}": 1 for k in range(20)})
    with pytest.raises(DataError) as exc:
        load(only_one)
    assert str(exc.value) == (
        f"{only_one.resolve()}: no image left for validation: each of the 20 classes has a single image, "
        "which is kept for training"
    )


def test_load_dataset_multiprocess_matches_single_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = write_tree(tmp_path / "src", {"cat": 80, "dog": 80})
    monkeypatch.setenv("PAWLAB_CACHE_DIR", str(tmp_path / "cache-single"))
    single = load(tree, DataConfig(size=16, workers=1))
    contexts: list[str] = []
    real_get_context = workers_module.mp.get_context

    def spy(method: str | None = None) -> Any:
        contexts.append(str(method))
        return real_get_context(method)

    monkeypatch.setattr(workers_module.mp, "get_context", spy)
    monkeypatch.setenv("PAWLAB_CACHE_DIR", str(tmp_path / "cache-multi"))  # decode again
    multi = load(tree, DataConfig(size=16, workers=2))
    assert contexts, "the process pool was not used"
    for a, b in ((single.train, multi.train), (single.validation, multi.validation)):
        assert a.names == b.names
        assert np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.images, b.images)


def test_load_dataset_empty_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    with pytest.raises(DataError, match="no images") as exc:
        load(empty)
    assert str(empty.resolve()) in str(exc.value)


def test_load_dataset_one_class_only(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 4})
    with pytest.raises(DataError, match="1 class") as exc:
        load(src)
    assert str(src.resolve()) in str(exc.value)
    assert "'cat'" in str(exc.value)


def test_load_dataset_nonexistent_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="no such file") as exc:
        load(missing)
    assert str(missing) in str(exc.value)


def test_load_dataset_neither_folder_nor_zip(tmp_path: Path) -> None:
    f = tmp_path / "images.tar"
    f.write_bytes(b"not an archive pawlab reads")
    with pytest.raises(DataError, match="not a folder or a zip") as exc:
        load(f)
    assert str(f) in str(exc.value)


def test_load_dataset_unreadable_split(tmp_path: Path) -> None:
    write_tree(tmp_path / "src" / "train", {"cat": 3, "dog": 3})
    (tmp_path / "src" / "validation" / "cat").mkdir(parents=True)
    (tmp_path / "src" / "validation" / "cat" / "cat.1.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="validation split has no readable image"):
        load(tmp_path / "src")


# ----------------------------------------------------------------------------- prepare


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def counts_on_disk(out: Path) -> dict[str, dict[str, int]]:
    return {
        split: {c.name: len(pngs(c)) for c in sorted((out / split).iterdir())}
        for split in ("train", "validation")
    }


def test_prepare_writes_pngs_and_manifest(tree: Path, tmp_path: Path) -> None:
    bad = add_bad_files(tree)
    out = tmp_path / "out"
    report = prepare(tree, out, DataConfig(size=12, workers=1), progress=False, png=True)
    manifest = read_json(out / MANIFEST)
    assert manifest["classes"] == ["cat", "dog"]
    assert manifest["size"] == 12
    assert manifest["counts"] == counts_on_disk(out) == report.counts
    assert sum(sum(c.values()) for c in report.counts.values()) == 40
    assert {s["name"] for s in manifest["skipped"]} == set(bad)
    assert all(s["reason"] for s in manifest["skipped"])
    arrays = sorted(manifest["arrays"].values())
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # .lock is hidden
    assert visible == sorted([MANIFEST, "train", "validation", *arrays])
    for p in pngs(out):
        with Image.open(p) as im:
            assert (im.format, im.size, im.mode) == ("PNG", (12, 12), "RGB")


def test_prepare_round_trips_through_load_dataset(tree: Path, tmp_path: Path) -> None:
    """Loading the prepared folder gives the source's pixels, labels and split back."""
    config = DataConfig(size=12, workers=1)
    out = tmp_path / "out"
    prepare(tree, out, config, progress=False)
    source, prepared = load(tree, config), load(out, config)
    assert prepared.presplit
    assert prepared.classes == source.classes

    def by_stem(rows: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        return [(c, PurePosixPath(f).stem, px) for c, f, px in rows]

    for split in ("train", "validation"):
        assert by_stem(split_rows(prepared, split)) == by_stem(split_rows(source, split))


def test_prepare_rerun_replaces_cleanly(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare(tree, out, DataConfig(size=12, seed=0, val_fraction=0.5, workers=1), progress=False, png=True)
    (out / "train" / "cat" / "stale.png").write_bytes(b"left over")
    (out / "train" / "owl").mkdir()
    report = prepare(
        tree, out, DataConfig(size=8, seed=1, val_fraction=0.3, workers=1), progress=False, png=True
    )
    manifest = read_json(out / MANIFEST)
    assert manifest["size"] == 8 and manifest["seed"] == 1
    assert counts_on_disk(out) == report.counts == manifest["counts"]
    assert not (out / "train" / "cat" / "stale.png").exists()
    assert not (out / "train" / "owl").exists()
    for p in pngs(out):
        with Image.open(p) as im:
            assert im.size == (8, 8)


def test_prepare_refuses_non_empty_unprepared_folder(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.txt").write_text("do not delete")
    with pytest.raises(DataError, match="not a pawlab prepared folder") as exc:
        prepare(tree, out, ONE, progress=False)
    assert str(out.resolve()) in str(exc.value)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]


def test_prepare_into_existing_empty_folder(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    prepare(tree, out, ONE, progress=False)
    assert (out / MANIFEST).is_file()


def test_prepare_refuses_output_inside_source(tree: Path) -> None:
    with pytest.raises(DataError, match="inside the source"):
        prepare(tree, tree / "prepared", ONE, progress=False)
    assert not (tree / "prepared").exists()


def test_prepare_output_is_a_file(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    out.write_text("a file")
    with pytest.raises(OutputError, match="out.txt: not a folder"):
        prepare(tree, out, ONE, progress=False)


def test_prepare_keeps_a_presplit_source_split(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src / "train", {"cat": 4, "dog": 4})
    write_tree(src / "validation", {"cat": 3, "dog": 2}, start=100)
    out = tmp_path / "out"
    report = prepare(src, out, DataConfig(size=8, workers=1), progress=False, png=True)
    assert report.presplit
    val = {p.relative_to(out / "validation").as_posix() for p in pngs(out / "validation")}
    train = {p.relative_to(out / "train").as_posix() for p in pngs(out / "train")}
    assert val == {f"{c}/{c}.{i}.png" for c, n in (("cat", 3), ("dog", 2)) for i in range(100, 100 + n)}
    assert train == {f"{c}/{c}.{i}.png" for c in ("cat", "dog") for i in range(4)}


def test_prepare_zip_source(tree: Path, tmp_path: Path) -> None:
    zp = zip_tree(tree, tmp_path / "data.zip", prefix="wrap/")
    report = prepare(zp, tmp_path / "out", ONE, progress=False)
    assert report.source == str(zp.resolve())
    assert sum(sum(c.values()) for c in report.counts.values()) == 40


def test_prepare_names_colliding_stems_uniquely(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for label in ("cat", "dog"):
        for sub in ("a", "b"):
            (src / label / sub).mkdir(parents=True)
            for i in range(3):
                make_image(label, zlib.crc32(f"{label}{sub}{i}".encode())).save(
                    src / label / sub / f"{i}.jpg"
                )
    out = tmp_path / "out"
    report = prepare(src, out, DataConfig(size=8, workers=1), progress=False, png=True)
    assert len(pngs(out)) == sum(sum(c.values()) for c in report.counts.values()) == 12


def test_zip_entries_with_unsafe_paths_are_skipped_as_unsafe(tree: Path, tmp_path: Path) -> None:
    image = next(tree.rglob("*.jpg")).read_bytes()
    archive = zip_tree(tree, tmp_path / "src.zip")
    with zipfile.ZipFile(archive, "a") as z:
        for name in ("/tmp/cat/1.jpg", "../cat/2.jpg", "cat/../../3.jpg", "C:\\\\dog\\\\4.jpg"):
            z.writestr(name, image)
    ds = load(archive)
    assert ds.classes == load(tree).classes  # no class named after /tmp or C:
    unsafe = sorted(s.name for s in ds.skipped if s.reason.startswith("unsafe path"))
    assert len(unsafe) == 4, [(s.name, s.reason) for s in ds.skipped]


def test_a_prepare_that_did_not_finish_is_named_as_such(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare(tree, out, ONE, progress=False)
    (out / "manifest.json").unlink()  # as a prepare killed before its last step leaves it
    with pytest.raises(DataError, match="a prepare into this folder did not finish"):
        load(out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load(tmp_path / "empty")


def test_link_cycles_end_and_links_outside_are_not_followed(tree: Path, tmp_path: Path) -> None:
    plain = load(tree)
    for cls in ("cat", "dog"):
        (tree / cls / "up").symlink_to("..")  # a cycle in each class folder
    outside = tmp_path / "elsewhere"
    write_tree(outside, {"bird": 3})
    (tree / "bird").symlink_to(outside / "bird")  # would add a class
    (tree / "cat" / "stray.jpg").symlink_to(next((outside / "bird").iterdir()))
    ds = load(tree)
    assert ds.classes == plain.classes and len(ds.train) + len(ds.validation) == len(plain.train) + len(
        plain.validation
    )
    reasons = {s.name: s.reason for s in ds.skipped}
    assert "cycle" in reasons["cat/up/"] and "cycle" in reasons["dog/up/"]
    assert "outside the source" in reasons["bird/"] and "outside the source" in reasons["cat/stray.jpg"]
    followed = load_dataset(tree, DataConfig(size=16, workers=1, follow_links=True), progress=False)
    assert "bird" in followed.classes  # asked for: the link is followed, the cycles still end


def corrupt_exif_jpeg(seed: int) -> bytes:
    """A good JPEG whose EXIF block names a tag stored past its end (Pillow warns, then decodes)."""
    entry = struct.pack("<HHII", 0x010E, 2, 200, 1000)  # ImageDescription, ASCII, 200 bytes at 1000
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + entry + struct.pack("<I", 0)
    return encode(make_image("cat", seed), "JPEG", exif=b"Exif\x00\x00" + tiff)


def test_decoder_warnings_become_notes_and_are_never_printed(recwarn: pytest.WarningsRecorder) -> None:
    notes: list[str] = []
    image = decode(corrupt_exif_jpeg(1), (16, 16), notes=notes)
    assert image.shape == (16, 16, 3)
    assert len(notes) == 1 and "tag" in notes[0].lower() and "\n" not in notes[0]
    decode(corrupt_exif_jpeg(1), (16, 16))  # notes=None: dropped
    assert not recwarn.list


def test_prepare_records_decoder_warnings_as_notes_in_the_manifest(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 6, "dog": 6})
    (src / "cat" / "exif.jpg").write_bytes(corrupt_exif_jpeg(2))
    report = prepare(src, tmp_path / "packed", ONE, progress=False)
    assert [n["name"] for n in report.notes] == ["cat/exif.jpg"]
    assert "decoder warnings" in report.summary() and "cat/exif.jpg" in report.summary()
    again = prepare(src, tmp_path / "packed", ONE, progress=False)  # rows copied: the note stays
    assert again.up_to_date and again.notes == report.notes
    (src / "dog" / "dog.0.jpg").unlink()
    changed = prepare(src, tmp_path / "packed", ONE, progress=False)
    assert changed.reused > 0 and changed.notes == report.notes


def test_listing_a_folder_or_a_zip_counts_every_file_for_the_log(tmp_path: Path) -> None:
    from pawlab.data.sources import open_source

    src = write_tree(tmp_path / "src", {"cat": 3, "dog": 2})
    (src / "notes.txt").write_text("not an image, listed all the same")
    zipped = tmp_path / "src.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for path in sorted(src.rglob("*")):
            zf.write(path, path.relative_to(tmp_path).as_posix())
    for source in (open_source(src), open_source(zipped)):
        counted: list[int] = []
        entries = source.entries(counted.append)  # a progress bar's update
        assert sum(counted) == len(entries) == 6

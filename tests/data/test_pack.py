"""The packed cache: reuse, invalidation, interruption, --strict and --dedupe."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pawlab.config import DataConfig
from pawlab.data import datasets, load_dataset, prepare
from pawlab.data import pack as _pack
from pawlab.data.decode import to_channels
from pawlab.data.pack import MANIFEST, open_packed
from pawlab.errors import DataError
from tests.conftest import make_image, write_tree

CFG = DataConfig(size=12, workers=1)


def _rows(out: Path) -> dict[str, np.ndarray]:
    """name -> packed pixels, over both splits."""
    packed = open_packed(out)
    assert packed is not None
    return {
        n: np.array(img)
        for s in ("train", "validation")
        for n, img in zip(packed.names(s), packed.images(s), strict=True)
    }


def _splits(out: Path) -> dict[str, str]:
    m = json.loads((out / MANIFEST).read_text())
    return {f[0]: s for s in ("train", "validation") for f in m["files"][s]}


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*a: object, **k: object) -> None:
        raise AssertionError("decoded although nothing changed")

    monkeypatch.setattr(_pack, "decode", fail)


def _touch_new_content(path: Path, label: str, seed: int) -> None:
    make_image(label, seed=seed).save(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_second_prepare_of_unchanged_source_decodes_nothing(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = prepare(tree, tmp_path / "out", CFG, progress=False)
    assert first.decoded == 40 and not first.up_to_date
    _no_decoding(monkeypatch)
    again = prepare(tree, tmp_path / "out", CFG, progress=False)
    assert again.up_to_date and again.decoded == 0
    assert again.counts == first.counts


def test_training_data_is_read_from_the_cache(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = load_dataset(tree, CFG, progress=False)
    _no_decoding(monkeypatch)
    b = load_dataset(tree, CFG, progress=False)
    assert np.array_equal(a.train.images, b.train.images)
    assert a.validation.names == b.validation.names


def test_changed_file_is_decoded_again_and_only_it(tree: Path, tmp_path: Path) -> None:
    prepare(tree, tmp_path / "out", CFG, progress=False)
    changed = tree / "cat" / "cat.3.jpg"
    _touch_new_content(changed, "dog", seed=999)
    report = prepare(tree, tmp_path / "out", CFG, progress=False)
    assert report.decoded == 1 and report.reused == 39
    fresh_src = tmp_path / "copy"
    shutil.copytree(tree, fresh_src)
    prepare(fresh_src, tmp_path / "fresh", CFG, progress=False)
    incremental, fresh = _rows(tmp_path / "out"), _rows(tmp_path / "fresh")
    assert incremental.keys() == fresh.keys()
    for name in fresh:
        assert np.array_equal(incremental[name], fresh[name]), name


def test_added_and_removed_files(tree: Path, tmp_path: Path) -> None:
    prepare(tree, tmp_path / "out", CFG, progress=False)
    before = _splits(tmp_path / "out")
    write_tree(tree, {"cat": 1}, start=500)
    (tree / "dog" / "dog.0.jpg").unlink()
    report = prepare(tree, tmp_path / "out", CFG, progress=False)
    assert report.decoded == 1 and report.reused == 39
    after = _splits(tmp_path / "out")
    assert "dog/dog.0.jpg" not in after and "cat/cat.500.jpg" in after
    assert all(after[n] == s for n, s in before.items() if n in after)  # nothing moved


def test_new_seed_reuses_pixels(tree: Path, tmp_path: Path) -> None:
    prepare(tree, tmp_path / "out", CFG, progress=False)
    before = _splits(tmp_path / "out")
    report = prepare(tree, tmp_path / "out", DataConfig(size=12, workers=1, seed=7), progress=False)
    assert report.decoded == 0 and report.reused == 40
    assert _splits(tmp_path / "out") != before


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, name: str, calls: int) -> None:
    real = getattr(_pack, name)
    count = {"n": 0}

    def flaky(*args: Any) -> Any:
        count["n"] += 1
        if count["n"] > calls:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(_pack, name, flaky)


def test_interrupted_first_prepare_leaves_nothing_trusted(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _interrupt_after(monkeypatch, "_decode_into", 5)
    with pytest.raises(KeyboardInterrupt):
        prepare(tree, tmp_path / "out", CFG, progress=False)
    assert open_packed(tmp_path / "out") is None
    monkeypatch.undo()
    report = prepare(tree, tmp_path / "out", CFG, progress=False)
    assert report.decoded == 40
    m = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert sorted(p.name for p in (tmp_path / "out").glob("*.npy")) == sorted(m["arrays"].values())


def test_interrupted_update_keeps_the_previous_state(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepare(tree, tmp_path / "out", CFG, progress=False)
    old = _rows(tmp_path / "out")
    write_tree(tree, {"cat": 10, "dog": 10}, start=200)
    _interrupt_after(monkeypatch, "_decode_into", 3)
    with pytest.raises(KeyboardInterrupt):
        prepare(tree, tmp_path / "out", CFG, progress=False)
    still = _rows(tmp_path / "out")  # the old manifest and arrays, untouched
    assert still.keys() == old.keys()
    assert all(np.array_equal(still[n], old[n]) for n in old)
    monkeypatch.undo()
    report = prepare(tree, tmp_path / "out", CFG, progress=False)
    assert report.decoded == 20 and report.reused == 40


def test_interrupted_png_writing_is_redone(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _interrupt_after(monkeypatch, "_write_png", 4)
    with pytest.raises(KeyboardInterrupt):
        prepare(tree, tmp_path / "out", CFG, progress=False, png=True)
    assert open_packed(tmp_path / "out") is None  # the manifest says the PNG tree is unfinished
    monkeypatch.undo()
    report = prepare(tree, tmp_path / "out", CFG, progress=False, png=True)
    assert report.decoded == 0 and report.reused == 40
    assert len(list((tmp_path / "out").glob("*/*/*.png"))) == 40


def test_strict_turns_a_skip_into_a_failure(tree: Path, tmp_path: Path) -> None:
    (tree / "cat" / "cat.99.jpg").write_bytes(b"not a jpeg")
    (tree / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(DataError, match=r"--strict: 1 file\(s\) skipped, e.g. cat/cat.99.jpg"):
        prepare(tree, tmp_path / "out", CFG, progress=False, strict=True)
    assert not list((tmp_path / "out").glob("*.npy"))
    report = prepare(tree, tmp_path / "out", CFG, progress=False)
    assert {s["name"] for s in report.skipped} == {"cat/cat.99.jpg", ".DS_Store"}


def test_duplicates_reported_and_deduped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src / "train", {"cat": 5, "dog": 5})
    write_tree(src / "validation", {"cat": 3, "dog": 3}, start=100)
    shutil.copy(src / "train" / "cat" / "cat.2.jpg", src / "validation" / "cat" / "copy.jpg")
    report = prepare(src, tmp_path / "out", CFG, progress=False)
    assert report.duplicates == [{"validation": "validation/cat/copy.jpg", "train": "train/cat/cat.2.jpg"}]
    assert report.counts["validation"]["cat"] == 4
    assert "duplicates" in report.summary()
    deduped = prepare(src, tmp_path / "out2", CFG, progress=False, dedupe=True)
    assert deduped.counts["validation"]["cat"] == 3
    assert "validation/cat/copy.jpg" not in _rows(tmp_path / "out2")


def test_prepare_writes_only_arrays_by_default_and_trains_from_them(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepare(tree, tmp_path / "out", CFG, progress=False)
    assert not (tmp_path / "out" / "train").exists()
    _no_decoding(monkeypatch)
    ds = load_dataset(tmp_path / "out", CFG, progress=False)
    assert ds.presplit and len(ds.train) + len(ds.validation) == 40


def test_prepared_folder_at_another_size_keeps_its_split(tree: Path, tmp_path: Path) -> None:
    prepare(tree, tmp_path / "out", CFG, progress=False)
    ds = load_dataset(tmp_path / "out", DataConfig(size=8, workers=1), progress=False)
    assert ds.train.images.shape[1:] == (8, 8, 3)
    assert set(ds.validation.names) == {n for n, s in _splits(tmp_path / "out").items() if s == "validation"}


def test_layouts_are_cached_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path / "src" / "train", {"cat": 4, "dog": 4})
    write_tree(tmp_path / "src" / "validation", {"cat": 2, "dog": 2}, start=100)
    by_class = DataConfig(size=12, workers=1, layout="classes")
    assert load_dataset(tmp_path / "src", CFG, progress=False).classes == ["cat", "dog"]
    assert load_dataset(tmp_path / "src", by_class, progress=False).classes == ["train", "validation"]
    _no_decoding(monkeypatch)  # neither replaced the other's cache folder
    assert load_dataset(tmp_path / "src", CFG, progress=False).classes == ["cat", "dog"]
    assert load_dataset(tmp_path / "src", by_class, progress=False).classes == ["train", "validation"]


def test_a_file_read_into_another_split_is_a_change(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files and settings unchanged, but the rules that read them changed (a new pawlab): the
    prepared folder is stale; its pixels are reused."""
    first = prepare(tree, tmp_path / "out", CFG, progress=False)
    split_by_seed = datasets.assign_splits

    def swapped(items: Any, *args: Any) -> list[Any]:
        other = {"train": "validation", "validation": "train"}
        return [replace(it, split=other[str(it.split)]) for it in split_by_seed(items, *args)]

    monkeypatch.setattr(datasets, "assign_splits", swapped)
    again = prepare(tree, tmp_path / "out", CFG, progress=False)
    assert not again.up_to_date and again.decoded == 0 and again.reused == 40
    assert again.counts == {"train": first.counts["validation"], "validation": first.counts["train"]}


def test_prepared_folder_at_another_size_keeps_its_layout(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 4, "dog": 4}, flat=True)
    write_tree(src / "validation", {"cat": 2, "dog": 2}, flat=True, start=100)
    prepare(src, tmp_path / "out", DataConfig(size=12, workers=1, layout="split"), progress=False)
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["layout"] == "split"
    ds = load_dataset(tmp_path / "out", DataConfig(size=8, workers=1), progress=False)  # from src again
    assert ds.train.images.shape[1:] == (8, 8, 3)
    assert all(n.startswith("validation/") for n in ds.validation.names) and len(ds.validation) == 4


def test_to_channels_matches_pillow_luma() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ours = to_channels(rgb, 1)[..., 0].astype(int)
    pillow = np.asarray(Image.fromarray(rgb).convert("L")).astype(int)
    assert ours.shape == (16, 16) and np.abs(ours - pillow).max() <= 1


# ----------------------------------------------------------------------------- resize policy


def _wide_tree(root: Path, per_class: int = 5) -> Path:
    """Wide (48x16) images: a red left third, a green middle, a blue right third, plus noise."""
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([i, len(label)])
            arr = rng.integers(0, 40, (16, 48, 3), dtype=np.uint8)
            arr[:, :16, 0] += 200
            arr[:, 16:32, 1] += 200
            arr[:, 32:, 2] += 200
            Image.fromarray(arr).save(root / label / f"{label}.{i}.png")
    return root


def test_resize_policy_is_validated() -> None:
    from pawlab.errors import ConfigError

    assert DataConfig(resize="crop").resize == "crop"
    assert DataConfig().resize == "squash"
    with pytest.raises(ConfigError, match="resize") as err:
        DataConfig(resize="stretch")
    assert "stretch" in str(err.value)


def test_layout_is_validated() -> None:
    from pawlab.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        DataConfig(layout="flat")
    assert str(err.value) == "layout: must be one of auto, split, classes, got 'flat'"


def test_crop_and_squash_are_packed_apart(tmp_path: Path) -> None:
    src = _wide_tree(tmp_path / "src")
    squash = load_dataset(src, DataConfig(size=16, workers=1), progress=False)
    crop = load_dataset(src, DataConfig(size=16, workers=1, resize="crop"), progress=False)
    assert squash.train.names == crop.train.names  # the same split, other pixels
    assert squash.train.images.shape == crop.train.images.shape == (len(squash.train), 16, 16, 3)
    for s, c in zip(squash.train.images, crop.train.images, strict=True):
        assert not np.array_equal(s, c)
        assert c[..., 1].min() > 150 and c[..., 0].max() < 100  # the green middle only
        assert s[:, :4, 0].min() > 150 and s[:, -4:, 2].min() > 150  # red left, blue right
    # each is its own cache folder, and asking again reads it back unchanged
    again = load_dataset(src, DataConfig(size=16, workers=1, resize="crop"), progress=False)
    assert np.array_equal(again.train.images, crop.train.images)
    again = load_dataset(src, DataConfig(size=16, workers=1), progress=False)
    assert np.array_equal(again.train.images, squash.train.images)


def test_prepared_folder_records_resize_and_is_not_reused_for_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _wide_tree(tmp_path / "src")
    squash_cfg = DataConfig(size=16, workers=1)
    crop_cfg = DataConfig(size=16, workers=1, resize="crop")
    out = tmp_path / "out"
    first = prepare(src, out, squash_cfg, progress=False, png=False)
    assert first.decoded == 10
    assert json.loads((out / MANIFEST).read_text())["resize"] == "squash"
    squashed = _rows(out)
    # a squashed folder handed to a crop run: the crop is made from the original source
    from_prepared = load_dataset(out, crop_cfg, progress=False)
    assert from_prepared.presplit
    for name, img in zip(from_prepared.train.names, from_prepared.train.images, strict=True):
        assert not np.array_equal(img, squashed[name]), name
        assert img[..., 0].max() < 100  # no red: the centre was kept
    # preparing the same folder with crop decodes everything again (no pixels reused)
    second = prepare(src, out, crop_cfg, progress=False, png=False)
    assert second.decoded == 10 and second.reused == 0 and not second.up_to_date
    assert json.loads((out / MANIFEST).read_text())["resize"] == "crop"
    cropped = _rows(out)
    assert cropped.keys() == squashed.keys()
    assert all(not np.array_equal(cropped[n], squashed[n]) for n in cropped)
    assert all(
        np.array_equal(cropped[n], img)
        for n, img in zip(from_prepared.train.names, from_prepared.train.images, strict=True)
    )
    # and the same resize again is a cache hit
    _no_decoding(monkeypatch)
    third = prepare(src, out, crop_cfg, progress=False, png=False)
    assert third.up_to_date and third.decoded == 0
    ds = load_dataset(out, crop_cfg, progress=False)  # the prepared folder itself, as it is
    assert ds.presplit and all(
        np.array_equal(cropped[n], img) for n, img in zip(ds.train.names, ds.train.images, strict=True)
    )

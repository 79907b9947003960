from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from pawlab.data import cache
from pawlab.data.cache import ENTRY_MARKER, ROOT_MARKER, clear_cache, human, list_cache
from pawlab.data.pack import MANIFEST, PACK_FORMAT
from pawlab.errors import ConfigError
from tests.test_cli import pawlab


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache root of this test's own (``$PAWLAB_CACHE_DIR``), not yet made."""
    monkeypatch.setenv("PAWLAB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _fill(days_ago: float, suffix: str = "") -> dict[str, Path]:
    """A packed copy, a features entry and spec models made by pawlab, last used ``days_ago``."""
    made = {
        "packed data": cache.entry("packed data", f"src-64-abc{suffix}") / MANIFEST,
        "features": cache.entry("features", f"0123{suffix}") / cache.FEATURES_FILE,
        "spec models": cache.entry("spec models", f"digits-v1{suffix}") / "generator.safetensors",
    }
    when = time.time() - days_ago * 86400
    for path in made.values():
        path.write_bytes(b"x" * 100)
        for p in path.parent.iterdir():
            os.utime(p, (when, when))
    return made


def _user_files(root: Path, outside: Path) -> list[Path]:
    """What a user keeps in (or links from) a cache folder: every one must survive a clear."""
    (root / "Documents").mkdir(parents=True)
    (root / "Documents" / "thesis.tex").write_text("x")
    (root / "notes.txt").write_text("y")
    (outside / "photos").mkdir(parents=True)
    (outside / "photos" / "cat.jpg").write_text("z")
    (root / "photos").symlink_to(outside / "photos")  # a link to a folder of user files
    # a link standing where an entry would be, to a folder holding an entry's marker
    (outside / "fake-64-aaaa").mkdir()
    (outside / "fake-64-aaaa" / ENTRY_MARKER).write_text(json.dumps({"kind": "packed data"}))
    (root / "fake-64-aaaa").symlink_to(outside / "fake-64-aaaa")
    (root / "features").mkdir(exist_ok=True)
    (root / "features" / "mine").symlink_to(outside / "photos")
    (root / "features" / "notes.npy").write_text("mine")  # not an earlier pawlab's features
    return [
        root / "Documents" / "thesis.tex",
        root / "notes.txt",
        root / "photos",
        outside / "photos" / "cat.jpg",
        root / "fake-64-aaaa",
        outside / "fake-64-aaaa" / ENTRY_MARKER,
        root / "features" / "mine",
        root / "features" / "notes.npy",
    ]


def test_entries_are_marked_and_have_a_kind_a_size_and_a_last_use(root: Path) -> None:
    _fill(days_ago=3)
    assert (root / ROOT_MARKER).is_file()
    assert all(
        json.loads((e.path / ENTRY_MARKER).read_text())["kind"] == e.kind for e in list_cache().entries
    )
    entries = {e.kind: e for e in list_cache(root).entries}
    assert set(entries) == {"packed data", "features", "spec models"}
    assert all(e.size == 100 and 2.9 < e.age_days() < 3.1 for e in entries.values())
    assert {e.name for e in entries.values()} == {"src-64-abc", "features/0123", "spec/digits-v1"}
    assert list_cache(root / "missing").entries == []
    assert human(1536) == "1.5 KB" and human(12) == "12 B"


def test_clear_older_than_keeps_recent_entries_and_ones_in_use(root: Path) -> None:
    old = _fill(days_ago=30)
    new = _fill(days_ago=0, suffix="-new")
    busy = cache.entry("packed data", "busy-64-def")
    (busy / MANIFEST).write_text("{}")
    with open(busy / cache.LOCK, "w") as lock:
        for p in busy.iterdir():
            os.utime(p, (0, 0))
        fcntl.flock(lock, fcntl.LOCK_EX)  # a run is packing it
        cleared = clear_cache(7)
    assert [e.path for e in cleared.busy] == [busy] and busy.exists()
    assert {e.kind for e in cleared.removed} == set(old) and not any(p.exists() for p in old.values())
    assert all(p.exists() for p in new.values())
    assert len(clear_cache(None).removed) == 4 and not any(p.exists() for p in new.values())


def test_clear_removes_only_what_pawlab_made(root: Path, tmp_path: Path) -> None:
    made = _fill(days_ago=1)
    theirs = _user_files(root, tmp_path / "outside")
    listing = list_cache()
    assert {f.name for f in listing.foreign} == {
        "Documents/", "notes.txt", "photos", "fake-64-aaaa", "features/mine", "features/notes.npy"
    }  # fmt: skip
    assert {f.why for f in listing.foreign if f.name in ("photos", "fake-64-aaaa")} == {
        "a link: never followed"
    }
    assert listing.size == sum(e.size for e in listing.entries)  # foreign things never counted
    cleared = clear_cache(None)
    assert {e.kind for e in cleared.removed} == set(made)
    assert not any(p.exists() for p in made.values())
    assert all(p.exists() or p.is_symlink() for p in theirs), [p for p in theirs if not p.exists()]


def test_a_folder_that_is_not_a_pawlab_cache_is_refused(root: Path, tmp_path: Path) -> None:
    theirs = _user_files(root, tmp_path / "outside")
    with pytest.raises(ConfigError, match="not a pawlab cache .*nothing removed"):
        clear_cache(None)
    linked = tmp_path / "linked-cache"
    linked.symlink_to(root)  # $PAWLAB_CACHE_DIR a link to a folder of user files
    with pytest.raises(ConfigError, match="not a pawlab cache"):
        clear_cache(None, linked)
    assert all(p.exists() or p.is_symlink() for p in theirs)
    assert not (root / ROOT_MARKER).exists()


def _model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real pawlab model file, trained with a cache of its own (the tested one stays as made)."""
    from pawlab.config import TrainConfig
    from tests.conftest import train_tiny

    with monkeypatch.context() as m:
        m.setenv("PAWLAB_CACHE_DIR", str(tmp_path / "other-cache"))
        return train_tiny(tmp_path / "tiny", 4, TrainConfig(epochs=1))[1]


def test_a_cache_an_earlier_pawlab_made_gets_its_markers(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model_file(tmp_path, monkeypatch)

    packed = root / "cats-64-0123456789abcdef0123"
    packed.mkdir(parents=True)
    (packed / MANIFEST).write_text(json.dumps({"format": PACK_FORMAT, "version": 1, "complete": False}))
    (root / "features").mkdir()
    flat = root / "features" / f"{'ab' * 16}.npy"
    np.save(flat, np.zeros((2, 3), np.float32))
    spec = root / "spec" / "digits-v1"
    spec.mkdir(parents=True)
    (spec / "generator.safetensors").write_bytes(model.read_bytes())
    (root / "prepared").mkdir()  # a prepare's output named by its user: not an entry
    (root / "prepared" / MANIFEST).write_text(json.dumps({"format": PACK_FORMAT}))

    dry = clear_cache(None, dry_run=True)
    assert {e.kind for e in dry.removed} == {"packed data", "features", "spec models"}
    assert not (root / ROOT_MARKER).exists() and flat.exists()  # a dry run changes nothing
    listing = list_cache()
    assert (root / ROOT_MARKER).is_file() and (packed / ENTRY_MARKER).is_file()
    assert (spec / ENTRY_MARKER).is_file()
    assert not flat.exists()
    moved = root / "features" / ("ab" * 16)
    assert np.load(moved / cache.FEATURES_FILE).shape == (2, 3)
    assert [f.name for f in listing.foreign] == ["prepared/"]
    clear_cache(None)
    assert not packed.exists() and not moved.exists() and not spec.exists()
    assert (root / "prepared" / MANIFEST).exists()


def test_cache_commands(root: Path, tmp_path: Path) -> None:
    _fill(days_ago=10)
    theirs = _user_files(root, tmp_path / "outside")
    info = pawlab("cache", "info", env={"PAWLAB_CACHE_DIR": str(root)})
    assert info.returncode == 0 and "packed data" in info.stdout and "spec models" in info.stdout
    assert "not pawlab's, left alone (6):" in info.stdout and "notes.txt  (not made by pawlab)" in info.stdout
    dry = pawlab("cache", "clear", "--dry-run", env={"PAWLAB_CACHE_DIR": str(root)})
    assert "would remove 3 entries" in dry.stdout and (root / "src-64-abc").exists()
    cleared = pawlab("cache", "clear", "--older-than", 5, env={"PAWLAB_CACHE_DIR": str(root)})
    assert cleared.returncode == 0 and "removed 3 entries" in cleared.stdout
    assert "removed packed data" in cleared.stdout and "src-64-abc" in cleared.stdout
    assert not (root / "src-64-abc").exists() and not (root / "features" / "0123").exists()
    assert all(p.exists() or p.is_symlink() for p in theirs)
    for days in (-1, "nan", "inf", "-inf", "soon"):
        bad = pawlab("cache", "clear", "--older-than", days, env={"PAWLAB_CACHE_DIR": str(root)})
        assert bad.returncode == 2 and "--older-than" in bad.stderr, bad.stderr


def test_clear_of_a_folder_of_user_files_is_one_line_and_removes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "h"
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "thesis.tex").write_text("x")
    (home / "notes.txt").write_text("y")
    for where in (home, tmp_path / "link"):
        if where != home:
            where.symlink_to(home)
        out = pawlab("cache", "clear", env={"PAWLAB_CACHE_DIR": str(where)})
        assert out.returncode == 2 and out.stderr.count("\n") == 1
        assert f"pawlab cache: error: {where}: not a pawlab cache" in out.stderr
    assert (home / "Documents" / "thesis.tex").exists() and (home / "notes.txt").exists()


def test_a_users_model_folder_under_spec_is_never_taken_for_an_entry(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model_file(tmp_path, monkeypatch)
    mine = root / "spec" / "mymodels"
    mine.mkdir(parents=True)
    (mine / "my-classifier.safetensors").write_bytes(model.read_bytes())
    (mine / "NOTES.md").write_text("mine")
    digits = root / "spec" / "digits-v1"  # the digit models' folder, with a user's file in it
    digits.mkdir()
    (digits / "generator.safetensors").write_bytes(model.read_bytes())
    (digits / "NOTES.md").write_text("mine")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    info = pawlab("cache", "info")  # changes nothing on disk
    assert info.returncode == 0 and "not a pawlab cache" in info.stdout
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    with pytest.raises(ConfigError, match="not a pawlab cache"):
        clear_cache(None)
    assert (mine / "NOTES.md").exists() and (digits / "NOTES.md").exists()


def test_an_earlier_pawlabs_features_are_adopted_into_the_cache_they_are_in(
    root: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    (other / "features").mkdir(parents=True)
    np.save(other / "features" / f"{'cd' * 16}.npy", np.zeros((1, 2), np.float32))
    (entry,) = list_cache(other).entries  # a root named, not $PAWLAB_CACHE_DIR
    assert entry.path == other / "features" / ("cd" * 16) and (entry.path / cache.FEATURES_FILE).is_file()
    assert not root.exists()

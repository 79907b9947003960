from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from pawlab.data.cache import cache_entries, clear_cache, human
from pawlab.data.pack import cache_root
from tests.test_cli import pawlab


def _fill(root: Path, days_ago: float) -> dict[str, Path]:
    """A packed copy, a features file and spec models, last used ``days_ago``."""
    made = {
        "packed": root / "src-64-abc" / "manifest.json",
        "features": root / "features" / "0123.npy",
        "spec": root / "spec" / "digits-v1" / "generator.safetensors",
    }
    when = time.time() - days_ago * 86400
    for path in made.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 100)
        os.utime(path, (when, when))
    return made


def test_entries_have_a_kind_a_size_and_a_last_use(tmp_path: Path) -> None:
    _fill(tmp_path, days_ago=3)
    entries = {e.kind: e for e in cache_entries(tmp_path)}
    assert set(entries) == {"packed data", "features", "spec models"}
    assert all(e.size == 100 and 2.9 < e.age_days() < 3.1 for e in entries.values())
    assert cache_entries(tmp_path / "missing") == []
    assert human(1536) == "1.5 KB" and human(12) == "12 B"


def test_clear_older_than_keeps_recent_entries_and_ones_in_use(tmp_path: Path) -> None:
    old = _fill(tmp_path / "c", days_ago=30)
    new = {k: p.parent.with_name(p.parent.name + "-new") / p.name for k, p in old.items()}
    for path in new.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"y")
    busy = tmp_path / "c" / "busy-64-def"
    busy.mkdir()
    (busy / "manifest.json").write_text("{}")
    os.utime(busy / "manifest.json", (0, 0))
    with open(busy / ".lock", "w") as lock:
        os.utime(busy / ".lock", (0, 0))
        fcntl.flock(lock, fcntl.LOCK_EX)  # a run is packing it
        removed, kept = clear_cache(7, tmp_path / "c")
    assert {e.path for e in kept} == {busy} and busy.exists()
    assert (
        not old["packed"].parent.exists() and not old["features"].exists() and not old["spec"].parent.exists()
    )
    assert all(p.exists() for p in new.values())
    removed, _ = clear_cache(None, tmp_path / "c")
    assert len(removed) == 4 and not any(p.exists() for p in new.values())


def test_cache_commands(tmp_path: Path) -> None:
    root = cache_root()  # the test session's own cache (conftest)
    _fill(root, days_ago=10)
    info = pawlab("cache", "info")
    assert info.returncode == 0 and "packed data" in info.stdout and "spec models" in info.stdout
    cleared = pawlab("cache", "clear", "--older-than", 5)
    assert cleared.returncode == 0 and "removed" in cleared.stdout
    assert not (root / "src-64-abc").exists()
    assert not (root / "features" / "0123.npy").exists()
    assert pawlab("cache", "clear", "--older-than", -1).returncode == 2

"""The user cache (`pawlab.data.pack.cache_root`): what is in it and clearing it, as
``pip cache`` does. Entries are the packed copies of sources (a folder each), a frozen
backbone's cached features (a file each) and the model specs' digit models (a folder each).
An entry's last use is the newest access or change time among its files."""

from __future__ import annotations

import fcntl
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pawlab.data.pack import cache_root

DAY = 86400.0


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    kind: str  # "packed data", "features", "spec models" or "other"
    size: int  # bytes
    last_used: float  # seconds since the epoch

    def age_days(self, now: float | None = None) -> float:
        return ((now or time.time()) - self.last_used) / DAY


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]


def _entry(path: Path, kind: str) -> CacheEntry:
    stats = [p.stat() for p in _files(path)] or [path.stat()]
    return CacheEntry(
        path, kind, sum(s.st_size for s in stats), max(max(s.st_atime, s.st_mtime) for s in stats)
    )


def cache_entries(root: Path | None = None) -> list[CacheEntry]:
    """Every entry of the cache, largest first."""
    root = root or cache_root()
    if not root.is_dir():
        return []
    entries = []
    for child in sorted(root.iterdir()):
        if child.name == "features" and child.is_dir():
            entries += [_entry(p, "features") for p in sorted(child.iterdir())]
        elif child.name == "spec" and child.is_dir():
            entries += [_entry(p, "spec models") for p in sorted(child.iterdir())]
        else:
            entries.append(_entry(child, "packed data" if (child / "manifest.json").exists() else "other"))
    return sorted(entries, key=lambda e: -e.size)


def _remove(entry: CacheEntry) -> bool:
    """Remove an entry unless a run holds its lock (a packed copy being written)."""
    lock = entry.path / ".lock"
    if not lock.exists():
        if entry.path.is_dir():
            shutil.rmtree(entry.path)
        else:
            entry.path.unlink(missing_ok=True)
        return True
    with open(lock) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        shutil.rmtree(entry.path)
    return True


def clear_cache(
    older_than_days: float | None = None, root: Path | None = None
) -> tuple[list[CacheEntry], list[CacheEntry]]:
    """Remove the entries not used for ``older_than_days`` (all with None): (removed, in use
    and kept)."""
    now = time.time()
    removed: list[CacheEntry] = []
    busy: list[CacheEntry] = []
    for entry in cache_entries(root):
        if older_than_days is not None and entry.age_days(now) < older_than_days:
            continue
        (removed if _remove(entry) else busy).append(entry)
    return removed, busy


def human(size: int) -> str:
    """``1.5 GB``, ``240.0 KB``, ``12 B``."""
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


__all__ = ["CacheEntry", "cache_entries", "clear_cache", "human"]

"""Readers for image sources: a folder and a zip behind one interface.

A source lists its files as relative POSIX names and returns their bytes; everything above
(labelling, splitting, decoding) works on names and bytes only, so folders and zips behave
identically. Sources are cheap to re-open by path, which is how worker processes get theirs.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from pawlab.errors import DataError


@dataclass(frozen=True)
class Entry:
    """One file of a source: its relative POSIX name, byte size and modification time."""

    name: str
    size: int
    mtime: float


OUTSIDE = "a link leading outside the source: not followed (--follow-links follows it)"
REPEATED = "a link to a folder listed already (a cycle or a duplicate): not followed"
Tick = Callable[[int], object]  # told how many more files were listed (a progress bar's ``update``)


def _no_tick(n: int) -> None:
    pass


class FolderSource:
    """A folder, walked so that each real folder is entered once (by device and inode: a link
    cycle ends), and links leading outside it are not followed unless ``follow_links``; what
    was not followed is in ``skips`` (name, reason) after `entries`."""

    kind = "folder"

    def __init__(self, path: Path, follow_links: bool = False) -> None:
        self.path, self.follow_links = path, follow_links
        self.skips: list[tuple[str, str]] = []

    def _outside(self, full: str) -> bool:
        if self.follow_links or not os.path.islink(full):
            return False
        real, root = os.path.realpath(full), os.path.realpath(self.path)
        return real != root and not real.startswith(root + os.sep)

    def _folders(self, root: str, prefix: str, dirs: list[str], seen: set[tuple[int, int]]) -> list[str]:
        """The subfolders of ``root`` to enter: real ones first, so that a link never stands
        in for the folder it points to."""
        keep = []
        for d in sorted(dirs, key=lambda d: (os.path.islink(os.path.join(root, d)), d)):
            full = os.path.join(root, d)
            reason = OUTSIDE if self._outside(full) else None
            if reason is None:
                try:
                    st = os.stat(full)
                except OSError as exc:
                    self.skips.append((prefix + d + "/", f"unreadable folder ({exc.strerror})"))
                    continue
                reason = REPEATED if (st.st_dev, st.st_ino) in seen else None
                seen.add((st.st_dev, st.st_ino))
            if reason is None:
                keep.append(d)
            else:
                self.skips.append((prefix + d + "/", reason))
        return sorted(keep)

    def entries(self, tick: Tick = _no_tick) -> list[Entry]:
        """Every file, in name order within each folder; ``tick(1)`` after each (a flat folder
        of 25,000 photos is one folder)."""
        out: list[Entry] = []
        self.skips = []
        top = os.stat(self.path)
        seen = {(top.st_dev, top.st_ino)}
        # plain strings, not Path objects: 25,000 files are listed in a fifth of the time
        for root, dirs, files in os.walk(self.path, followlinks=True):
            rel_root = os.path.relpath(root, self.path).replace(os.sep, "/")
            prefix = "" if rel_root == "." else rel_root + "/"
            dirs[:] = self._folders(root, prefix, dirs, seen)
            for fname in sorted(files):
                tick(1)
                full = os.path.join(root, fname)
                if self._outside(full):
                    self.skips.append((prefix + fname, OUTSIDE))
                    continue
                try:
                    st = os.stat(full)
                except OSError:  # dangling link: listed so that it is reported, not lost
                    out.append(Entry(prefix + fname, -1, 0.0))
                    continue
                out.append(Entry(prefix + fname, st.st_size, st.st_mtime))
        return out

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()


class ZipSource:
    """A zip read in place: no extraction."""

    kind = "zip"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.skips: list[tuple[str, str]] = []  # a zip has no links
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{path}: not a readable zip file ({exc})") from None

    def entries(self, tick: Tick = _no_tick) -> list[Entry]:
        """Every file, in name order (the zip's directory is read at once: ``tick`` once)."""
        out = []
        for info in self._zip.infolist():
            if info.is_dir():
                continue
            mtime = datetime(*info.date_time).timestamp()
            out.append(Entry(info.filename, info.file_size, mtime))
        out.sort(key=lambda e: e.name)
        tick(len(out))
        return out

    def read(self, name: str) -> bytes:
        return self._zip.read(name)


Source = FolderSource | ZipSource  # what `open_source` returns


def open_source(path: str | os.PathLike[str], follow_links: bool = False) -> Source:
    """Open a folder or a ``.zip`` as a source; a clear error for anything else.
    ``follow_links``: a folder's links to places outside it are followed too."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.is_dir():
        return FolderSource(p.resolve(), follow_links)
    if zipfile.is_zipfile(p):
        return ZipSource(p.resolve())
    raise DataError(f"{p}: not a folder or a zip file")


def source_stamp(path: Path) -> tuple[int, int]:
    """(size, mtime in ns) of a source path: a rewritten zip gets a new stamp."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@lru_cache(maxsize=8)
def cached_source(path: str, stamp: tuple[int, int]) -> Source:
    """Per-process cache, so that a worker opens a zip once, not once per file; ``stamp``
    (see `source_stamp`) makes a zip replaced at the same path open afresh."""
    return open_source(path)


def read_entry(path: str, stamp: tuple[int, int], name: str) -> bytes | str:
    """A file's bytes from the (per-process cached) source at ``path``, or why it cannot be read."""
    try:
        return cached_source(path, stamp).read(name)
    except (OSError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"unreadable file ({reason})"

"""Readers for image sources: a folder and a zip behind one interface.

A source lists its files as relative POSIX names and returns their bytes; everything above
(labelling, splitting, decoding) works on names and bytes only, so folders and zips behave
identically. Sources are cheap to re-open by path, which is how worker processes get theirs.
"""

from __future__ import annotations

import os
import zipfile
import zlib
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


class FolderSource:
    kind = "folder"

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[Entry]:
        out: list[Entry] = []
        # plain strings, not Path objects: 25,000 files are listed in a fifth of the time
        for root, dirs, files in os.walk(self.path, followlinks=True):
            dirs.sort()
            rel_root = os.path.relpath(root, self.path).replace(os.sep, "/")
            prefix = "" if rel_root == "." else rel_root + "/"
            for fname in sorted(files):
                try:
                    st = os.stat(os.path.join(root, fname))
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
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{path}: not a readable zip file ({exc})") from None

    def entries(self) -> list[Entry]:
        out = []
        for info in self._zip.infolist():
            if info.is_dir():
                continue
            mtime = datetime(*info.date_time).timestamp()
            out.append(Entry(info.filename, info.file_size, mtime))
        out.sort(key=lambda e: e.name)
        return out

    def read(self, name: str) -> bytes:
        return self._zip.read(name)


Source = FolderSource | ZipSource  # what `open_source` returns


def open_source(path: str | os.PathLike[str]) -> Source:
    """Open a folder or a ``.zip`` as a source; a clear error for anything else."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.is_dir():
        return FolderSource(p.resolve())
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

"""Whole-or-nothing file writes: a temporary file beside the target, renamed into place; and
appends of whole records."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object], *, fsync: bool = False) -> None:
    """``write(tmp)`` writes a temporary file beside ``path``, which then replaces ``path``:
    readers see the old file or the new one, never part of it. On an error ``path`` is as it
    was and the temporary file is gone."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = False) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data), fsync=fsync)


def atomic_write_text(path: Path, text: str, *, fsync: bool = False) -> None:
    atomic_write_bytes(path, text.encode(), fsync=fsync)


def write_all(fd: int, data: bytes) -> None:
    """Every byte, or an error: a short write (a full disk) must not leave half a record that
    the next ones would be appended to."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]

"""Whole-or-nothing file writes: a temporary file beside the target, renamed into place; and
appends of whole records."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pawlab.errors import OutputError


def atomic_write(path: Path, write: Callable[[Path], object], *, fsync: bool = False) -> None:
    """``write(tmp)`` writes a temporary file beside ``path``, which then replaces ``path``:
    readers see the old file or the new one, never part of it. On an error ``path`` is as it
    was and the temporary file is gone."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # as a plain open() would (safetensors makes files 0600)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        raise named(exc, path) from None
    finally:
        tmp.unlink(missing_ok=True)


def named(exc: OSError, path: str | os.PathLike[str]) -> OSError:
    """``exc`` naming ``path`` (the file the user knows, not a temporary one beside it) when it
    names no file or a temporary one: a failed ``write`` on a descriptor names nothing."""
    if exc.filename is not None and not str(exc.filename).endswith(".tmp"):
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


def _umask() -> int:
    """The process's umask (read by setting it, so set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = False) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data), fsync=fsync)


def atomic_write_text(path: Path, text: str, *, fsync: bool = False) -> None:
    atomic_write_bytes(path, text.encode(), fsync=fsync)


def write_all(fd: int, data: bytes, path: str | os.PathLike[str]) -> None:
    """Every byte, or none and an error naming ``path`` (the file of ``fd``): after a short
    write (a full disk) the file is cut back to where it was, so no half record stays for the
    next ones to be appended to."""
    start = os.lseek(fd, 0, os.SEEK_END)
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        os.ftruncate(fd, start)
        raise named(exc, path) from None


def _writable_folder(folder: Path, what: str) -> None:
    """``folder`` is one, or can be made: its nearest existing ancestor is a folder this
    process can create files in. Nothing is created."""
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor or "."))
    if not existing.is_dir():
        raise OutputError(f"{existing}: not a folder, so the {what} cannot go there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{existing}: cannot write the {what} there (read-only or no permission)")


def check_output_file(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Before any work: ``path`` can be written as a file (it is not a folder, and its folder
    exists or can be made, in a writable place); a one-line `OutputError` otherwise."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{p}: is a folder; the {what} needs a file name (e.g. {p / 'model.safetensors'})")
    _writable_folder(p.parent if str(p.parent) else Path("."), what)
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputError(f"{p}: cannot replace the {what} (read-only)")
    return p


def check_output_folder(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Before any work: ``path`` is, or can be made, a writable folder."""
    p = Path(path)
    _writable_folder(p, what)
    return p

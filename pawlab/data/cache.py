"""The user cache: where it is, making its entries, listing and clearing them (as ``pip cache``
and ``huggingface-cli delete-cache`` do).

    ROOT/                      $PAWLAB_CACHE_DIR, else $XDG_CACHE_HOME/pawlab, ~/.cache/pawlab
        .pawlab-cache          the root's marker: pawlab made entries here
        <source>-<size>-<key>/ a packed copy of a source ("packed data")
        features/<key>/        a frozen backbone's features of one set of images ("features")
        spec/digits-v1/        the model specs' digit models ("spec models")
        runtimes/<digest>/     a model file's ONNX graphs and fastest routes per CPU ("runtimes")
        runtimes/trunk-<key>/  a frozen backbone's fastest features route per CPU ("runtimes")

Every entry is a folder holding the marker `ENTRY_MARKER`, written when pawlab makes it.
`clear_cache` removes only entries it can prove are pawlab's: a regular (never a linked)
folder whose marker names its kind. Anything else in the cache (a user's files, links,
folders of unknown form) is foreign: listed, never counted, never followed, never removed.
A root without its marker is refused, unless it holds entries an earlier pawlab made without
markers, recognised by their own formats (`_legacy_kind`); those get their markers then.
An entry's last use is the newest access or change time among its files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from pawlab.atomic import atomic_write_text
from pawlab.data.pack import MANIFEST, PACK_FORMAT
from pawlab.errors import ConfigError

DAY = 86400.0
ROOT_MARKER = ".pawlab-cache"
ENTRY_MARKER = ".pawlab-entry"
LOCK = ".lock"  # held while a run writes a packed copy (`pawlab.data.pack.locked`)
EntryKind = Literal["packed data", "features", "spec models", "runtimes"]
ENTRY_KINDS: tuple[str, ...] = get_args(EntryKind)
# where each kind's entries live below the root ("" is the root itself)
CONTAINERS: dict[str, str] = {
    "packed data": "",
    "features": "features",
    "spec models": "spec",
    "runtimes": "runtimes",
}
FEATURES_FILE = "features.npy"  # a features entry's array
# before markers: features/<key>.npy, and packed copies named <source>-<size>[-<resize>]-<key>
_LEGACY_FEATURES = re.compile(r"[0-9a-f]{32}\.npy")
_LEGACY_PACKED = re.compile(r".*-[0-9]+(-[a-z]+)?-[0-9a-f]{20}")  # as datasets._cached_copy names them
_NPY_MAGIC = b"\x93NUMPY"


def cache_root() -> Path:
    """Where the cache is: ``$PAWLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/pawlab``, else
    ``~/.cache/pawlab``. Its entries may be cleared at any time (`clear_cache`)."""
    env = os.environ.get("PAWLAB_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pawlab"


def entry(kind: EntryKind, name: str, root: Path | None = None) -> Path:
    """The folder of the entry ``name`` of ``kind`` in the cache at ``root`` (default:
    `cache_root`), made with its marker (and the root's) if it is new; it may already hold
    what an earlier run cached."""
    root = root or cache_root()
    path = root / CONTAINERS[kind] / name if CONTAINERS[kind] else root / name
    path.mkdir(parents=True, exist_ok=True)
    _mark_root(root)
    if _marked_kind(path) is None:
        _mark(path, kind)
    return path


def _mark_root(root: Path) -> None:
    if not _is_regular(root / ROOT_MARKER):
        atomic_write_text(root / ROOT_MARKER, json.dumps({"pawlab": "cache"}) + "\n")


def _mark(path: Path, kind: str) -> None:
    atomic_write_text(path / ENTRY_MARKER, json.dumps({"kind": kind, "made": time.time()}) + "\n")


def _is_regular(path: Path) -> bool:
    """A regular file, not a link to one (nor a FIFO or device a read would hang on)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _is_folder(path: Path) -> bool:
    """A real folder, not a link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _marked_kind(path: Path) -> str | None:
    """The kind ``path``'s marker names, if ``path`` is a real folder with a valid marker."""
    marker = path / ENTRY_MARKER
    if not (_is_folder(path) and _is_regular(marker)):
        return None
    try:
        record = json.loads(marker.read_bytes()[:4096])
    except (OSError, ValueError):
        return None
    kind = record.get("kind") if isinstance(record, dict) else None
    return kind if kind in ENTRY_KINDS else None


# ----------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    kind: str  # one of `ENTRY_KINDS`
    size: int  # bytes
    last_used: float  # seconds since the epoch

    @property
    def name(self) -> str:
        """The entry's path below the root (``features/<key>``)."""
        container = CONTAINERS[self.kind]
        return f"{container}/{self.path.name}" if container else self.path.name

    def age_days(self, now: float | None = None) -> float:
        return ((now or time.time()) - self.last_used) / DAY


@dataclass(frozen=True)
class Foreign:
    """Something in the cache pawlab did not make (or cannot prove it made): left alone."""

    name: str  # below the root; a folder ends with "/"
    why: str


@dataclass(frozen=True)
class CacheListing:
    root: Path
    is_cache: bool  # the root has its marker, or entries pawlab made; False: nothing is removed
    entries: list[CacheEntry] = field(default_factory=list)  # largest first
    foreign: list[Foreign] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)


def _walk_stats(path: Path) -> Iterator[os.stat_result]:
    """``lstat`` of every file below ``path`` but its marker and lock (reading a marker would
    make the entry look used); links are counted, never followed."""
    for folder, _, files in os.walk(path):  # os.walk does not enter linked folders
        for name in files:
            if folder == str(path) and name in (ENTRY_MARKER, LOCK):
                continue
            try:
                yield os.lstat(os.path.join(folder, name))
            except OSError:  # removed while listed
                continue


def _entry(path: Path, kind: str) -> CacheEntry:
    stats = list(_walk_stats(path)) or [os.lstat(path)]
    return CacheEntry(
        path, kind, sum(s.st_size for s in stats), max(max(s.st_atime, s.st_mtime) for s in stats)
    )


def _foreign_reason(path: Path) -> str:
    if os.path.islink(path):
        return "a link: never followed"
    return "not made by pawlab"


def _legacy_kind(path: Path, kind: str) -> str | None:
    """``kind`` when ``path`` (a real folder, or a flat features file) is, by its own format,
    an entry an earlier pawlab made before entries had markers; else None."""
    if kind == "packed data":
        if not (_LEGACY_PACKED.fullmatch(path.name) and _is_regular(path / MANIFEST)):
            return None
        try:
            manifest = json.loads((path / MANIFEST).read_bytes())
        except (OSError, ValueError, RecursionError):
            return None
        return kind if isinstance(manifest, dict) and manifest.get("format") == PACK_FORMAT else None
    if kind == "features":
        if not (_is_regular(path) and _LEGACY_FEATURES.fullmatch(path.name)):
            return None
        with open(path, "rb") as fh:
            return kind if fh.read(len(_NPY_MAGIC)) == _NPY_MAGIC else None
    if kind == "runtimes":  # none made before markers
        return None
    return kind if _holds_model_file(path) else None


_LEGACY_SPEC = "digits-v1"  # the one folder an earlier pawlab trained the specs' models into
_LEGACY_SPEC_FILES = {"discriminator.safetensors", "guide.safetensors", "generator.safetensors"}


def _holds_model_file(folder: Path) -> bool:
    """``spec/digits-v1`` holding the digit models (a pawlab model file among them) and nothing
    else but their run folders: what `pawlab.spec.training.train_digits` writes."""
    from pawlab.checkpoint import read_meta  # torch: only for a cache that predates markers
    from pawlab.errors import PawlabError

    if folder.name != _LEGACY_SPEC or not _is_folder(folder):
        return False
    names = {p.name for p in folder.iterdir()}
    if not names <= _LEGACY_SPEC_FILES | {"discriminator-run", "guide-run", "generator-run"}:
        return False
    for name in sorted(names & _LEGACY_SPEC_FILES):
        if _is_regular(folder / name):
            try:
                read_meta(folder / name)
                return True
            except PawlabError:
                continue
    return False


def adopt_legacy_features(flat: Path) -> Path:
    """Move an earlier pawlab's ``features/<key>.npy`` into its entry folder, marked; the
    entry's folder."""
    folder = entry("features", flat.name.removesuffix(".npy"), root=flat.parent.parent)
    with contextlib.suppress(FileNotFoundError):  # another process moved it first
        os.replace(flat, folder / FEATURES_FILE)
    return folder


def _candidates(root: Path) -> Iterator[tuple[Path, str]]:
    """Each child of the root, and of its real ``features/`` and ``spec/`` folders, with the
    kind of entry it would be."""
    containers = {name: kind for kind, name in CONTAINERS.items() if name}
    for child in sorted(root.iterdir()):
        if child.name == ROOT_MARKER:
            continue
        kind = containers.get(child.name)
        if kind is not None and _is_folder(child):
            yield from ((p, kind) for p in sorted(child.iterdir()))
        else:
            yield child, "packed data"


def list_cache(root: Path | None = None, *, adopt: bool = True) -> CacheListing:
    """What the cache at ``root`` (default: `cache_root`) holds. ``adopt``: entries an earlier
    pawlab made without markers get them (and the root its own)."""
    root = root or cache_root()
    if not root.exists():
        return CacheListing(root, is_cache=True)
    if not root.is_dir():
        raise ConfigError(f"{root}: the pawlab cache must be a folder, and this is a file")
    entries, foreign, legacy = [], [], []
    for path, kind in _candidates(root):
        name = str(path.relative_to(root)) + ("/" if _is_folder(path) else "")
        if _marked_kind(path) == kind:
            entries.append(_entry(path, kind))
        elif os.path.islink(path) or _legacy_kind(path, kind) is None:
            foreign.append(Foreign(name, _foreign_reason(path)))
        else:
            legacy.append((path, kind))
    if adopt:
        for path, kind in legacy:
            if kind == "features":
                path = adopt_legacy_features(path)
            else:
                _mark(path, kind)
            entries.append(_entry(path, kind))
    else:
        entries += [_entry(path, kind) for path, kind in legacy]
    is_cache = _is_regular(root / ROOT_MARKER) or bool(entries) or not foreign
    if adopt and entries:
        _mark_root(root)
    return CacheListing(root, is_cache, sorted(entries, key=lambda e: -e.size), foreign)


# ----------------------------------------------------------------------------- clearing


def check_days(value: float) -> float:
    """``value`` if it is a finite number of days >= 0, else a `ConfigError`."""
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"--older-than: must be a finite number of days >= 0, got {value}")
    return value


def _remove(e: CacheEntry) -> bool:
    """Remove an entry unless a run holds its lock (a packed copy being written); checked
    again just before: still a real, marked folder."""
    if _marked_kind(e.path) != e.kind:
        return False
    lock = e.path / LOCK
    if not _is_regular(lock):
        shutil.rmtree(e.path)  # removes links inside, never what they point to
        return True
    with open(lock) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        shutil.rmtree(e.path)
    return True


@dataclass(frozen=True)
class Cleared:
    listing: CacheListing
    removed: list[CacheEntry]  # (or, in a dry run, would be)
    busy: list[CacheEntry]  # in use by a run: kept
    failed: list[tuple[CacheEntry, str]] = field(default_factory=list)  # could not be removed: why


def clear_cache(
    older_than_days: float | None = None, root: Path | None = None, *, dry_run: bool = False
) -> Cleared:
    """Remove pawlab's entries not used for ``older_than_days`` (all with None); foreign
    things stay. A root that is not a pawlab cache is a `ConfigError` and nothing is
    removed. ``dry_run``: remove nothing, say what would go."""
    if older_than_days is not None:
        check_days(older_than_days)
    listing = list_cache(root, adopt=not dry_run)
    if not listing.is_cache:
        raise ConfigError(
            f"{listing.root}: not a pawlab cache (no {ROOT_MARKER} marker, and nothing in it that "
            "pawlab made): nothing removed"
        )
    now = time.time()
    removed: list[CacheEntry] = []
    busy: list[CacheEntry] = []
    failed: list[tuple[CacheEntry, str]] = []
    for e in listing.entries:
        if older_than_days is not None and e.age_days(now) < older_than_days:
            continue
        try:
            (removed if dry_run or _remove(e) else busy).append(e)
        except OSError as exc:  # a read-only part, a file in use: the others still go
            failed.append((e, exc.strerror or str(exc)))
    return Cleared(listing, removed, busy, failed)


def human(size: int) -> str:
    """``1.5 GB``, ``240.0 KB``, ``12 B``."""
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


__all__ = [
    "CacheEntry",
    "CacheListing",
    "Cleared",
    "Foreign",
    "cache_root",
    "adopt_legacy_features",
    "check_days",
    "clear_cache",
    "entry",
    "human",
    "list_cache",
]

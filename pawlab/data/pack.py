"""The packed cache: a source decoded once into one memory-mapped uint8 array per split.

A packed folder holds ``train-<token>.npy`` and ``validation-<token>.npy`` (N, H, W, 3) and
``manifest.json``, which lists, for every row, the source file's name, label, byte size,
modification time and content digest, plus every skipped file with its reason. `pack`
compares a source with that manifest:

* nothing changed (same files, sizes, mtimes, the same size/seed/fraction, and every file read
  with the same label and split): the folder is used as it is, with no decoding at all;
* some files changed: their rows are decoded again, the others are copied from the old
  arrays (also when only the seed or fraction changed);

The manifest is the commit point. New arrays get new file names, the manifest is replaced
atomically, and only then are the old arrays deleted; a kill at any moment leaves either the
old complete state or the new one, never a half-written array that a later run trusts.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from PIL import Image

from pawlab.atomic import atomic_write, atomic_write_text, named
from pawlab.data.decode import ImageDecodeError, decode
from pawlab.data.sources import Source, read_entry, source_stamp
from pawlab.data.workers import Workers, default_workers, refuse_in_starting_process
from pawlab.errors import DataError
from pawlab.progress import progress_bar, stage

PACK_FORMAT = "pawlab-prepared"
PACK_VERSION = 2
MANIFEST = "manifest.json"
SPLITS = ("train", "validation")
HIDDEN_REASON = "hidden or system file"


@dataclass(frozen=True)
class PlannedItem:
    """A labelled image to pack: where it comes from and which split it goes to."""

    name: str
    label: str
    split: str
    size: int
    mtime: float


@dataclass
class Packed:
    """A complete packed folder, opened."""

    root: Path
    manifest: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    @property
    def resize(self) -> str:
        return str(self.manifest.get("resize", "squash"))

    def images(self, split: str, mode: Literal["r", "c"] = "r") -> np.ndarray:
        """The split's images, memory-mapped: (N, H, W, 3) uint8; read-only, or with ``mode``
        ``c`` copy-on-write (writable, as torch wants its arrays, without writing the file)."""
        arr: np.ndarray = np.load(self.root / self.manifest["arrays"][split], mmap_mode=mode)
        return arr

    def labels(self, split: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[f[1]] for f in self.manifest["files"][split]], dtype=np.int64)

    def names(self, split: str) -> list[str]:
        return [f[0] for f in self.manifest["files"][split]]


def open_packed(root: str | os.PathLike[str]) -> Packed | None:
    """The packed folder at ``root``, or None if there is none (or it is incomplete)."""
    manifest = read_manifest(root)
    if manifest is None or not manifest.get("complete"):
        return None
    r = Path(root)
    if not all((r / manifest["arrays"][s]).is_file() for s in SPLITS):
        return None
    return Packed(r, manifest)


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(root) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != PACK_FORMAT or data.get("version") != PACK_VERSION:
        return None
    return data


# ----------------------------------------------------------------------------- worker tasks


@lru_cache(maxsize=4)
def _open_rows(path: str) -> np.ndarray:
    arr: np.ndarray = np.load(path, mmap_mode="r")
    return arr


_row_files: dict[str, tuple[int, int]] = {}  # array path -> (open descriptor, offset of row 0)


def _write_row(path: str, row: int, image: np.ndarray) -> None:
    """Write one (H, W, 3) row of the ``.npy`` file at ``path`` with ``pwrite``: a fresh
    memory-mapped row page-faults 37 times at 224 px, which cost a quarter of decoding."""
    if path not in _row_files:
        offset = int(np.load(path, mmap_mode="r").offset)
        _row_files[path] = (os.open(path, os.O_WRONLY), offset)
    fd, offset = _row_files[path]
    view = np.ascontiguousarray(image).data.cast("B")
    position = offset + row * len(view)
    while view:
        try:
            written = os.pwrite(fd, view, position)
        except OSError as exc:
            raise named(exc, path) from None
        view, position = view[written:], position + written


def _close_row_files() -> None:
    for fd, _ in _row_files.values():
        os.close(fd)
    _row_files.clear()
    _open_rows.cache_clear()


DecodeIntoTask = tuple[str, tuple[int, int], str, int, str, str, int]


Decoded = tuple[str | None, str | None, str | None]  # (skip reason, digest, decoder's warnings)


def _decode_into(task: DecodeIntoTask) -> Decoded:
    """Decode one file straight into row ``row`` of the array file."""
    src_path, stamp, name, size, resize, array_path, row = task
    data = read_entry(src_path, stamp, name)
    if isinstance(data, str):
        return data, None, None
    notes: list[str] = []
    try:
        _write_row(array_path, row, decode(data, (size, size), 3, resize, notes=notes))
    except ImageDecodeError as exc:
        return str(exc), None, None
    return None, hashlib.blake2b(data, digest_size=16).hexdigest(), "; ".join(notes) or None


def _write_png(task: tuple[str, int, str]) -> None:
    array_path, row, png_path = task
    image = Image.fromarray(np.asarray(_open_rows(array_path)[row]))
    atomic_write(Path(png_path), lambda tmp: image.save(tmp, format="PNG", compress_level=1))


# ----------------------------------------------------------------------------- packing


def fingerprint(
    source: Path,
    entries: Sequence[tuple[str, int, float]],
    settings: dict[str, Any],
    planned: Sequence[PlannedItem],
) -> str:
    """The digest of what a packed folder holds: the source's files, the settings, and each
    file's label and split (so that a change in how names are read is a change too)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([PACK_VERSION, str(source), settings], sort_keys=True).encode())
    for name, size, mtime in entries:
        h.update(f"{name}\0{size}\0{mtime!r}\n".encode())
    for it in planned:
        h.update(f"{it.name}\0{it.label}\0{it.split}\n".encode())
    return h.hexdigest()


def check_out_dir(out: Path, src: Path) -> None:
    """Refuse outputs that would destroy data: inside the source, a file, a foreign folder."""
    if out == src or src in out.parents:
        raise DataError(f"{out}: the output folder must not be inside the source")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if (
        out.exists()
        and not (out / MANIFEST).exists()
        and any(not p.name.startswith(".") for p in out.iterdir())
    ):
        raise DataError(f"{out}: exists, is not empty and is not a pawlab prepared folder")


def _new_array(path: Path, n: int, size: int) -> np.memmap[Any, Any]:
    """A (n, size, size, 3) uint8 array file, its space reserved: a disk too small is an error
    naming it now, before any decoding, not a crash when a page of the mapping is first written."""
    arr: np.memmap[Any, Any] = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3)
    )
    fd = os.open(path, os.O_WRONLY)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        raise named(exc, path) from None
    finally:
        os.close(fd)
    return arr


def _compact(
    root: Path, arr_path: Path, suffix: str, keep: np.ndarray, size: int, why: str, progress: bool
) -> Path:
    """A new array file with only the rows in ``keep`` (bool mask); the old one is deleted.
    ``why``: what the rows left out are, as a log says it."""
    new_path = root / f"{arr_path.stem}{suffix}.npy"
    src = np.load(arr_path, mmap_mode="r")
    dst = _new_array(new_path, int(keep.sum()), size)
    rows = np.flatnonzero(keep)
    with stage(f"dropping {why}", total=len(rows), unit="img", enabled=progress) as bar:
        for start in range(0, len(rows), 1024):
            chunk = rows[start : start + 1024]
            dst[start : start + len(chunk)] = src[chunk]
            bar.update(len(chunk))
        dst.flush()
    del dst, src
    arr_path.unlink()
    return new_path


@dataclass
class PackResult:
    packed: Packed
    up_to_date: bool  # nothing was decoded or written
    decoded: int  # files decoded this time
    reused: int  # rows copied from the previous arrays


def _deduped(
    out: Path, arrays: dict[str, Path], files: dict[str, _Rows], size: int, progress: bool
) -> list[dict[str, Any]]:
    """`_duplicates` of the splits, after dropping from ``arrays`` and ``files`` (in place) the
    validation images that duplicate training ones."""
    duplicates = _duplicates(files)
    if duplicates:
        arrays["validation"], files["validation"] = _drop_duplicates(
            out, arrays["validation"], files, size, progress
        )
    return duplicates


def pack(
    source: Source,
    planned: Sequence[PlannedItem],
    skipped: Sequence[tuple[str, str]],
    out: Path,
    *,
    size: int,
    settings: dict[str, Any],
    entries: Sequence[tuple[str, int, float]],
    workers: int = 0,
    progress: bool = True,
    png: bool = False,
    dedupe: bool = False,
    strict: bool = False,
) -> PackResult:
    """Bring the packed folder ``out`` up to date with ``planned`` (see the module doc).

    ``skipped`` are files already rejected before decoding (name, reason); ``settings``
    (resize policy, seed, fraction, ...) and ``entries`` (every file of the source with its size and
    mtime) make the fingerprint that decides whether anything must be done.
    """
    start = time.perf_counter()
    resize = str(settings.get("resize", "squash"))
    with stage(f"comparing {len(entries)} files with {out}", enabled=progress):
        fp = fingerprint(
            source.path,
            entries,
            {**settings, "size": size, "png": png, "dedupe": dedupe, "strict": strict},
            planned,
        )
        old = read_manifest(out)
        current = _up_to_date(out, old, fp)
    if current is not None:
        return PackResult(current, up_to_date=True, decoded=0, reused=0)
    _claim_folder(out, old)
    with _no_orphans_on_failure(out), Workers(workers or default_workers()) as pool:
        plans, all_skipped, decoded, reused = _build_arrays(
            source, planned, out, size, resize, old, pool, progress, uuid.uuid4().hex[:8]
        )
        all_skipped = [{"name": n, "reason": r} for n, r in skipped] + all_skipped
        arrays = {split: plan.path for split, plan in plans.items()}
        files = {split: plan.files for split, plan in plans.items()}
        duplicates = _deduped(out, arrays, files, size, progress) if dedupe else _duplicates(files)
        classes = sorted({f[1] for split in SPLITS for f in files[split]})
        problem = _problem(files, classes, all_skipped, strict)
        if problem is not None:  # the new arrays go with the error (_no_orphans_on_failure)
            raise DataError(f"{source.path}: {problem}")
        manifest = _new_manifest(
            fp, source.path, settings, size, png, dedupe, classes, files, arrays, all_skipped, duplicates
        )
        manifest["notes"] = _notes(plans)
        _commit(out, manifest, old)
        if png:
            _write_png_tree(out, manifest, pool, progress)
            manifest["complete"] = True
    manifest["seconds"] = time.perf_counter() - start
    atomic_write_text(out / MANIFEST, json.dumps(manifest) + "\n")
    return PackResult(Packed(out, manifest), up_to_date=False, decoded=decoded, reused=reused)


_Rows = list[list[Any]]  # manifest rows: [name, label, size, mtime, digest]


def _up_to_date(out: Path, old: dict[str, Any] | None, fp: str) -> Packed | None:
    """The folder as it is when its complete manifest has fingerprint ``fp`` and its arrays exist."""
    if old is not None and old.get("fingerprint") == fp and old.get("complete"):
        return open_packed(out)
    return None


@contextmanager
def _no_orphans_on_failure(out: Path) -> Iterator[None]:
    """On any failure (a full disk, Ctrl-C), drop the arrays this run made: no half-written
    cache is left behind; the manifest there still names what it named."""
    try:
        yield
    except BaseException:
        _remove_orphans(out, read_manifest(out))
        raise


def _claim_folder(out: Path, old: dict[str, Any] | None) -> None:
    """Create ``out``, drop arrays a killed run left, and write a placeholder manifest when there
    is none, so that the folder is ours at once and a killed first run can be rerun."""
    out.mkdir(parents=True, exist_ok=True)
    _remove_orphans(out, old)
    if old is None:
        placeholder = {"format": PACK_FORMAT, "version": PACK_VERSION, "complete": False, "arrays": {}}
        atomic_write_text(out / MANIFEST, json.dumps(placeholder) + "\n")


def _duplicates(files: dict[str, _Rows]) -> list[dict[str, Any]]:
    """Validation rows with the same bytes (digest) as a train row: {"validation": name, "train": name}."""
    in_train = {f[4]: f[0] for f in files["train"]}
    return [{"validation": f[0], "train": in_train[f[4]]} for f in files["validation"] if f[4] in in_train]


def _drop_duplicates(
    out: Path, path: Path, files: dict[str, _Rows], size: int, progress: bool
) -> tuple[Path, _Rows]:
    """The validation array (compacted to a ``d`` file) and rows without the exact duplicates of train."""
    in_train = {f[4] for f in files["train"]}
    keep = np.array([f[4] not in in_train for f in files["validation"]])
    kept = [f for f, k in zip(files["validation"], keep, strict=True) if k]
    return _compact(out, path, "d", keep, size, "validation's duplicates of training images", progress), kept


def _problem(
    files: dict[str, _Rows], classes: list[str], skipped: list[dict[str, Any]], strict: bool
) -> str | None:
    """Why the packed data cannot be used: a skip under ``strict`` (hidden files aside), fewer than
    two classes, or an empty split; None when it can."""
    real_skips = [sk for sk in skipped if sk["reason"] != HIDDEN_REASON]
    if strict and real_skips:
        first = real_skips[0]
        return f"--strict: {len(real_skips)} file(s) skipped, e.g. {first['name']}: {first['reason']}"
    if len(classes) < 2:
        return "fewer than 2 classes have a readable image"
    if not all(files[split] for split in SPLITS):
        empty = next(split for split in SPLITS if not files[split])
        return f"the {empty} split has no readable image"
    return None


def _new_manifest(
    fp: str,
    source: Path,
    settings: dict[str, Any],
    size: int,
    png: bool,
    dedupe: bool,
    classes: list[str],
    files: dict[str, _Rows],
    arrays: dict[str, Path],
    skipped: list[dict[str, Any]],
    duplicates: list[dict[str, Any]],
) -> dict[str, Any]:
    """The manifest of the new arrays; incomplete while a PNG tree is still to be written, and with
    ``seconds`` filled in by the caller."""
    return {
        "format": PACK_FORMAT,
        "version": PACK_VERSION,
        "fingerprint": fp,
        "complete": not png,
        "source": str(source),
        **settings,
        "size": size,
        "classes": classes,
        "counts": {sp: {c: sum(1 for f in files[sp] if f[1] == c) for c in classes} for sp in SPLITS},
        "skipped": skipped,
        "notes": [],  # files packed with the decoder's warnings (`_notes`)
        "duplicates": duplicates,
        "deduplicated": dedupe,
        "png": png,
        "arrays": {sp: path.name for sp, path in arrays.items()},
        "files": files,
        "seconds": 0.0,
    }


@dataclass
class _SplitPlan:
    path: Path  # the new array file
    items: list[PlannedItem]
    digests: list[str | None]
    ok: np.ndarray  # bool (N,): row decoded (or copied)
    files: list[list[Any]]  # manifest rows, filled at the end
    notes: dict[int, str] = field(default_factory=dict)  # row -> the decoder's warnings


_FileKey = tuple[str, int, float]  # (name, size, mtime)
_OldRow = tuple[str, int, str, str | None]  # (split, row, digest, note) in the previous arrays
_Copies = dict[str, list[tuple[int, int]]]  # old split -> [(new row, old row)]


def _build_arrays(
    source: Source,
    planned: Sequence[PlannedItem],
    out: Path,
    size: int,
    resize: str,
    old: dict[str, Any] | None,
    pool: Workers,
    progress: bool,
    token: str,
) -> tuple[dict[str, _SplitPlan], list[dict[str, Any]], int, int]:
    """New arrays for both splits: rows copied from the old arrays where the file is
    unchanged (same name, size and mtime), decoded by the workers otherwise."""
    old_rows, old_skips = _old_lookups(old, size, resize)
    skipped: list[dict[str, Any]] = []
    plans: dict[str, _SplitPlan] = {}
    tasks: list[DecodeIntoTask] = []
    task_rows: list[tuple[str, int]] = []
    stamp = source_stamp(source.path)
    reused = 0
    arrays = f"packing {len(planned)} images at {size}x{size}: new arrays, unchanged images copied"
    with stage(arrays, unit="img", enabled=progress) as copying:
        for split in SPLITS:
            items, known_bad = _split_items(planned, split, old_skips)
            skipped += known_bad
            plan, fresh, copied = _fill_split(
                out / f"{split}-{token}.npy", items, size, old_rows, out, old, copying.update
            )
            plans[split] = plan
            tasks += [
                (str(source.path), stamp, items[i].name, size, resize, str(plan.path), i) for i in fresh
            ]
            task_rows += [(split, i) for i in fresh]
            reused += copied
    results = pool.map(_decode_into, tasks, chunksize=64)
    skipped += _collect_decoded(results, task_rows, plans, progress)
    for plan in plans.values():
        _finish_split(plan, out, size, progress)
    return plans, skipped, len(tasks), reused


def _old_lookups(
    old: dict[str, Any] | None, size: int, resize: str
) -> tuple[dict[_FileKey, _OldRow], dict[_FileKey, str]]:
    """The previous manifest's rows and skip reasons, by (name, size, mtime); both empty when there
    is none or its pixels do not fit (another size or resize policy)."""
    old_rows: dict[_FileKey, _OldRow] = {}
    old_skips: dict[_FileKey, str] = {}
    if old is not None and "files" in old and (old["size"], old.get("resize", "squash")) == (size, resize):
        notes = {(n["name"], n["size"], n["mtime"]): n["note"] for n in old.get("notes", [])}
        for split in SPLITS:
            for row, (name, _label, fsize, mtime, digest) in enumerate(old["files"][split]):
                key = (name, fsize, mtime)
                old_rows[key] = (split, row, digest, notes.get(key))
        for sk in old.get("skipped", []):
            if "size" in sk:
                old_skips[(sk["name"], sk["size"], sk["mtime"])] = sk["reason"]
    return old_rows, old_skips


def _notes(plans: dict[str, _SplitPlan]) -> list[dict[str, Any]]:
    """The manifest's ``notes``: files packed, but with warnings from the decoder (corrupt EXIF
    data, say); size and mtime carry each note over to a later run that copies the row."""
    return [
        {"name": it.name, "note": plan.notes[i], "size": it.size, "mtime": it.mtime}
        for plan in plans.values()
        for i, it in enumerate(plan.items)
        if plan.ok[i] and i in plan.notes
    ]


def _skip_entry(it: PlannedItem, reason: str) -> dict[str, Any]:
    """A manifest ``skipped`` entry; size and mtime let a later run skip the file without reading it."""
    return {"name": it.name, "reason": reason, "size": it.size, "mtime": it.mtime}


def _split_items(
    planned: Sequence[PlannedItem], split: str, old_skips: dict[_FileKey, str]
) -> tuple[list[PlannedItem], list[dict[str, Any]]]:
    """The split's items to pack, and skip entries for those an earlier run already rejected."""
    items: list[PlannedItem] = []
    known_bad: list[dict[str, Any]] = []
    for it in planned:
        if it.split != split:
            continue
        reason = old_skips.get((it.name, it.size, it.mtime))
        if reason is None:
            items.append(it)
        else:
            known_bad.append(_skip_entry(it, reason))
    return items, known_bad


def _fill_split(
    path: Path,
    items: list[PlannedItem],
    size: int,
    old_rows: dict[_FileKey, _OldRow],
    out: Path,
    old: dict[str, Any] | None,
    tick: Callable[[int], object],
) -> tuple[_SplitPlan, list[int], int]:
    """Create the split's (N, size, size, 3) array at ``path`` and copy in every unchanged row
    (``tick(n)`` after each ``n``); the plan, the rows left to decode and how many rows were
    copied."""
    plan = _SplitPlan(path, items, [None] * len(items), np.ones(len(items), dtype=bool), [])
    arr = _new_array(path, len(items), size)
    copies: _Copies = {}
    fresh: list[int] = []
    for i, it in enumerate(items):
        prev = old_rows.get((it.name, it.size, it.mtime))
        if prev is None:
            fresh.append(i)
        else:
            copies.setdefault(prev[0], []).append((i, prev[1]))
            plan.digests[i] = prev[2]
            if prev[3] is not None:
                plan.notes[i] = prev[3]
    copied = _copy_rows(arr, copies, out, old, tick)
    arr.flush()
    return plan, fresh, copied


def _copy_rows(
    arr: np.memmap[Any, Any],
    copies: _Copies,
    out: Path,
    old: dict[str, Any] | None,
    tick: Callable[[int], object],
) -> int:
    """Copy rows from the previous arrays into ``arr``, 1024 at a time to bound memory (``tick``
    told of each chunk); the count."""
    copied = 0
    for old_split, pairs in copies.items():
        assert old is not None
        previous = np.load(out / old["arrays"][old_split], mmap_mode="r")
        for k in range(0, len(pairs), 1024):
            chunk = pairs[k : k + 1024]
            arr[[i for i, _ in chunk]] = previous[[r for _, r in chunk]]
            tick(len(chunk))
        copied += len(pairs)
    return copied


def _collect_decoded(
    results: Iterator[Decoded],
    task_rows: list[tuple[str, int]],
    plans: dict[str, _SplitPlan],
    progress: bool,
) -> list[dict[str, Any]]:
    """Record each decode result (in task order) in its plan: the digest and any note, or the
    row marked failed; the skip entries of the failures. Closes the row files even on error."""
    skipped: list[dict[str, Any]] = []
    bar = progress_bar(results, total=len(task_rows), desc="decoding", enabled=progress)
    try:
        for (split, i), (reason, digest, note) in zip(task_rows, bar, strict=True):
            plan = plans[split]
            if reason is None:
                plan.digests[i] = digest
                if note is not None:
                    plan.notes[i] = note
            else:
                plan.ok[i] = False
                skipped.append(_skip_entry(plan.items[i], reason))
    finally:  # small jobs decode in this process
        _close_row_files()
    return skipped


def _finish_split(plan: _SplitPlan, out: Path, size: int, progress: bool) -> None:
    """Drop the rows that failed to decode (compacting the array to a ``c`` file) and fill in
    the plan's manifest rows."""
    if not plan.ok.all():
        plan.path = _compact(out, plan.path, "c", plan.ok, size, "the unreadable files", progress)
    plan.files = [
        [it.name, it.label, it.size, it.mtime, plan.digests[i]]
        for i, it in enumerate(plan.items)
        if plan.ok[i]
    ]


def _commit(out: Path, manifest: dict[str, Any], old: dict[str, Any] | None) -> None:
    """Make ``manifest`` current, then drop the previous arrays."""
    atomic_write_text(out / MANIFEST, json.dumps(manifest) + "\n")
    if old is not None:
        for name in old["arrays"].values():
            if name not in manifest["arrays"].values():
                (out / name).unlink(missing_ok=True)


def _remove_orphans(out: Path, manifest: dict[str, Any] | None) -> None:
    """Array files a killed run left behind (not named by the manifest)."""
    keep = set(manifest["arrays"].values()) if manifest is not None else set()
    for split in SPLITS:
        for p in out.glob(f"{split}-*.npy"):
            if p.name not in keep:
                p.unlink(missing_ok=True)


def png_ids(names: Sequence[str]) -> list[str]:
    """Output file stems: the source file's stem, made unique with a short hash when needed."""
    stems = [PurePosixPath(n).stem for n in names]
    seen: dict[str, int] = {}
    for s in stems:
        seen[s] = seen.get(s, 0) + 1
    return [
        s if seen[s] == 1 else f"{s}-{hashlib.blake2b(n.encode(), digest_size=4).hexdigest()}"
        for s, n in zip(stems, names, strict=True)
    ]


def _write_png_tree(out: Path, manifest: dict[str, Any], pool: Workers, progress: bool) -> None:
    """``out/<split>/<class>/<id>.png`` for every row, written by the worker processes."""
    tasks = []
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
        for cls in manifest["classes"]:
            (out / split / cls).mkdir(parents=True, exist_ok=True)
        rows = manifest["files"][split]
        arr_path = str(out / manifest["arrays"][split])
        for row, (fid, f) in enumerate(zip(png_ids([f[0] for f in rows]), rows, strict=True)):
            tasks.append((arr_path, row, str(out / split / f[1] / f"{fid}.png")))
    results = pool.map(_write_png, tasks, chunksize=64)
    for _ in progress_bar(results, total=len(tasks), desc="writing PNGs", enabled=progress):
        pass
    _close_row_files()


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on a packed folder: concurrent runs wait for each other."""
    refuse_in_starting_process()  # the parent holds this lock while its workers start
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

"""Data ingestion: from a folder or zip of images to labelled, split uint8 arrays.

The stages are small pure functions over lists (fastai style):

    entries --`catalog`--> Items (name, label, split) --`assign_splits`--> --`decode_items`--> ImageSet

Layouts understood, in a folder or a zip alike:

* class-per-folder: ``cat/1.jpg``, ``dog/2.jpg`` (label = first folder);
* Kaggle-style flat: ``cat.123.jpg`` (label = the name's first dot-part);
* either of these under ``train/`` and ``validation/`` (or ``val/``, or a labelled ``test/``):
  the split is kept as it is;
* a single wrapping folder (``cats_and_dogs/train/...``, a zip's ``train/``) is looked through.

Files that cannot be used are never fatal: they are returned as `Skipped` with a reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from tqdm import tqdm

from pawlab._imageio import (
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    decode,
    default_workers,
    is_image_name,
    parallel_map,
)
from pawlab._sources import FolderSource, ZipSource, cached_source, open_source, source_stamp
from pawlab.config import DataConfig
from pawlab.errors import DataError

TRAIN_DIRS = ("train",)
VALIDATION_DIRS = ("validation", "valid", "val")
TEST_DIRS = ("test",)
SPLITS = ("train", "validation")
MANIFEST = "manifest.json"


# ----------------------------------------------------------------------------- labelling


def parent_label(name: str) -> str | None:
    """``cat/12.jpg`` -> ``cat``; a file with no folder has no parent label."""
    parts = PurePosixPath(name).parts
    return parts[0] if len(parts) >= 2 else None


def name_label(name: str) -> str | None:
    """Kaggle style: ``cat.123.jpg`` -> ``cat``; ``123.jpg`` carries no label."""
    stem = PurePosixPath(name).stem
    head, dot, _ = stem.partition(".")
    return head if dot and head else None


def label_of(name: str) -> str | None:
    """Label of a name relative to a split: the class folder if any, else the file name."""
    return parent_label(name) or name_label(name)


def is_hidden(name: str) -> bool:
    """Dot-files, ``__MACOSX/`` resource forks and similar debris are not data."""
    return any(p.startswith(".") or p == "__MACOSX" for p in PurePosixPath(name).parts)


# ----------------------------------------------------------------------------- cataloguing


@dataclass(frozen=True)
class Item:
    """An image file found in a source. ``split`` is set when the source fixed it."""

    name: str  # full name inside the source
    label: str | None
    split: str | None = None
    key: str = ""  # name below any wrapper and split folder: what the split hashes

    @property
    def split_key(self) -> str:
        return self.key or self.name


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


@dataclass
class Catalog:
    items: list[Item]
    skipped: list[Skipped]
    presplit: bool  # the source has its own train/validation folders


def _strip_wrappers(names: list[str]) -> str:
    """The common wrapping folder(s) to look through, e.g. ``cats_and_dogs_filtered/``."""
    prefix: tuple[str, ...] = ()
    parts = [PurePosixPath(n).parts for n in names]
    while parts and all(len(p) >= 2 for p in parts):
        firsts = {p[0] for p in parts}
        if len(firsts) != 1:
            break
        prefix += (parts[0][0],)
        parts = [p[1:] for p in parts]
    return "/".join(prefix) + "/" if prefix else ""


def _split_dirs(rel_names: list[str]) -> tuple[str, str | None] | None:
    """The tree's own split folders (matched ignoring case), if it has a ``train/``.

    Returns (train, validation): validation is ``validation/``/``val/``, or ``test/`` when
    it is labelled, or None when there is only a ``train/`` (e.g. beside an unlabelled
    Kaggle ``test/``): then only ``train/`` is used, and split by seed.
    """
    tops: dict[str, str] = {}
    for n in rel_names:
        parts = PurePosixPath(n).parts
        if len(parts) >= 2:
            tops.setdefault(parts[0].lower(), parts[0])
    train = next((tops[d] for d in TRAIN_DIRS if d in tops), None)
    if train is None:
        return None
    val = next((tops[d] for d in VALIDATION_DIRS if d in tops), None)
    if val is None:
        test = next((tops[d] for d in TEST_DIRS if d in tops), None)
        if test is not None and any(
            label_of(n[len(test) + 1 :]) for n in rel_names if n.startswith(test + "/")
        ):
            val = test
    return train, val


def catalog(names: Sequence[str]) -> Catalog:
    """Label (and, for pre-split trees, split) every image name; the rest is skipped."""
    skipped: list[Skipped] = []
    candidates: list[str] = []
    for n in names:
        if n == MANIFEST:
            continue  # a prepared folder's own record, not data
        if is_hidden(n):
            skipped.append(Skipped(n, "hidden or system file"))
        elif not is_image_name(n):
            skipped.append(Skipped(n, "not an image file type"))
        else:
            candidates.append(n)
    prefix = _strip_wrappers(candidates)
    rel = [n[len(prefix) :] for n in candidates]
    dirs = _split_dirs(rel)
    items: list[Item] = []
    for full, r in zip(candidates, rel, strict=True):
        split: str | None = None
        if dirs is not None:
            top, _, r = r.partition("/")
            if top == dirs[0]:
                split = None if dirs[1] is None else "train"
            elif top == dirs[1]:
                split = "validation"
            else:
                where = f"{dirs[0]}/ and {dirs[1]}/ folders" if dirs[1] else f"{dirs[0]}/ folder"
                skipped.append(Skipped(full, f"outside the {where}"))
                continue
        label = label_of(r)
        if label is None:
            skipped.append(Skipped(full, "no label: not in a class folder and no 'label.' name prefix"))
            continue
        items.append(Item(full, label, split, key=r))
    return Catalog(items, skipped, presplit=dirs is not None and dirs[1] is not None)


def _unit_hash(seed: int, key: str) -> float:
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_splits(items: Sequence[Item], val_fraction: float, seed: int) -> list[Item]:
    """Give every unsplit item a split, stratified by class and stable.

    Each file goes to validation when a seeded hash of its name falls below
    ``val_fraction``: every class gets that fraction in expectation, and adding files does
    not move existing files between splits. The hash is of the name below any wrapping and
    split folder, so a folder and its zip split alike. Each class with two or more files
    keeps at least one file in each split; for tiny classes that rule can override the hash.
    """
    out: list[Item] = []
    by_class: dict[str | None, list[Item]] = {}
    for it in items:
        if it.split is not None:
            out.append(it)
        else:
            by_class.setdefault(it.label, []).append(it)
    for members in by_class.values():
        hashes = [_unit_hash(seed, m.split_key) for m in members]
        splits = ["validation" if h < val_fraction else "train" for h in hashes]
        if len(members) >= 2:
            if "validation" not in splits:
                splits[int(np.argmin(hashes))] = "validation"
            if "train" not in splits:
                splits[int(np.argmax(hashes))] = "train"
        out.extend(replace(m, split=s) for m, s in zip(members, splits, strict=True))
    return out


# ----------------------------------------------------------------------------- decoding


@dataclass
class ImageSet:
    """Decoded images of one split: ``images`` (N, H, W, C) uint8, ``labels`` (N,) int64."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def counts(self) -> dict[str, int]:
        c = Counter(int(i) for i in self.labels)
        return {cls: c.get(i, 0) for i, cls in enumerate(self.classes)}


@dataclass
class Dataset:
    """A labelled source, decoded and split."""

    classes: list[str]
    train: ImageSet
    validation: ImageSet
    skipped: list[Skipped]
    source: str
    size: tuple[int, int]
    presplit: bool


DecodeTask = tuple[str, tuple[int, int], str, tuple[int, int] | None, int]


def decode_task(task: DecodeTask) -> np.ndarray | str:
    """(source path, source stamp, name, size, channels) -> array, or the reason it is skipped."""
    src_path, stamp, name, size, channels = task
    try:
        data = cached_source(src_path, stamp).read(name)
    except (OSError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"unreadable file ({reason})"
    try:
        return decode(data, size, channels)
    except ImageDecodeError as exc:
        return str(exc)


def decode_tasks(
    source: FolderSource | ZipSource, names: Sequence[str], size: tuple[int, int] | None, channels: int
) -> list[DecodeTask]:
    stamp = source_stamp(source.path)
    return [(str(source.path), stamp, n, size, channels) for n in names]


def decode_names(
    source: FolderSource | ZipSource,
    names: Sequence[str],
    size: tuple[int, int],
    channels: int = 3,
    workers: int = 0,
    progress: bool = True,
    desc: str = "decoding",
) -> tuple[np.ndarray, list[int], list[Skipped]]:
    """Decode ``names`` in parallel into one (N_ok, H, W, C) array.

    Returns the array, the indices (into ``names``) of the files that decoded, and the
    skipped files with their reasons.
    """
    workers = workers or default_workers()
    tasks = decode_tasks(source, names, size, channels)
    out = np.empty((len(names), size[0], size[1], channels), dtype=np.uint8)
    ok: list[int] = []
    skipped: list[Skipped] = []
    results = parallel_map(decode_task, tasks, workers=workers, total=len(tasks))
    bar = tqdm(results, total=len(tasks), desc=desc, unit="img", disable=not progress or None, leave=False)
    for i, res in enumerate(bar):
        if isinstance(res, str):
            skipped.append(Skipped(names[i], res))
        else:
            out[len(ok)] = res
            ok.append(i)
    return out[: len(ok)], ok, skipped


def no_images_error(where: object) -> DataError:
    return DataError(f"{where}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} files)")


def _check_classes(items: Sequence[Item], where: str) -> list[str]:
    classes = sorted({it.label for it in items if it.label is not None})
    if not items:
        raise no_images_error(where)
    if len(classes) < 2:
        only = f" only {classes[0]!r}" if classes else ""
        raise DataError(
            f"{where}: found {len(classes)} class{only}; need at least 2 "
            "(class-per-folder like cat/ and dog/, or names like cat.1.jpg)"
        )
    return classes


def _catalog_source(path: str | os.PathLike[str]) -> tuple[FolderSource | ZipSource, Catalog]:
    source = open_source(path)
    return source, catalog([e.name for e in source.entries()])


def _image_set(items: Sequence[Item], arrays: np.ndarray, classes: list[str]) -> ImageSet:
    index = {c: i for i, c in enumerate(classes)}
    return ImageSet(
        images=arrays,
        labels=np.array([index[str(it.label)] for it in items], dtype=np.int64),
        names=[it.name for it in items],
        classes=classes,
    )


def load_dataset(
    path: str | os.PathLike[str],
    config: DataConfig = DataConfig(),
    *,
    channels: int = 3,
    progress: bool = True,
) -> Dataset:
    """Read, label, split and decode a labelled source into memory at ``config.size``."""
    source, cat = _catalog_source(path)
    _check_classes(cat.items, str(source.path))
    items = assign_splits(cat.items, config.val_fraction, config.seed)
    size = (config.size, config.size)
    arrays, kept, skipped = decode_names(
        source, [it.name for it in items], size, channels, config.workers, progress
    )
    items = [items[i] for i in kept]
    classes = _check_classes(items, str(source.path))
    sets = {}
    for split in SPLITS:
        sel = [i for i, it in enumerate(items) if it.split == split]
        if not sel:
            raise DataError(f"{source.path}: the {split} split has no readable image")
        sets[split] = _image_set([items[i] for i in sel], arrays[sel], classes)
    return Dataset(
        classes=classes,
        train=sets["train"],
        validation=sets["validation"],
        skipped=cat.skipped + skipped,
        source=str(source.path),
        size=size,
        presplit=cat.presplit,
    )


@dataclass
class EvalSet:
    images: ImageSet
    skipped: list[Skipped]
    description: str  # which images, in words


def load_eval_set(
    path: str | os.PathLike[str],
    size: tuple[int, int],
    channels: int,
    classes: list[str],
    *,
    trained_on: dict[str, Any] | None = None,
    workers: int = 0,
    progress: bool = True,
) -> EvalSet:
    """The labelled images to evaluate a model on, never its training images.

    A source with its own split gives its validation images. The very source a model was
    trained on (without its own split) gives the validation part of the split used in
    training. Any other source is taken whole, as an independent test set.
    """
    source, cat = _catalog_source(path)
    trained_on = trained_on or {}
    items = cat.items
    if cat.presplit:
        items = [it for it in items if it.split == "validation"]
        description = "the source's validation split"
    elif trained_on.get("source") == str(source.path):
        frac, seed = float(trained_on["val_fraction"]), int(trained_on["seed"])
        items = [it for it in assign_splits(items, frac, seed) if it.split == "validation"]
        description = f"the validation split used in training (fraction {frac:g}, seed {seed})"
    else:
        description = "all labelled images of the source"
    if not items:
        raise DataError(f"{source.path}: no labelled images to evaluate")
    unknown = sorted({str(it.label) for it in items} - set(classes))
    if unknown:
        raise DataError(
            f"{source.path}: class {unknown[0]!r} is not one of the model's classes ({', '.join(classes)})"
        )
    arrays, kept, skipped = decode_names(source, [it.name for it in items], size, channels, workers, progress)
    if not kept:
        raise DataError(f"{source.path}: no readable image to evaluate")
    return EvalSet(_image_set([items[i] for i in kept], arrays, classes), cat.skipped + skipped, description)


def load_unlabeled(
    path: str | os.PathLike[str], size: tuple[int, int], channels: int = 3
) -> tuple[FolderSource | ZipSource, list[str], list[Skipped]]:
    """The image names of an unlabelled source (e.g. a Kaggle test set), and what was skipped."""
    source = open_source(path)
    names, skipped = [], []
    for e in source.entries():
        if is_hidden(e.name):
            skipped.append(Skipped(e.name, "hidden or system file"))
        elif not is_image_name(e.name):
            skipped.append(Skipped(e.name, "not an image file type"))
        else:
            names.append(e.name)
    if not names:
        raise no_images_error(source.path)
    return source, names, skipped


# ----------------------------------------------------------------------------- prepare


@dataclass
class PrepareReport:
    """What `prepare` did; also written as ``OUT/manifest.json``."""

    out: str
    source: str
    size: int
    seed: int
    val_fraction: float
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> images
    skipped: list[dict[str, str]] = field(default_factory=list)
    presplit: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"prepared {self.source} -> {self.out} at {self.size}x{self.size}"]
        for split, per_class in self.counts.items():
            detail = ", ".join(f"{c} {n}" for c, n in per_class.items())
            lines.append(f"  {split:<10} {sum(per_class.values()):>6} images ({detail})")
        if self.skipped:
            reasons = Counter(s["reason"].split(" (")[0] for s in self.skipped)
            lines.append(
                f"  skipped    {len(self.skipped):>6} files: "
                + "; ".join(f"{n} {r}" for r, n in reasons.most_common())
            )
        lines.append(f"  took {self.seconds:.1f}s; manifest: {Path(self.out) / 'manifest.json'}")
        return "\n".join(lines)


def _file_ids(names: Sequence[str]) -> list[str]:
    """Output file stems: the source file's stem, made unique with a short hash when needed."""
    stems = [PurePosixPath(n).stem for n in names]
    seen = Counter(stems)
    return [
        s if seen[s] == 1 else f"{s}-{hashlib.blake2b(n.encode(), digest_size=4).hexdigest()}"
        for s, n in zip(stems, names, strict=True)
    ]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file whole or not at all: a temporary file renamed into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def prepare(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: DataConfig = DataConfig(),
    *,
    progress: bool = True,
) -> PrepareReport:
    """Decode, resize and split ``src``, writing ``out/{train,validation}/<class>/<id>.png``.

    ``out/manifest.json`` records classes, counts, size, source, seed and every skipped file
    with its reason. It is written last: a folder without it is an unfinished prepare.
    """
    from PIL import Image

    start = time.perf_counter()
    out_dir = Path(out).expanduser().resolve()
    src_path = open_source(src).path
    if out_dir == src_path or src_path in out_dir.parents:
        raise DataError(f"{out_dir}: the output folder must not be inside the source")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder")
    manifest = out_dir / MANIFEST
    if not manifest.exists() and out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir}: exists, is not empty and is not a pawlab prepared folder")
    ds = load_dataset(src, config, progress=progress)
    if manifest.exists():
        manifest.unlink()  # first: a half-replaced folder must not look finished
        for split in SPLITS:
            shutil.rmtree(out_dir / split, ignore_errors=True)
    counts: dict[str, dict[str, int]] = {}
    for split, imgs in (("train", ds.train), ("validation", ds.validation)):
        split_dir = out_dir / split
        for cls in ds.classes:
            (split_dir / cls).mkdir(parents=True, exist_ok=True)
        for i, fid in enumerate(_file_ids(imgs.names)):
            cls = ds.classes[int(imgs.labels[i])]
            arr = imgs.images[i]
            Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(
                split_dir / cls / f"{fid}.png", compress_level=1
            )
        counts[split] = imgs.counts()
    report = PrepareReport(
        out=str(out_dir),
        source=ds.source,
        size=config.size,
        seed=config.seed,
        val_fraction=config.val_fraction,
        classes=ds.classes,
        counts=counts,
        skipped=[asdict(s) for s in ds.skipped],
        presplit=ds.presplit,
        seconds=time.perf_counter() - start,
    )
    atomic_write_text(manifest, json.dumps(asdict(report), indent=2) + "\n")
    return report


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a prepared folder, or None if ``path`` is not one."""
    m = Path(path) / MANIFEST
    if not m.is_file():
        return None
    try:
        data: dict[str, Any] = json.loads(m.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data

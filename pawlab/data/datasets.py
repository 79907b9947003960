"""Data ingestion: from a folder or zip of images to labelled, split uint8 arrays.

    source --`pawlab.data.catalog`--> split Items --`pawlab.data.pack`--> packed arrays --> `Dataset`

`prepare` writes the packed arrays of a source into a folder; `load_dataset` reads them (packing
the source into the user cache first when it was not prepared). Files that cannot be used are
never fatal: they are returned as `Skipped` with a reason.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pawlab.atomic import check_output_folder
from pawlab.config import DataConfig
from pawlab.data import cache
from pawlab.data.catalog import Item, Skipped, assign_splits, catalog, first_few, non_image_reason
from pawlab.data.decode import IMAGE_EXTENSIONS, ImageDecodeError, decode, to_channels
from pawlab.data.pack import (
    MANIFEST,
    SPLITS,
    Packed,
    PackResult,
    PlannedItem,
    check_out_dir,
    locked,
    open_packed,
    pack,
)
from pawlab.data.sources import Source, open_source, read_entry, source_stamp
from pawlab.data.workers import entry_point
from pawlab.errors import DataError
from pawlab.progress import stage
from pawlab.terminal import printable


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
    origin: dict[str, Any] = field(default_factory=dict)  # raw source, seed and fraction of the split
    resize: str = "squash"  # how the images were fitted to ``size``


DecodeTask = tuple[str, tuple[int, int], str, tuple[int, int] | None, int, str]


def decode_task(task: DecodeTask) -> np.ndarray | str:
    """(source path, source stamp, name, size, channels, resize) -> array, or the reason it
    is skipped."""
    src_path, stamp, name, size, channels, resize = task
    data = read_entry(src_path, stamp, name)
    if isinstance(data, str):
        return data
    try:
        return decode(data, size, channels, resize)
    except ImageDecodeError as exc:
        return str(exc)


def decode_tasks(
    source: Source,
    names: Sequence[str],
    size: tuple[int, int] | None,
    channels: int,
    resize: str = "squash",
) -> list[DecodeTask]:
    stamp = source_stamp(source.path)
    return [(str(source.path), stamp, n, size, channels, resize) for n in names]


def no_images_error(where: object) -> DataError:
    """No images in ``where``; said differently for the folder of a prepare that was stopped
    before it wrote its manifest (its arrays are there, but no image files)."""
    folder = Path(str(where))
    packed = folder.is_dir() and ((folder / ".lock").exists() or any(folder.glob("*.npy")))
    if packed and not (folder / MANIFEST).exists():
        return DataError(f"{where}: a prepare into this folder did not finish (no {MANIFEST}); run it again")
    return DataError(f"{where}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} files)")


def untrained_classes(train_counts: Mapping[str, int]) -> list[str]:
    """The classes with no training image, from ``train_counts`` (class -> training images)."""
    return [c for c, n in train_counts.items() if n == 0]


def untrained_warning(classes: Sequence[str]) -> str:
    """``warning: 2 classes have no training image, so a model cannot learn them: owl, yak`` for
    `untrained_classes` (the first five named)."""
    one = len(classes) == 1
    return (
        f"warning: {len(classes)} class{'' if one else 'es'} {'has' if one else 'have'} no training "
        f"image, so a model cannot learn {'it' if one else 'them'}: {first_few(classes, 5)}"
    )


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


def _check_validation(planned: Sequence[PlannedItem], where: str) -> None:
    """A source split by seed whose every class has a single image has none left for validation."""
    if not any(it.split == "validation" for it in planned):
        n = len({it.label for it in planned})
        raise DataError(
            f"{where}: no image left for validation: each of the {n} classes has a single image, "
            "which is kept for training"
        )


def _plan(
    source: Source, config: DataConfig, progress: bool = True
) -> tuple[list[PlannedItem], list[tuple[str, str]], list[tuple[str, int, float]], bool]:
    """Catalogue and split a source: (planned items, skipped files, all entries, presplit).
    ``progress``: lines in a log while a large folder is listed."""
    with stage(f"listing {source.path}", unit="files", enabled=progress) as listing:
        entries = source.entries(listing.update)
    stamps = {e.name: e for e in entries}
    cat = catalog([e.name for e in entries], config.layout, str(source.path))
    _check_classes(cat.items, str(source.path))
    planned = [
        PlannedItem(it.name, str(it.label), str(it.split), stamps[it.name].size, stamps[it.name].mtime)
        for it in assign_splits(cat.items, config.val_fraction, config.seed)
    ]
    if not cat.presplit:
        _check_validation(planned, str(source.path))
    skipped = [*source.skips, *((sk.name, sk.reason) for sk in cat.skipped)]
    # links not followed are part of the listing: a new one changes the fingerprint
    listing = [(e.name, e.size, e.mtime) for e in entries] + [(name, -2, 0.0) for name, _ in source.skips]
    return planned, skipped, listing, cat.presplit


def pack_source(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: DataConfig,
    *,
    progress: bool = True,
    png: bool = False,
    dedupe: bool = False,
    strict: bool = False,
) -> PackResult:
    """Pack ``src`` into ``out`` at ``config.size`` (see `pawlab.data.pack`)."""
    source = open_source(src, config.follow_links)
    out_dir = Path(out).expanduser().resolve()
    check_out_dir(out_dir, source.path)
    planned, skipped, entries, presplit = _plan(source, config, progress)
    settings = {
        "seed": config.seed,
        "val_fraction": config.val_fraction,
        "presplit": presplit,
        "resize": config.resize,
        "layout": config.layout,
    }
    with locked(out_dir):  # concurrent runs on one folder wait for each other
        return pack(
            source,
            planned,
            skipped,
            out_dir,
            size=config.size,
            settings=settings,
            entries=entries,
            workers=config.workers,
            progress=progress,
            png=png,
            dedupe=dedupe,
            strict=strict,
        )


def packed_for(
    path: str | os.PathLike[str], config: DataConfig, *, progress: bool = True
) -> tuple[Packed, bool]:
    """The packed form of a source at ``config.size``, and whether it has its own split.

    A folder made by `prepare` at that size and resize policy is used as it is. Any other source (or a
    prepared folder at another size, through its original source) is packed once into the
    user cache (`pawlab.data.cache`) and reused while it is unchanged.
    """
    p = Path(path).expanduser()
    prepared = open_packed(p) if p.is_dir() else None
    if prepared is not None:
        if (prepared.size, prepared.resize) == (config.size, config.resize):
            return prepared, True
        original = Path(prepared.manifest["source"])
        if original.exists():
            same_split = DataConfig(
                size=config.size,
                val_fraction=float(prepared.manifest["val_fraction"]),
                seed=int(prepared.manifest["seed"]),
                workers=config.workers,
                resize=config.resize,
                layout=layout_of(prepared.manifest),
            )
            cached = pack_source(original, _cached_copy(original, same_split), same_split, progress=progress)
            return cached.packed, True
    source_path = open_source(p).path
    packed = pack_source(source_path, _cached_copy(source_path, config), config, progress=progress).packed
    return packed, bool(packed.manifest.get("presplit")) or prepared is not None


def _cached_copy(src: Path, config: DataConfig) -> Path:
    """The cache entry of a source's packed copy: one per source, size, resize policy, layout
    and split, so that runs with other settings (a seed sweep, say) never rewrite each other's
    arrays."""
    size, resize = config.size, config.resize
    policy = "" if resize == "squash" else f"\0{resize}"
    layout = "" if config.layout == "auto" else f"\0layout={config.layout}"
    key = hashlib.blake2b(
        f"{src}\0{size}\0{config.seed}\0{config.val_fraction!r}{policy}{layout}".encode(), digest_size=10
    ).hexdigest()
    # the form an earlier pawlab's unmarked copies are recognised by (cache._LEGACY_PACKED)
    name = f"{src.name[:40]}-{size}{'' if resize == 'squash' else '-' + resize}-{key}"
    return cache.entry("packed data", name)


def layout_of(manifest: Mapping[str, Any]) -> str:
    """The layout a packed folder's source was read with (``auto`` before there was a choice)."""
    return str(manifest.get("layout", "auto"))


def _skipped(packed: Packed) -> list[Skipped]:
    return [Skipped(s["name"], s["reason"]) for s in packed.manifest["skipped"]]


@entry_point
def load_dataset(
    path: str | os.PathLike[str],
    config: DataConfig = DataConfig(),
    *,
    channels: int = 3,
    progress: bool = True,
) -> Dataset:
    """Read, label, split and decode a labelled source at ``config.size``.

    Decoding happens once per source and size: later calls read the packed cache. The images
    are memory-mapped from it (copy-on-write): a set far larger than memory trains, and the
    pages the kernel keeps are its to drop, not the process's own memory.
    """
    packed, presplit = packed_for(path, config, progress=progress)
    sets = {
        split: ImageSet(
            images=to_channels(packed.images(split, mode="c"), channels),
            labels=packed.labels(split),
            names=packed.names(split),
            classes=packed.classes,
        )
        for split in SPLITS
    }
    return Dataset(
        classes=packed.classes,
        train=sets["train"],
        validation=sets["validation"],
        skipped=_skipped(packed),
        source=str(Path(path).expanduser().resolve()),
        size=(config.size, config.size),
        presplit=presplit,
        origin={
            **{k: packed.manifest[k] for k in ("source", "seed", "val_fraction", "presplit")},
            "layout": layout_of(packed.manifest),
        },
        resize=packed.resize,
    )


@dataclass
class EvalSet:
    images: ImageSet
    skipped: list[Skipped]
    description: str  # which images, in words


def _check_same_split(resolved: str, origin: dict[str, Any]) -> None:
    """A folder prepared from a model's own training source must have been split as the
    model's data was: otherwise its validation images include training images."""
    prepared = open_packed(resolved) if Path(resolved).is_dir() else None
    if prepared is None or origin.get("source") != prepared.manifest["source"] or origin.get("presplit"):
        return
    m = prepared.manifest
    if (m["seed"], m["val_fraction"]) != (origin["seed"], origin["val_fraction"]):
        raise DataError(
            f"{resolved}: prepared from the model's training source with another split "
            f"(seed {m['seed']}, fraction {m['val_fraction']:g}), so its validation images include "
            f"training images; prepare it with --seed {origin['seed']} "
            f"--val-fraction {origin['val_fraction']:g}"
        )


def load_eval_set(
    path: str | os.PathLike[str],
    size: tuple[int, int],
    channels: int,
    classes: list[str],
    *,
    trained_on: dict[str, Any] | None = None,
    workers: int = 0,
    progress: bool = True,
    resize: str = "squash",
    class_map: Mapping[str, str] | None = None,
    layout: str | None = None,
) -> EvalSet:
    """The labelled images to evaluate a model on, never its training images. ``class_map``
    names the data's classes in the model's terms (``{"cats": "cat"}``); ``layout`` how the
    source's top folders are read (default: as in training for the model's own source, else auto).

    A source with its own split (or a prepared folder) gives its validation images. The
    very source a model was trained on gives the validation part of the split used in
    training. Any other source is taken whole, as an independent test set.
    """
    if size[0] != size[1]:
        raise DataError(f"{path}: only square input sizes are supported, got {size}")
    trained_on = trained_on or {}
    # where the model's split came from: the raw source, and the seed and fraction that split it
    origin = trained_on.get("origin") or trained_on
    resolved = str(Path(path).expanduser().resolve())
    _check_same_split(resolved, origin)
    same = origin.get("source") == resolved and not origin.get("presplit")
    frac, seed = (float(origin["val_fraction"]), int(origin["seed"])) if same else (0.2, 0)
    if layout is None:
        layout = layout_of(origin) if origin.get("source") == resolved else "auto"
    config = DataConfig(
        size=size[0], val_fraction=frac, seed=seed, workers=workers, resize=resize, layout=layout
    )
    packed, presplit = packed_for(path, config, progress=progress)
    if presplit:
        splits, description = ["validation"], "the source's validation split"
    elif same:
        splits = ["validation"]
        description = f"the validation split used in training (fraction {frac:g}, seed {seed})"
    else:
        splits, description = list(SPLITS), "all labelled images of the source"
    named = [(class_map or {}).get(c, c) for c in packed.classes]  # the data's classes, in the model's names
    unknown = sorted(set(named) - set(classes))
    if unknown:
        raise DataError(
            f"{resolved}: class {unknown[0]!r} is not one of the model's classes ({', '.join(classes)})"
            + suggest_class_map(named, classes)
        )
    remap = np.array([classes.index(c) for c in named], dtype=np.int64)
    images = ImageSet(
        images=to_channels(np.concatenate([np.array(packed.images(s)) for s in splits]), channels),
        labels=remap[np.concatenate([packed.labels(s) for s in splits])],
        names=[n for s in splits for n in packed.names(s)],
        classes=classes,
    )
    return EvalSet(images, _skipped(packed), description)


def _fold(name: str) -> str:
    """A class name without case or a plural ``s``: ``Cats`` and ``cat`` fold alike."""
    folded = name.strip().lower()
    return folded[:-1] if folded.endswith("s") and len(folded) > 1 else folded


def suggest_class_map(data_classes: Sequence[str], model_classes: Sequence[str]) -> str:
    """``" (names differ only in form: --class-map cats=cat,dogs=dog)"`` when every class of the
    data that the model lacks matches one of its classes after case and plural folding."""
    missing = [c for c in data_classes if c not in model_classes]
    pairs = [(c, next((m for m in model_classes if _fold(m) == _fold(c)), None)) for c in missing]
    if not pairs or any(m is None for _, m in pairs):
        return ""
    return f" (the names differ only in form: --class-map {','.join(f'{c}={m}' for c, m in pairs)})"


def load_unlabeled(
    path: str | os.PathLike[str], size: tuple[int, int], channels: int = 3
) -> tuple[Source, list[str], list[Skipped]]:
    """The image names of an unlabelled source (e.g. a Kaggle test set), and what was skipped."""
    source = open_source(path)
    names: list[str] = []
    entries = source.entries()
    skipped = [Skipped(name, reason) for name, reason in source.skips]
    for e in entries:
        reason = non_image_reason(e.name)
        if reason is None:
            names.append(e.name)
        else:
            skipped.append(Skipped(e.name, reason))
    if not names:
        raise no_images_error(source.path)
    return source, names, skipped


# ----------------------------------------------------------------------------- prepare


@dataclass
class PrepareReport:
    """What `prepare` did (the manifest, less its per-file index)."""

    out: str
    source: str
    size: int
    seed: int
    val_fraction: float
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> images
    skipped: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)  # packed, with the decoder's warnings
    duplicates: list[dict[str, str]] = field(default_factory=list)
    deduplicated: bool = False
    presplit: bool = False
    seconds: float = 0.0
    up_to_date: bool = False  # nothing had changed: nothing was decoded
    decoded: int = 0
    reused: int = 0

    @classmethod
    def from_pack(cls, result: PackResult) -> PrepareReport:
        m = result.packed.manifest
        return cls(
            out=str(result.packed.root),
            source=m["source"],
            size=m["size"],
            seed=m["seed"],
            val_fraction=m["val_fraction"],
            classes=m["classes"],
            counts=m["counts"],
            skipped=[{"name": s["name"], "reason": s["reason"]} for s in m["skipped"]],
            notes=[{"name": n["name"], "note": n["note"]} for n in m.get("notes", [])],
            duplicates=m["duplicates"],
            deduplicated=m["deduplicated"],
            presplit=m["presplit"],
            seconds=m["seconds"],
            up_to_date=result.up_to_date,
            decoded=result.decoded,
            reused=result.reused,
        )

    def _skip_reasons(self) -> str:
        """``2 empty file; 1 truncated image``: the skipped files counted by reason, most first
        (a reason's detail in parentheses left out)."""
        reasons = Counter(s["reason"].split(" (")[0] for s in self.skipped)
        return "; ".join(f"{n} {r}" for r, n in reasons.most_common())

    @property
    def untrained(self) -> list[str]:
        """The classes with no training image."""
        return untrained_classes(self.counts.get("train", {}))

    def summary(self) -> str:
        state = (
            "up to date, nothing decoded"
            if self.up_to_date
            else (f"{self.decoded} decoded, {self.reused} reused")
        )
        lines = [f"prepared {self.source} -> {self.out} at {self.size}x{self.size} ({state})"]
        for split, per_class in self.counts.items():
            detail = ", ".join(f"{c} {n}" for c, n in per_class.items())
            lines.append(f"  {split:<10} {sum(per_class.values()):>6} images ({detail})")
        if self.untrained:
            lines.append(f"  {untrained_warning(self.untrained)}")
        if self.skipped:
            lines.append(f"  skipped    {len(self.skipped):>6} files: {self._skip_reasons()}")
        if self.notes:
            first = self.notes[0]
            lines.append(
                f"  warnings   {len(self.notes):>6} files used, with decoder warnings in the manifest's "
                f"notes, e.g. {first['name']}: {first['note']}"
            )
        if self.duplicates:
            first = self.duplicates[0]
            action = (
                "removed from validation" if self.deduplicated else "--dedupe removes them from validation"
            )
            lines.append(
                f"  duplicates {len(self.duplicates):>6} validation images byte-identical to training images "
                f"({action}), e.g. {first['validation']} = {first['train']}"
            )
        lines.append(f"  took {self.seconds:.1f}s; manifest: {Path(self.out) / MANIFEST}")
        return printable("\n".join(lines))  # names from data never drive a terminal

    def __repr__(self) -> str:
        splits = ", ".join(f"{split} {sum(per.values()):,}" for split, per in self.counts.items())
        extra = "".join(
            f"; {n} {what}"
            for n, what in (
                (len(self.skipped), "skipped"),
                (len(self.untrained), "classes untrained"),
                (len(self.notes), "with warnings"),
                (len(self.duplicates), "duplicates"),
            )
            if n
        )
        return f"PrepareReport({self.source} -> {self.out} at {self.size}x{self.size}: {splits}{extra})"

    def _repr_html_(self) -> str:
        from pawlab import display

        work = (
            "up to date, nothing decoded"
            if self.up_to_date
            else f"{self.decoded} decoded, {self.reused} reused"
        )
        split = f"{self.val_fraction:g} to validation, seed {self.seed}"
        about = {
            "source": self.source,
            "prepared in": self.out,
            "size": f"{self.size}x{self.size}",
            "split": "the source's own (presplit)" if self.presplit else split,
            "work": f"{work}, {self.seconds:.1f}s",
        }
        splits = list(self.counts)
        rows = [[c, *(self.counts[s].get(c, 0) for s in splits)] for c in self.classes]
        rows.append(["total", *(sum(self.counts[s].values()) for s in splits)])
        parts = [display.fields(about), display.table(rows, ["class", *splits]), *self._html_problems()]
        return display.section("pawlab PrepareReport", *parts)

    def _html_problems(self) -> list[str]:
        """Classes with no training image; skipped files (reasons counted), decoder warnings and
        duplicates, each a collapsed list of its first 50."""
        from pawlab import display

        out: list[str] = [display.paragraph(untrained_warning(self.untrained))] if self.untrained else []
        if self.skipped:
            listed = display.table([(s["name"], s["reason"]) for s in self.skipped[:50]], ["file", "reason"])
            out.append(display.details(f"skipped {len(self.skipped)} files: {self._skip_reasons()}", listed))
        if self.notes:
            listed = display.table([(n["name"], n["note"]) for n in self.notes[:50]], ["file", "warning"])
            out.append(display.details(f"{len(self.notes)} files used, with decoder warnings", listed))
        if self.duplicates:
            action = "removed from validation" if self.deduplicated else "kept; --dedupe removes them"
            listed = display.table(
                [(d["validation"], d["train"]) for d in self.duplicates[:50]],
                ["validation image", "same bytes as training image"],
            )
            what = f"{len(self.duplicates)} validation images byte-identical to training images ({action})"
            out.append(display.details(what, listed))
        return out


@entry_point
def prepare(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: DataConfig = DataConfig(),
    *,
    progress: bool = True,
    dedupe: bool = False,
    strict: bool = False,
    png: bool = False,
) -> PrepareReport:
    """Decode, resize and split ``src`` into ``out``.

    Writes the packed arrays that `train`, `evaluate` and the Python API read (one
    memory-mapped ``(N, size, size, 3)`` uint8 array per split) and ``out/manifest.json``
    (classes, counts, size, source, seed, every file with its split, every skipped file with
    its reason, duplicates). Run again on an unchanged source it returns at once; on a
    changed one it decodes only what changed. ``png`` also writes the tutorials' layout
    ``out/{train,validation}/<class>/<id>.png``, for browsing or other tools (encoding PNGs
    costs more than decoding at large sizes, so it is opt-in). ``dedupe`` drops validation
    images that are byte-identical to training images; ``strict`` fails instead of skipping
    unreadable files.
    """
    check_output_folder(out, "prepared data")  # before any work
    start = time.perf_counter()
    result = pack_source(src, out, config, progress=progress, png=png, dedupe=dedupe, strict=strict)
    report = PrepareReport.from_pack(result)
    # this call's time (the manifest keeps the time of the run that last wrote it)
    return replace(report, seconds=time.perf_counter() - start)

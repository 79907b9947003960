"""Labelling and splitting: small pure functions over the names in a source (fastai style).

    entries --`catalog`--> Items (name, label, split) --`assign_splits`--> Items, all split

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
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from pawlab.data.decode import is_image_name
from pawlab.data.pack import HIDDEN_REASON, MANIFEST

TRAIN_DIRS = ("train",)
VALIDATION_DIRS = ("validation", "valid", "val")
TEST_DIRS = ("test",)


# ----------------------------------------------------------------------------- labelling


def _parts(name: str) -> list[str]:
    """``a//b/./c.jpg`` -> ``[a, b, c.jpg]``: a source-relative name's parts (strings only:
    `catalog` runs this for every file)."""
    return [p for p in name.split("/") if p and p != "."]


def _stem(filename: str) -> str:
    """``cat.123.jpg`` -> ``cat.123`` (as `PurePosixPath.stem`)."""
    i = filename.rfind(".")
    return filename[:i] if 0 < i < len(filename) - 1 else filename


def parent_label(name: str) -> str | None:
    """``cat/12.jpg`` -> ``cat``; a file with no folder has no parent label."""
    parts = _parts(name)
    return parts[0] if len(parts) >= 2 else None


def name_label(name: str) -> str | None:
    """Kaggle style: ``cat.123.jpg`` -> ``cat``; ``123.jpg`` carries no label."""
    parts = _parts(name)
    head, dot, _ = _stem(parts[-1] if parts else "").partition(".")
    return head if dot and head else None


def label_of(name: str) -> str | None:
    """Label of a name relative to a split: the class folder if any, else the file name."""
    return parent_label(name) or name_label(name)


def is_hidden(name: str) -> bool:
    """Dot-files, ``__MACOSX/`` resource forks and similar debris are not data."""
    return any(p.startswith(".") or p == "__MACOSX" for p in _parts(name))


UNSAFE_REASON = "unsafe path (absolute, or with ..): not read"


def is_unsafe(name: str) -> bool:
    """A zip entry named ``/abs/x.jpg``, ``C:\\x.jpg`` or ``a/../x.jpg``: no class can come from
    a path that points outside the source."""
    n = name.replace("\\", "/")
    return n.startswith("/") or (len(n) > 1 and n[1] == ":" and n[0].isalpha()) or ".." in n.split("/")


def non_image_reason(name: str) -> str | None:
    """Why a file is not image data (unsafe, hidden, wrong type), or None if it may be an image."""
    if is_unsafe(name):
        return UNSAFE_REASON
    if is_hidden(name):
        return HIDDEN_REASON
    if not is_image_name(name):
        return "not an image file type"
    return None


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
    parts = [_parts(n) for n in names]
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
        parts = _parts(n)
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
        if n == MANIFEST or ("/" not in n and n.endswith(".npy")):
            continue  # a prepared folder's own files, not data
        reason = non_image_reason(n)
        if reason is None:
            candidates.append(n)
        else:
            skipped.append(Skipped(n, reason))
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

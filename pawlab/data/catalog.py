"""Labelling and splitting: small pure functions over the names in a source (fastai style).

    entries --`catalog`--> Items (name, label, split) --`assign_splits`--> Items, all split

Layouts understood, in a folder or a zip alike:

* class-per-folder: ``cat/1.jpg``, ``dog/2.jpg`` (label = first folder);
* Kaggle-style flat: ``cat.123.jpg`` (label = the name's first dot-part);
* either of these under ``train/`` and ``validation/`` (or ``val/``, ``valid/``, or a labelled
  ``test/``): the split is kept as it is;
* a single wrapping folder (``cats_and_dogs/train/...``, a zip's ``train/``) is looked through.

Which top folders are split folders (``--layout``, `DataConfig.layout`):

* ``auto``: a folder named like a split holds one when its images are labelled other than by
  its own name (``train/cat/1.jpg``, ``train/cat.1.jpg``); such folders are the split when
  nothing else stands beside them (no other folder, no loose labelled image). A folder named
  like a split that holds images of its own (``vehicles/train/1.jpg``) is a class like its
  neighbours. Split folders beside other images are ambiguous: a `DataError` naming them.
* ``split``: the top's split folders are the split; what is beside them is skipped, or, when
  there is no ``train/``, is the training set (``cat.1.jpg`` files beside ``validation/``). A
  lone ``train/`` is not looked through as a wrapper.
* ``classes``: every top folder is a class, whatever its name.

Files that cannot be used are never fatal: they are returned as `Skipped` with a reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from pawlab.data.decode import is_image_name
from pawlab.data.pack import HIDDEN_REASON, MANIFEST
from pawlab.errors import DataError

TRAIN_DIRS = ("train",)
VALIDATION_DIRS = ("validation", "valid", "val")
TEST_DIRS = ("test", "test1")  # test1/: Kaggle dogs-vs-cats test1.zip
SPLIT_DIRS = (*TRAIN_DIRS, *VALIDATION_DIRS, *TEST_DIRS)


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
    presplit: bool  # the source fixes its own split (it has a validation folder)


def _strip_wrappers(names: list[str], keep_splits: bool = False) -> str:
    """The common wrapping folder(s) to look through, e.g. ``cats_and_dogs_filtered/``;
    ``keep_splits``: not a folder named like a split."""
    prefix: tuple[str, ...] = ()
    parts = [_parts(n) for n in names]
    while parts and all(len(p) >= 2 for p in parts):
        firsts = {p[0] for p in parts}
        if len(firsts) != 1 or (keep_splits and parts[0][0].lower() in SPLIT_DIRS):
            break
        prefix += (parts[0][0],)
        parts = [p[1:] for p in parts]
    return "/".join(prefix) + "/" if prefix else ""


@dataclass(frozen=True)
class _Splits:
    """The folders a tree's own split is read from (named as in the source)."""

    train: str | None  # None: the images beside the split folders are the training set
    validation: str | None  # None: the training set is split by seed

    def where(self) -> str:
        """What the split is read from: ``the train/ and validation/ folders``."""
        folders = [f"{d}/" for d in (self.train, self.validation) if d is not None]
        read = f"the {' and '.join(folders)} folder{'s' * (len(folders) > 1)}" if folders else ""
        if self.train is not None:
            return read
        return f"{read} and the images beside it" if read else "the images beside the split folders"


def _tops(rel_names: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """The top folders with the names below each (``train`` -> ``[cat/1.jpg, ...]``), and the
    loose files at the top."""
    folders: dict[str, list[str]] = {}
    loose: list[str] = []
    for n in rel_names:
        top, _, below = n.partition("/")
        if below:
            folders.setdefault(top, []).append(below)
        else:
            loose.append(n)
    return folders, loose


def _holds_split(folder: str, below: list[str]) -> bool:
    """Whether a folder named like a split holds one: images labelled other than by its own name
    (``cat/1.jpg``, ``cat.1.jpg``), not the images of a class named like it (``1.jpg``,
    ``train.1.jpg`` in ``train/``)."""
    return any((label_of(r) or folder).lower() != folder.lower() for r in below)


def first_few(names: Sequence[str], first: int = 3) -> str:
    """``a/, b/, c/ and 4 more``: the first names of a list, and how many more there are."""
    more = f" and {len(names) - first} more" if len(names) > first else ""
    return ", ".join(names[:first]) + more


def _dirs(names: Sequence[str]) -> str:
    """``train/, validation/``: folder names as a message lists them."""
    return first_few([f"{d}/" for d in names])


def _ambiguous(where: str, split_dirs: list[str], others: list[str], loose: list[str]) -> DataError:
    """Split folders beside other images: the error that names them and the flags that settle it."""
    beside = [_dirs(others)] if others else []
    if loose:
        beside.append(f"{len(loose)} labelled file{'s' * (len(loose) > 1)} like {loose[0]}")
    many = len(split_dirs) > 1
    rest = "skips the rest" if any(d.lower() in TRAIN_DIRS for d in split_dirs) else "trains on the rest"
    return DataError(
        f"{where}: ambiguous layout: split folder{'s' * many} {_dirs(split_dirs)} "
        f"beside other images ({'; '.join(beside)}); --layout split keeps {'their' if many else 'its'} "
        f"split and {rest}, --layout classes makes every top folder a class"
    )


def _split_dirs(rel_names: list[str], layout: str, where: str) -> _Splits | None:
    """The tree's own split folders (matched ignoring case) as ``layout`` reads them (see the
    module doc), or None when it has no split of its own.

    The validation folder is ``validation/``, ``valid/`` or ``val/``, or ``test/`` when it is
    labelled; without one (``train/`` beside an unlabelled Kaggle ``test/``) the training
    images are split by seed.
    """
    if layout == "classes":
        return None
    folders, loose = _tops(rel_names)
    named: dict[str, str] = {}
    for d in folders:
        if d.lower() in SPLIT_DIRS:
            named.setdefault(d.lower(), d)
    others = sorted(d for d in folders if d.lower() not in SPLIT_DIRS)
    labelled = [n for n in loose if name_label(n)]
    if layout == "auto":
        held = [d for d in named.values() if _holds_split(d, folders[d])]
        if not held:
            return None
        if others or labelled:
            raise _ambiguous(where, held, others, labelled)
    elif not named:
        raise DataError(
            f"{where}: --layout split: no train/, validation/ (val/, valid/) or test/ folder at the top"
        )
    train = next((named[d] for d in TRAIN_DIRS if d in named), None)
    val = next((named[d] for d in VALIDATION_DIRS if d in named), None)
    test = named.get("test")  # a labelled test/ may validate; test1/ (Kaggle's) is never read
    if val is None and test is not None and any(label_of(r) for r in folders[test]):
        val = test
    if train is None and not (others or labelled):
        raise DataError(f"{where}: no train/ folder, and no images beside {_dirs(list(named.values()))}")
    return _Splits(train, val)


def _place(rel: str, splits: _Splits) -> tuple[str | None, str] | None:
    """(split, name below the split folder) of a name in a tree with its own split; None when
    it lies outside what the split is read from."""
    top, _, below = rel.partition("/")
    fixed = "train" if splits.validation is not None else None
    if below and top == splits.validation:
        return "validation", below
    if below and top == splits.train:
        return fixed, below
    beside = not below or top.lower() not in SPLIT_DIRS
    if splits.train is None and beside:
        return fixed, rel
    return None


def catalog(names: Sequence[str], layout: str = "auto", where: str = "source") -> Catalog:
    """Label (and, for trees with their own split, split) every image name; the rest is skipped.
    ``layout``: how top folders named like splits are read (module doc); an ambiguous tree is
    a `DataError` that begins with ``where``."""
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
    prefix = _strip_wrappers(candidates, keep_splits=layout == "split")
    rel = [n[len(prefix) :] for n in candidates]
    splits = _split_dirs(rel, layout, where)
    items: list[Item] = []
    for full, r in zip(candidates, rel, strict=True):
        split: str | None = None
        if splits is not None:
            placed = _place(r, splits)
            if placed is None:
                skipped.append(Skipped(full, f"outside {splits.where()}"))
                continue
            split, r = placed
        label = label_of(r)
        if label is None:
            skipped.append(Skipped(full, "no label: not in a class folder and no 'label.' name prefix"))
            continue
        items.append(Item(full, label, split, key=r))
    return Catalog(items, skipped, presplit=splits is not None and splits.validation is not None)


def _unit_hash(seed: int, key: str) -> float:
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_splits(items: Sequence[Item], val_fraction: float, seed: int) -> list[Item]:
    """Give every unsplit item a split, stratified by class and stable.

    Each file goes to validation when a seeded hash of its name falls below
    ``val_fraction``: every class gets that fraction in expectation, and adding files does
    not move existing files between splits. The hash is of the name below any wrapping and
    split folder, so a folder and its zip split alike. Each class with two or more files
    keeps at least one file in each split, and a class with a single file keeps it in
    training (a class only in validation is never learnt); for tiny classes these rules can
    override the hash, so a class growing from one file to two may move its first file.
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
        if len(members) == 1:
            splits = ["train"]
        else:
            if "validation" not in splits:
                splits[int(np.argmin(hashes))] = "validation"
            if "train" not in splits:
                splits[int(np.argmax(hashes))] = "train"
        out.extend(replace(m, split=s) for m, s in zip(members, splits, strict=True))
    return out

"""Runs as the dashboard sees them: read from their run directories, never written.

A `Run` reads what training writes (`pawlab.runlog`): the event log, the recorded validation
passes and thumbnails. Everything here tolerates a run that is still being written (a torn
last line, a pass not yet there) or deleted while it is read: a missing piece is empty, not an
error. A damaged file (a link, a FIFO, JSON nested too deeply, an array that is not the index's
images x classes floats) is read no further: it makes its run damaged (`Run.damage`), or its
validation pass (`Run.pass_damage`) or that pass's typicality (`Run.typicality_damage`), with
the reason, and everything else keeps working. Files
are opened through no link (`runlog.open_in`): nothing outside the run directory is read.
Images are named by their index in the validation set, checked against its size; no path from
a request reaches the file system.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

import numpy as np

from pawlab import runlog
from pawlab.runlog import DamagedFile

CELL_IMAGES = 100  # thumbnails shown for one cell of the confusion matrix
# How a cell lists its images: "p" by their probability of the predicted class (the least sure
# first on the diagonal, the most confidently wrong first off it), "typicality" the least typical
# first (foreign or mislabelled images), where the pass recorded typicality
ORDERS = ("p", "typicality")
SUSPECT_PASSES = 3  # "suspect" images: confidently wrong in the last passes ...
SUSPECT_CONFIDENCE = 0.8  # ... with the wrong class at least this probable, or flipping
# The largest files read whole; anything larger is damage. Training writes far less.
MAX_JSON = 64 << 20  # config.json, validation/index.json: a million images' names, and more
MAX_IMAGE = 16 << 20  # a thumbnail or a grid of what the model sees (tens of KiB)
MAX_PASS = 1 << 30  # one validation pass: a million images of 500 classes in float16
RUN_FILES = (runlog.EVENTS, runlog.CONFIG, runlog.VALIDATION_INDEX)  # damage here is the run's


def run_id(path: Path) -> str:
    """An opaque, stable id for a run directory (its resolved path, hashed)."""
    return hashlib.blake2b(str(path.resolve()).encode(), digest_size=6).hexdigest()


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds an event log or a config: a file of whatever kind but a folder
    (a link or a FIFO there is a damaged run)."""
    return any(_not_a_folder(path / name) for name in (runlog.EVENTS, runlog.CONFIG))


def _not_a_folder(path: Path) -> bool:
    try:
        return not stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def find_runs(roots: list[Path]) -> list[Path]:
    """Run directories: each root that is one, and the run directories directly inside the
    others (``runs/``, a `compare` folder)."""
    found: list[Path] = []
    for root in roots:
        if is_run_dir(root):
            found.append(root)
        elif root.is_dir():
            found += sorted(p for p in root.iterdir() if p.is_dir() and is_run_dir(p))
    return list(dict.fromkeys(p.resolve() for p in found))


Load = Callable[[BinaryIO, int], Any]  # (the open file, its size) -> its content; ValueError: damaged


@dataclass
class Run:
    """One run directory, read lazily; what was read is kept until its file changes. Safe to
    use from several threads."""

    path: Path
    damage: dict[str, str] = field(default_factory=dict)  # file of `RUN_FILES` -> why it is damaged
    pass_damage: dict[int, str] = field(default_factory=dict)  # epoch -> why its pass is damaged
    typicality_damage: dict[int, str] = field(default_factory=dict)  # epoch -> why its typicality is
    _files: dict[str, tuple[tuple[int, ...], Any]] = field(default_factory=dict)  # see `_read`
    _log: list[dict[str, Any]] = field(default_factory=list)  # the event log as far as read
    _position: runlog.Position = runlog.Position()
    _generation: int = 0  # +1 for each new event log in the directory's place
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def id(self) -> str:
        return run_id(self.path)

    def _read(self, relative: str, load: Load, key: tuple[int, ...] = ()) -> Any:
        """``load`` of the file at ``relative``, loaded again only when its size, time or inode
        (or ``key``) change. Raises OSError for a missing file and `DamagedFile` for a damaged
        one (for as long as it stays as it is)."""
        with runlog.open_in(self.path, relative) as fh:
            st = os.fstat(fh.fileno())
            stamp = (st.st_size, st.st_mtime_ns, st.st_ino, *key)
            cached = self._files.get(relative)
            if cached is None or cached[0] != stamp:
                try:
                    value = load(fh, st.st_size)
                except ValueError as exc:
                    value = DamagedFile(f"{relative}: {exc}")
                cached = self._files[relative] = (stamp, value)
        if isinstance(cached[1], DamagedFile):
            raise cached[1]
        return cached[1]

    def _run_file(self, relative: str, load: Load, missing: Any) -> Any:
        """One of `RUN_FILES` as ``load`` reads it; ``missing`` when it is not there or damaged
        (then `damage` says why)."""
        try:
            value = self._read(relative, load)
        except DamagedFile as exc:
            self.damage[relative] = str(exc)
            return missing
        except OSError:
            value = missing
        self.damage.pop(relative, None)
        return value

    def config(self) -> dict[str, Any]:
        """config.json ({} before training wrote it, or damaged)."""
        found: dict[str, Any] = self._run_file(runlog.CONFIG, _load_config, {})
        return found

    def index(self) -> dict[str, Any]:
        """classes, names and labels of the validation images ({} before training wrote it, or
        damaged)."""
        found: dict[str, Any] = self._run_file(runlog.VALIDATION_INDEX, _load_index, {})
        return found

    def events(self) -> tuple[list[dict[str, Any]], int]:
        """The event log so far and its generation. Each call reads on from where the last one
        stopped; a new log in its place (a new run in this directory) starts a new list and the
        next generation. The list only grows: read it, never change it."""
        with self._lock:
            try:
                fresh, position = runlog.read_json_lines(self.path / runlog.EVENTS, self._position)
            except DamagedFile as exc:
                self.damage[runlog.EVENTS] = str(exc)
                return self._log, self._generation
            except OSError:  # the run directory went away: its log as far as it was read
                return self._log, self._generation
            before = self._position
            if position.offset < before.offset or before.offset and position.first_line != before.first_line:
                self._log, self._generation = [], self._generation + 1  # a new log in its place
            self._log.extend(fresh)
            self._position = position
            if position.skipped:
                self.damage[runlog.EVENTS] = f"{runlog.EVENTS}: {position.skipped}"
            else:
                self.damage.pop(runlog.EVENTS, None)
            return self._log, self._generation

    def summary(self) -> dict[str, Any]:
        """What the run list shows: name, classes, state, epochs, best validation loss, and for
        a damaged run (state "damaged") the reason."""
        events, _ = self.events()
        config = self.config()
        self.index()  # damage there is the run's
        epochs = [e for e in events if e.get("event") == "epoch"]
        last = str(events[-1].get("event")) if events else "waiting"
        state = {"end": "finished", "failed": "failed"}.get(last, "running" if events else "waiting")
        reason = next((self.damage[f] for f in RUN_FILES if f in self.damage), None)
        # floats only: a 400-digit integer is valid JSON, and too large for isfinite
        losses = [v for e in epochs if isinstance(v := e.get("val_loss"), float) and math.isfinite(v)]
        classes = config.get("classes")
        return {
            "id": self.id,
            "name": self.path.name,
            "classes": classes if _names(classes) else [],
            "state": "damaged" if reason else state,
            "reason": reason,
            "epochs": len(epochs),
            "best_val_loss": min(losses) if losses else None,
        }

    def pass_epochs(self) -> list[int]:
        return runlog.pass_epochs(self.path) if self.path.is_dir() else []

    def probabilities(self, epoch: int) -> np.ndarray | None:
        """float32 (N, classes) of one validation pass, or None when it is not (yet) there,
        there is no index to read it by, or it is damaged (then `pass_damage` says why)."""
        index = self.index()
        if not index:
            return None
        shape = (len(index["labels"]), len(index["classes"]))
        return self._array(runlog.pass_file(epoch), shape, epoch, self.pass_damage)

    def typicality(self, epoch: int) -> np.ndarray | None:
        """float32 (N,): each validation image's typicality at one pass, or None when training
        recorded none (a run from before it did, a network without a linear layer), there is no
        index to read it by, or it is damaged (then `typicality_damage` says why)."""
        index = self.index()
        if not index:
            return None
        return self._array(
            runlog.typicality_file(epoch), (len(index["labels"]),), epoch, self.typicality_damage
        )

    def _array(
        self, relative: str, shape: tuple[int, ...], epoch: int, damage: dict[int, str]
    ) -> np.ndarray | None:
        """The floats of ``shape`` at ``relative`` (`_load_array`), None when missing or damaged
        (then ``damage[epoch]`` says why)."""
        try:
            found: np.ndarray | None = self._read(
                relative, lambda fh, size: _load_array(fh, size, shape), key=shape
            )
        except DamagedFile as exc:
            damage[epoch] = str(exc)
            return None
        except OSError:  # not (yet) there
            found = None
        damage.pop(epoch, None)
        return found

    def labels(self) -> np.ndarray:
        return np.asarray(self.index().get("labels", []), dtype=np.int64)

    def thumb(self, index: int) -> tuple[bytes, str] | None:
        """The thumbnail of validation image ``index`` and its ETag, if that index exists.
        Raises `DamagedFile` for a link or what is not a JPEG-sized file."""
        n = len(self.index().get("labels", []))
        return self.image(f"{runlog.THUMBS}/{index}.jpg") if 0 <= index < n else None

    def image(self, relative: str) -> tuple[bytes, str] | None:
        """The bytes of the image at ``relative`` and an ETag, or None when it is missing.
        Raises `DamagedFile` for a link, a FIFO, or one larger than `MAX_IMAGE`."""
        try:
            with runlog.open_in(self.path, relative) as fh:
                st = os.fstat(fh.fileno())
                if st.st_size > MAX_IMAGE:
                    raise DamagedFile(f"{relative}: larger than {MAX_IMAGE >> 20} MiB")
                data = fh.read(MAX_IMAGE)
        except OSError:
            return None
        return data, f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


def _load_json(fh: BinaryIO, size: int) -> Any:
    if size > MAX_JSON:
        raise ValueError(f"larger than {MAX_JSON >> 20} MiB")
    try:
        return json.loads(fh.read(MAX_JSON))
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None


def _load_config(fh: BinaryIO, size: int) -> dict[str, Any]:
    data = _load_json(fh, size)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _names(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _load_index(fh: BinaryIO, size: int) -> dict[str, Any]:
    """index.json as training writes it: class names, image names, and as many labels, each a
    class's number."""
    data = _load_json(fh, size)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    classes, names, labels = data.get("classes"), data.get("names"), data.get("labels")
    if not _names(classes) or not classes:
        raise ValueError("classes: not a list of class names")
    if not _names(names):
        raise ValueError("names: not a list of file names")
    if not isinstance(labels, list) or len(labels) != len(names):
        raise ValueError(f"labels: not a list as long as names ({len(names)})")
    k = len(classes)
    wrong = next((i for i, v in enumerate(labels) if type(v) is not int or not 0 <= v < k), None)
    if wrong is not None:
        shown = json.dumps(labels[wrong])
        shown = shown if len(shown) <= 20 else f"{type(labels[wrong]).__name__} {shown[:12]}..."
        raise ValueError(f"labels: {shown} is not a class number (0-{k - 1})")
    return {"classes": classes, "names": names, "labels": labels}


def _load_array(fh: BinaryIO, size: int, shape: tuple[int, ...]) -> np.ndarray:
    """A validation pass's .npy file of floats of ``shape``, (images, classes) or (images,),
    checked by its header before anything is allocated; float32."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            raise ValueError
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        found, fortran, dtype = read_header(fh)
    except (ValueError, EOFError, SyntaxError, TypeError, RecursionError, MemoryError):
        raise ValueError("not an array as NumPy writes it") from None
    if dtype.kind != "f":
        raise ValueError(f"{'structured' if dtype.names else dtype.str} values, not floats")
    if found != shape:
        shown = str(found) if len(str(found)) <= 40 else "of another shape"
        of = f" of {shape[1]} classes" if len(shape) == 2 else ""
        raise ValueError(f"{shown}, not {shape}: the index has {shape[0]} images{of}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_PASS:
        raise ValueError(f"larger than {MAX_PASS >> 30} GiB")
    data = fh.read(nbytes)
    if len(data) < nbytes:
        raise ValueError("cut short")
    values = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")
    return values.astype(np.float32)


def passes(run: Run) -> dict[str, Any]:
    """The epochs of the recorded validation passes, the classes, which passes are damaged
    (epoch -> why), which have their images' typicality, and whose typicality is damaged."""
    epochs = run.pass_epochs()
    unread = [e for e in epochs if run.probabilities(e) is None]
    damaged = {str(e): run.pass_damage[e] for e in unread if e in run.pass_damage}
    typical = [e for e in epochs if run.typicality(e) is not None]
    atypical = {str(e): why for e, why in sorted(run.typicality_damage.items()) if e in epochs}
    return {
        "epochs": epochs,
        "classes": run.index().get("classes", []),
        "damaged": damaged,
        "typicality": typical,
        "typicality_damaged": atypical,
    }


def confusion(labels: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts: rows the true class, columns the predicted one."""
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, probs.argmax(1)), 1)
    return cm


def matrix(run: Run, epoch: int) -> dict[str, Any] | None:
    """The confusion matrix of one pass, its per-class precision and recall and accuracy, and
    how many images entered (+) and left (-) each cell since the previous pass."""
    probs, labels = run.probabilities(epoch), run.labels()
    classes = run.index().get("classes", [])
    if probs is None or len(labels) != len(probs):
        return None
    k = len(classes)
    cm = confusion(labels, probs, k)
    col, row, diag = cm.sum(0), cm.sum(1), np.diag(cm)
    entered = np.zeros((k, k), dtype=np.int64)
    left = np.zeros((k, k), dtype=np.int64)
    earlier = [e for e in run.pass_epochs() if e < epoch]
    before = run.probabilities(earlier[-1]) if earlier else None
    if before is not None and len(before) == len(probs):
        now, then = probs.argmax(1), before.argmax(1)
        moved = now != then
        np.add.at(entered, (labels[moved], now[moved]), 1)
        np.add.at(left, (labels[moved], then[moved]), 1)
    return {
        "epoch": epoch,
        "classes": classes,
        "counts": cm.tolist(),
        "entered": entered.tolist(),
        "left": left.tolist(),
        "precision": [float(diag[i] / col[i]) if col[i] else 0.0 for i in range(k)],
        "recall": [float(diag[i] / row[i]) if row[i] else 0.0 for i in range(k)],
        "accuracy": float(diag.sum() / max(1, cm.sum())),
        "count": int(cm.sum()),
    }


def cell(run: Run, epoch: int, true: int, predicted: int, order: str = "p") -> list[dict[str, Any]] | None:
    """Up to `CELL_IMAGES` images of one cell in ``order`` (`ORDERS`; by probability where the
    pass has no typicality), each with its probability of the predicted class and, where the
    pass recorded it, its typicality."""
    probs, labels = run.probabilities(epoch), run.labels()
    if probs is None or len(labels) != len(probs):
        return None
    rows = np.flatnonzero((labels == true) & (probs.argmax(1) == predicted))
    names, typical = run.index().get("names", []), run.typicality(epoch)
    return _listing(names, rows, probs[rows, predicted], true == predicted, typical, order)


def cells(run: Run, epoch: int, order: str = "p") -> dict[tuple[int, int], list[dict[str, Any]]] | None:
    """Every cell of one pass that holds images, as `cell` lists it ((true, predicted) ->
    images): one pass over the images, however many classes (an export of 200 classes has at
    most as many cells as images, not 40,000)."""
    probs, labels = run.probabilities(epoch), run.labels()
    if probs is None or len(labels) != len(probs):
        return None
    predicted = probs.argmax(1)
    key = labels * probs.shape[1] + predicted
    by_cell = np.argsort(key, kind="stable")  # by cell, each cell's rows in order
    starts = np.flatnonzero(np.diff(key[by_cell], prepend=-1))
    names, typical = run.index().get("names", []), run.typicality(epoch)
    out = {}
    for rows in np.split(by_cell, starts[1:]):
        t, p = int(labels[rows[0]]), int(predicted[rows[0]])
        out[(t, p)] = _listing(names, rows, probs[rows, p], t == p, typical, order)
    return out


def _listing(
    names: list[str],
    rows: np.ndarray,
    p: np.ndarray,
    diagonal: bool,
    typical: np.ndarray | None,
    order: str,
) -> list[dict[str, Any]]:
    """The images ``rows`` of one cell with ``p``, their probabilities of its predicted class,
    and the pass's ``typicality`` (N,) of every image, if recorded."""
    if order not in ORDERS:
        raise ValueError(f"order: {' or '.join(ORDERS)}")
    key = typical[rows] if order == "typicality" and typical is not None else p if diagonal else -p
    items: list[dict[str, Any]] = []
    for i in np.argsort(key, kind="stable")[:CELL_IMAGES]:
        row = int(rows[i])
        items.append({"index": row, "name": str(names[row]), "p": float(p[i])})
        if typical is not None:
            items[-1]["typicality"] = float(typical[row])
    return items


def _passes(run: Run) -> list[tuple[int, np.ndarray]]:
    """(epoch, probabilities) of every recorded pass that fits the index, in order."""
    n = len(run.labels())
    return [(e, p) for e in run.pass_epochs() if (p := run.probabilities(e)) is not None and len(p) == n]


def history(run: Run, index: int) -> list[dict[str, float]] | None:
    """Validation image ``index``'s probability of its true class at every recorded pass."""
    labels = run.labels()
    if not 0 <= index < len(labels):
        return None
    return [{"epoch": e, "p_true": float(p[index, labels[index]])} for e, p in _passes(run)]


def histories(run: Run) -> list[list[dict[str, float]]]:
    """Every validation image's `history`, each pass read once."""
    labels = run.labels()
    rows = np.arange(len(labels))
    passes = [(e, p[rows, labels].tolist()) for e, p in _passes(run)]
    return [[{"epoch": e, "p_true": p_true[i]} for e, p_true in passes] for i in rows]


def suspects(run: Run, limit: int = 200) -> list[dict[str, Any]]:
    """Images to check for label noise: wrong with at least `SUSPECT_CONFIDENCE` in each of the
    last `SUSPECT_PASSES` passes, or whose predicted class flipped in at least half of the
    recorded passes; the most confidently wrong first."""
    labels, names = run.labels(), run.index().get("names", [])
    passes = [p for _, p in _passes(run)]
    if not passes:
        return []
    stack = np.stack(passes)  # (P, N, classes)
    predicted = stack.argmax(2)  # (P, N)
    p_true = stack[:, np.arange(len(labels)), labels]  # (P, N)
    last = stack[-SUSPECT_PASSES:]
    wrong_sure = ((last.argmax(2) != labels) & (last.max(2) >= SUSPECT_CONFIDENCE)).all(0)
    flips = (predicted[1:] != predicted[:-1]).sum(0) if len(passes) > 1 else np.zeros(len(labels), int)
    flipping = flips * 2 >= max(2, len(passes) - 1)
    rows = np.flatnonzero(wrong_sure | flipping)
    rows = rows[np.argsort(p_true[-1, rows], kind="stable")][:limit]
    classes = run.index().get("classes", [])
    return [
        {
            "index": int(i),
            "name": str(names[i]),
            "label": classes[int(labels[i])] if classes else int(labels[i]),
            "predicted": classes[int(predicted[-1, i])] if classes else int(predicted[-1, i]),
            "p_true": float(p_true[-1, i]),
            "flips": int(flips[i]),
            "reason": "confidently wrong" if wrong_sure[i] else "flips",
        }
        for i in rows
    ]


def suspects_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["name", "label", "predicted", "p_true", "flips", "reason"])
    for r in rows:
        row = [r["name"], r["label"], r["predicted"], f"{r['p_true']:.4f}", r["flips"], r["reason"]]
        writer.writerow([_inert(c) for c in row])
    return out.getvalue()


def _inert(cell: object) -> object:
    """A text cell a spreadsheet would run as a formula (=, +, -, @ first) is quoted."""
    return "'" + cell if isinstance(cell, str) and cell[:1] in ("=", "+", "-", "@") else cell


def disagreements(a: Run, b: Run, limit: int = CELL_IMAGES) -> dict[str, Any] | None:
    """Two runs' last validation passes over the same images (matched by name): the images
    ``a`` gets right and ``b`` wrong, and the other way round, the surest disagreements first.
    None when they have no pass, or other classes."""
    ia, ib = a.index(), b.index()
    ea, eb = a.pass_epochs(), b.pass_epochs()
    if not ea or not eb or ia.get("classes") != ib.get("classes"):
        return None
    pa, pb = a.probabilities(ea[-1]), b.probabilities(eb[-1])
    la, lb = a.labels(), b.labels()
    if pa is None or pb is None or len(pa) != len(la) or len(pb) != len(lb):
        return None
    row_b = {name: i for i, name in enumerate(ib.get("names", []))}
    pairs = np.array([(i, row_b[n]) for i, n in enumerate(ia.get("names", [])) if n in row_b], dtype=np.int64)
    if len(pairs) == 0:
        return {"a_only": [], "b_only": [], "common": 0, "epochs": [ea[-1], eb[-1]]}
    rows_a, rows_b = pairs[:, 0], pairs[:, 1]
    true = la[rows_a]
    right_a = pa[rows_a].argmax(1) == true
    right_b = pb[rows_b].argmax(1) == true
    p_a, p_b = pa[rows_a, true], pb[rows_b, true]
    names = ia.get("names", [])

    def listing(mask: np.ndarray, gap: np.ndarray) -> list[dict[str, Any]]:
        picked = np.flatnonzero(mask)
        picked = picked[np.argsort(-gap[picked], kind="stable")][:limit]
        return [
            {"index": int(rows_a[j]), "index_b": int(rows_b[j]), "name": str(names[rows_a[j]]),
             "p_a": float(p_a[j]), "p_b": float(p_b[j])}
            for j in picked
        ]  # fmt: skip

    return {
        "a_only": listing(right_a & ~right_b, p_a - p_b),
        "b_only": listing(right_b & ~right_a, p_b - p_a),
        "common": len(pairs),
        "epochs": [ea[-1], eb[-1]],
    }

"""Runs as the dashboard sees them: read from their run directories, never written.

A `Run` reads what training writes (`pawlab.runlog`): the event log, the recorded validation
passes and thumbnails. Everything here tolerates a run that is still being written (a torn
last line, a pass not yet there) or deleted while it is read: a missing piece is empty, not an
error. Images are named by their index in the validation set, checked against its size; no
path from a request reaches the file system.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pawlab import runlog

CELL_IMAGES = 100  # thumbnails shown for one cell of the confusion matrix
SUSPECT_PASSES = 3  # "suspect" images: confidently wrong in the last passes ...
SUSPECT_CONFIDENCE = 0.8  # ... with the wrong class at least this probable, or flipping


def run_id(path: Path) -> str:
    """An opaque, stable id for a run directory (its resolved path, hashed)."""
    return hashlib.blake2b(str(path.resolve()).encode(), digest_size=6).hexdigest()


def is_run_dir(path: Path) -> bool:
    return (path / runlog.EVENTS).is_file() or (path / runlog.CONFIG).is_file()


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


@dataclass
class Run:
    """One run directory, read lazily; what was read is kept until its file changes."""

    path: Path
    _files: dict[Path, tuple[tuple[int, int], Any]] = field(default_factory=dict)  # see `_read`

    @property
    def id(self) -> str:
        return run_id(self.path)

    def _read(self, path: Path, load: Callable[[Path], Any]) -> Any:
        """``load(path)``, read again only when the file's size or time changes (raises what
        ``stat`` and ``load`` raise)."""
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        cached = self._files.get(path)
        if cached is None or cached[0] != stamp:
            cached = self._files[path] = (stamp, load(path))
        return cached[1]

    def index(self) -> dict[str, Any]:
        """classes, names and labels of the validation images ({} before training wrote it,
        or when it is not as training writes it)."""

        def load(path: Path) -> dict[str, Any]:
            data = json.loads(path.read_text())
            return data if _valid_index(data) else {}  # checked once per change of the file

        try:
            found: dict[str, Any] = self._read(self.path / runlog.VALIDATION_INDEX, load)
        except (OSError, ValueError):
            return {}
        return found

    def events(
        self, start: runlog.Position = runlog.Position()
    ) -> tuple[list[dict[str, Any]], runlog.Position]:
        return runlog.read_json_lines(self.path / runlog.EVENTS, start)

    def summary(self) -> dict[str, Any]:
        """What the run list shows: name, classes, state, epochs, best validation loss."""
        events, _ = self.events()
        epochs = [e for e in events if e.get("event") == "epoch"]
        last = str(events[-1].get("event")) if events else "waiting"
        state = {"end": "finished", "failed": "failed"}.get(last, "running" if events else "waiting")
        config = runlog.read_config(self.path) or {}
        losses = [e["val_loss"] for e in epochs if isinstance(e.get("val_loss"), int | float)]
        losses = [v for v in losses if math.isfinite(v)]
        return {
            "id": self.id,
            "name": self.path.name,
            "classes": config.get("classes", []),
            "state": state,
            "epochs": len(epochs),
            "best_val_loss": min(losses) if losses else None,
        }

    def pass_epochs(self) -> list[int]:
        return runlog.pass_epochs(self.path) if self.path.is_dir() else []

    def probabilities(self, epoch: int) -> np.ndarray | None:
        """float32 (N, classes) of one validation pass, or None when it is not (yet) there, or
        does not fit the validation index (a damaged pass, or a class count that changed)."""
        try:
            probs: np.ndarray = self._read(
                self.path / runlog.pass_file(epoch),
                lambda p: np.load(p, allow_pickle=False).astype(np.float32),
            )
        except (OSError, ValueError, EOFError):  # not (yet) a whole array
            return None
        index = self.index()
        if probs.shape != (len(index.get("labels", [])), len(index.get("classes", []))):
            return None
        return probs

    def labels(self) -> np.ndarray:
        return np.asarray(self.index().get("labels", []), dtype=np.int64)

    def thumb(self, index: int) -> Path | None:
        """The thumbnail of validation image ``index``, if that index exists."""
        n = len(self.index().get("labels", []))
        if not 0 <= index < n:
            return None
        p = self.path / runlog.THUMBS / f"{index}.jpg"
        return p if p.is_file() else None


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


def cell(run: Run, epoch: int, true: int, predicted: int) -> list[dict[str, Any]] | None:
    """Up to `CELL_IMAGES` images of one cell: on the diagonal the least sure first, off it
    the most confidently wrong first; each with its probability of the predicted class."""
    probs, labels = run.probabilities(epoch), run.labels()
    names = run.index().get("names", [])
    if probs is None or len(labels) != len(probs):
        return None
    rows = np.flatnonzero((labels == true) & (probs.argmax(1) == predicted))
    p = probs[rows, predicted]
    order = np.argsort(p if true == predicted else -p, kind="stable")[:CELL_IMAGES]
    return [{"index": int(rows[i]), "name": str(names[rows[i]]), "p": float(p[i])} for i in order]


def history(run: Run, index: int) -> list[dict[str, float]] | None:
    """Validation image ``index``'s probability of its true class at every recorded pass."""
    labels = run.labels()
    if not 0 <= index < len(labels):
        return None
    out = []
    for epoch in run.pass_epochs():
        probs = run.probabilities(epoch)
        if probs is not None and len(probs) == len(labels):
            out.append({"epoch": epoch, "p_true": float(probs[index, labels[index]])})
    return out


def suspects(run: Run, limit: int = 200) -> list[dict[str, Any]]:
    """Images to check for label noise: wrong with at least `SUSPECT_CONFIDENCE` in each of the
    last `SUSPECT_PASSES` passes, or whose predicted class flipped in at least half of the
    recorded passes; the most confidently wrong first."""
    labels, names = run.labels(), run.index().get("names", [])
    passes = [
        p for e in run.pass_epochs() if (p := run.probabilities(e)) is not None and len(p) == len(labels)
    ]
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
        cells = [r["name"], r["label"], r["predicted"], f"{r['p_true']:.4f}", r["flips"], r["reason"]]
        writer.writerow([_inert(c) for c in cells])
    return out.getvalue()


def _inert(cell: object) -> object:
    """A text cell a spreadsheet would run as a formula (=, +, -, @ first) is quoted."""
    return "'" + cell if isinstance(cell, str) and cell[:1] in ("=", "+", "-", "@") else cell


def _valid_index(data: object) -> bool:
    """index.json as training writes it: classes, and as many names as labels, each label a
    class's number."""
    if not isinstance(data, dict):
        return False
    classes, names, labels = data.get("classes"), data.get("names"), data.get("labels")
    return (
        isinstance(classes, list)
        and isinstance(names, list)
        and isinstance(labels, list)
        and len(names) == len(labels)
        and all(isinstance(v, int) and 0 <= v < len(classes) for v in labels)
    )


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

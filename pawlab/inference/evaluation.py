"""Evaluation on labelled data: accuracy, log loss, confusion matrix and figures."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pawlab import display
from pawlab.data import EvalSet, ImageSet, load_eval_set
from pawlab.data.workers import entry_point
from pawlab.inference.model import Model
from pawlab.inference.runtimes import load_model
from pawlab.terminal import printable


@dataclass
class EvalReport:
    classes: list[str]
    count: int
    accuracy: float
    log_loss: float
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class
    precision: dict[str, float]
    recall: dict[str, float]
    split: str  # which images were evaluated, in words
    figures: dict[str, str] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    top_losses: list[dict[str, Any]] = field(default_factory=list)  # the most confidently wrong
    # their pixels, as shrunk for thumbnails (uint8 (h, w, C)); not in the JSON
    top_loss_pixels: list[np.ndarray] = field(default_factory=list, compare=False)
    # what the model's in-distribution model would refuse (`unknown_summary`); None without one
    unknown: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "log_loss": self.log_loss,
            "count": self.count,
            "classes": self.classes,
            "confusion_matrix": self.confusion_matrix,
            "precision": self.precision,
            "recall": self.recall,
            "evaluated": self.split,
            "figures": self.figures,
            "top_losses": self.top_losses,
            "skipped": self.skipped,
            "unknown": self.unknown,
        }

    def table(self) -> str:
        w = max(8, *(len(c) for c in self.classes))
        lines = [
            f"evaluated {self.count} images ({self.split})",
            f"accuracy  {self.accuracy:.4f}",
            f"log loss  {self.log_loss:.4f}",
            *_unknown_lines(self.unknown),
            "",
            f"{'class':<{w}}  precision  recall",
        ]
        lines += [f"{c:<{w}}  {self.precision[c]:>9.4f}  {self.recall[c]:>6.4f}" for c in self.classes]
        lines += [
            "",
            "confusion matrix (rows: true, columns: predicted)",
            " " * w + "  " + "  ".join(f"{c:>{w}}" for c in self.classes),
        ]
        for c, row in zip(self.classes, self.confusion_matrix, strict=True):
            lines.append(f"{c:<{w}}  " + "  ".join(f"{v:>{w}}" for v in row))
        for name, path in self.figures.items():
            lines.append(f"{name}: {path}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} files (see --json for the list)")
        return printable("\n".join(lines))  # names from data never drive a terminal

    def __repr__(self) -> str:
        return (
            f"EvalReport({self.count:,} images, accuracy {self.accuracy:.4f}, log loss {self.log_loss:.4f})"
        )

    def _repr_html_(self) -> str:
        per_class = [
            (c, self.precision[c], self.recall[c], sum(row))
            for c, row in zip(self.classes, self.confusion_matrix, strict=True)
        ]
        parts = [
            display.fields(
                {
                    "images": self.count,
                    "evaluated": self.split,
                    "accuracy": self.accuracy,
                    "log loss": self.log_loss,
                }
            ),
            display.table(per_class, ["class", "precision", "recall", "images"]),
            display.section(
                "confusion matrix (rows: true, columns: predicted)",
                display.confusion_matrix(self.confusion_matrix, self.classes),
            ),
        ]
        if self.top_losses:
            parts.append(display.section("the highest losses (wrong or unsure)", self._top_losses_table()))
        if self.skipped:
            parts.append(
                display.paragraph(
                    f"skipped {len(self.skipped)} files, e.g. {self.skipped[0]['name']}: "
                    f"{self.skipped[0]['reason']}"
                )
            )
        if self.figures:
            parts.append(display.fields(self.figures))
        return display.section(repr(self), *parts)

    def _top_losses_table(self) -> display.Html:
        rows = []
        for i, worst in enumerate(self.top_losses):
            pixels = self.top_loss_pixels[i] if i < len(self.top_loss_pixels) else None
            thumb = display.thumbnail(pixels, title=worst["name"]) if pixels is not None else ""
            rows.append(
                [thumb, worst["name"], worst["true"], worst["predicted"], worst["p_true"], worst["loss"]]
            )
        return display.table(rows, ["image", "name", "true", "predicted", "p(true)", "loss"])


def _unknown_lines(unknown: dict[str, Any] | None) -> list[str]:
    if unknown is None:
        return []
    refused, kept = unknown["refused"], unknown["accepted"]
    line = f"unknown   {refused} refused as none of the classes (typicality below {unknown['threshold']:g})"
    if not kept["count"]:
        return [line + "; none accepted"]
    return [
        line,
        f"accepted  {kept['count']}: accuracy {kept['accuracy']:.4f}, log loss {kept['log_loss']:.4f}",
    ]


def unknown_summary(
    probs: np.ndarray, labels: np.ndarray, typicality: np.ndarray, threshold: float
) -> dict[str, Any]:
    """How many labelled images an in-distribution model refuses at ``threshold``, and the
    accuracy and log loss of those it accepts."""
    kept = typicality >= threshold
    accepted: dict[str, Any] = {"count": int(kept.sum())}
    if kept.any():
        pred = probs[kept].argmax(1)
        p_true = np.clip(probs[kept][np.arange(int(kept.sum())), labels[kept]], 1e-15, 1.0)
        accepted |= {
            "accuracy": float((pred == labels[kept]).mean()),
            "log_loss": float(-np.log(p_true).mean()),
        }
    return {"threshold": threshold, "refused": int((~kept).sum()), "accepted": accepted}


def metrics_from_probs(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, log loss, confusion matrix, per-class precision and recall."""
    k = len(classes)
    pred = probs.argmax(1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    p_true = np.clip(probs[np.arange(len(labels)), labels], 1e-15, 1.0)
    col, row = cm.sum(0), cm.sum(1)
    diag = np.diag(cm)
    return {
        "accuracy": float((pred == labels).mean()),
        "log_loss": float(-np.log(p_true).mean()),
        "confusion_matrix": cm.tolist(),
        "precision": {c: float(diag[i] / col[i]) if col[i] else 0.0 for i, c in enumerate(classes)},
        "recall": {c: float(diag[i] / row[i]) if row[i] else 0.0 for i, c in enumerate(classes)},
    }


def _report_dir(m: Model, report_dir: str | os.PathLike[str] | None) -> Path:
    """``report_dir``, or beside the model file ``<model>-eval/`` (``model-eval/`` for a model
    in memory); created."""
    if report_dir is None:
        base = m.path if m.path is not None else Path("model")
        report_dir = base.with_name(base.stem + "-eval")
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _figures(
    images: ImageSet, probs: np.ndarray, classes: list[str], cm: list[list[int]], out: Path, samples: int
) -> dict[str, str]:
    """The three PNGs in ``out``, name -> path; ``probs`` (N, classes) for ``images``."""
    from pawlab.figures import confusion_matrix_plot, prediction_grid, top_losses_grid

    x, labels = images.images, images.labels
    figures = {
        "predictions": prediction_grid(x, labels, probs, classes, out / "predictions.png", samples=samples),
        "confusion_matrix": confusion_matrix_plot(cm, classes, out / "confusion_matrix.png"),
        "top_losses": top_losses_grid(x, labels, probs, classes, out / "top_losses.png"),
    }
    return {k: str(v) for k, v in figures.items()}


def _top_losses(
    images: ImageSet, probs: np.ndarray, classes: list[str]
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """The 12 most confidently wrong images (largest loss first), for the report, and their
    pixels shrunk for thumbnails."""
    from pawlab.figures import top_losses

    labels = images.labels
    worst = top_losses(labels, probs, 12)
    found = [
        {
            "name": images.names[i],
            "true": classes[int(labels[i])],
            "predicted": classes[int(probs[i].argmax())],
            "loss": loss,
            "p_true": float(probs[i, int(labels[i])]),
        }
        for i, loss in worst
    ]
    return found, [display.shrink(images.images[i]) for i, _ in worst]


def eval_set_for(
    model: Model,
    data: str | os.PathLike[str],
    *,
    workers: int = 0,
    progress: bool = True,
    class_map: Mapping[str, str] | None = None,
    layout: str | None = None,
) -> EvalSet:
    """The labelled images to judge ``model`` on, at its input size: the source's validation
    split, never the images the model was trained on (see `pawlab.data.load_eval_set`)."""
    pre = model.preprocessing
    return load_eval_set(
        data,
        pre.size,
        pre.channels,
        model.classes,
        trained_on=model.meta.get("training", {}).get("data", {}),
        workers=workers,
        progress=progress,
        resize=pre.resize,
        class_map=class_map,
        layout=layout,
    )


@entry_point
def evaluate(
    model: Model | str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    report_dir: str | os.PathLike[str] | None = None,
    workers: int = 0,
    progress: bool = True,
    samples: int = 24,
    tta: bool = False,
    class_map: Mapping[str, str] | None = None,
    layout: str | None = None,
    unknown_threshold: float | None = None,
) -> EvalReport:
    """Evaluate on labelled data: its validation split when it has one, never training images.
    ``class_map``: the data's class names in the model's terms (``{"cats": "cat"}``); ``layout``:
    how the data's top folders are read (default: as in training for the model's own source,
    else auto).

    Writes to ``report_dir`` (default: beside the model file, ``<model>-eval/``)
    ``predictions.png`` (sample predictions, wrong ones marked), ``confusion_matrix.png`` and
    ``top_losses.png`` (the most confidently wrong images). ``tta``: test-time augmentation.
    With an in-distribution model, the report says how many images it refuses (typicality
    below ``unknown_threshold``, default the model's: 0.05) and how the accepted ones score.
    """
    m = model if isinstance(model, Model) else load_model(model)
    if unknown_threshold is not None:
        m.unknown_threshold = unknown_threshold
    ev = eval_set_for(m, data, workers=workers, progress=progress, class_map=class_map, layout=layout)
    m.prepare_for(len(ev.images), tta)
    probs, typical = m.predict_scored(ev.images.images, tta=tta, cached=True, progress=progress)
    stats = metrics_from_probs(probs, ev.images.labels, m.classes)
    if typical is not None:
        stats["unknown"] = unknown_summary(probs, ev.images.labels, typical, m.unknown_threshold)
    out = _report_dir(m, report_dir)
    worst, pixels = _top_losses(ev.images, probs, m.classes)
    return EvalReport(
        classes=m.classes,
        count=len(ev.images),
        split=ev.description + (", test-time augmentation" if tta else ""),
        figures=_figures(ev.images, probs, m.classes, stats["confusion_matrix"], out, samples),
        top_losses=worst,
        top_loss_pixels=pixels,
        skipped=[{"name": s.name, "reason": s.reason} for s in ev.skipped],
        **stats,
    )

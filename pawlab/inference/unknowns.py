"""A model file's in-distribution model from the outside: fit it for a file trained before
pawlab fitted one (`calibrate_unknown`), and measure how well it tells a labelled source's
images from images that are none of its classes (`evaluate_unknown`)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pawlab import unknown
from pawlab.data import Skipped, load_unlabeled
from pawlab.data.datasets import decode_task, decode_tasks
from pawlab.data.sources import Source as DataSource
from pawlab.data.workers import default_workers, parallel_map
from pawlab.errors import DataError, ModelFileError
from pawlab.inference.evaluation import _report_dir, eval_set_for
from pawlab.inference.features import trunk_features
from pawlab.inference.model import Model
from pawlab.inference.splits import training_splits
from pawlab.inference.typicality import Source, network_features, record_unknown
from pawlab.terminal import printable

SHOWN = 12  # out-of-distribution images in each source's figure: the most typical


def _source(model: Model, images: np.ndarray, labels: np.ndarray | None, progress: bool, what: str) -> Source:
    """What the network reads for uint8 images (N, H, W, C): a frozen trunk's features from
    the feature cache (as training fits on them), else the images."""
    net = model.network
    if net.trunk_length is None:
        return Source(images, labels)
    feats = trunk_features(net.trunk, images, model.preprocessing, model.device, progress=progress, what=what)
    return Source(feats, labels, cached=True)


def calibrate_unknown(
    model_path: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    workers: int = 0,
    progress: bool = True,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> unknown.State:
    """Fit the in-distribution model of the model file at ``model_path`` on ``data``'s training
    images (`training_splits`), calibrate it on its validation images and keep it in the file,
    in place of any earlier one (rewritten atomically: whole, or untouched). ``log`` gets the
    line training prints about it."""
    model = Model.load(model_path, device, precision="fp32", compile="off")
    ds = training_splits(model, data, workers=workers, progress=progress)
    train = _source(model, ds.train.images, ds.train.labels, progress, "training images")
    validation = _source(model, ds.validation.images, None, progress, "validation images")
    try:
        return record_unknown(
            Path(model_path), model.network, train, validation, model.preprocessing, model.device, log
        )
    except ValueError as exc:  # a network without a linear layer to read features before
        raise ModelFileError(f"{model_path}: no in-distribution model can be fitted: {exc}") from None


@dataclass
class OtherSource:
    """How one out-of-distribution source fares: its images' typicality against the
    in-distribution images'."""

    source: str
    images: int
    fpr_at_95: float  # share of its images above the score that keeps 95% of the in-distribution ones
    auroc: float
    accepted: float  # share of its images at or above the threshold: answered as one of the classes
    figure: str  # its most typical images (the worst mistakes), captioned with their typicality
    most_typical: list[dict[str, Any]]  # [{"name", "typicality"}], most typical first
    skipped: list[Skipped] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "images": self.images,
            "fpr_at_95_tpr": self.fpr_at_95,
            "auroc": self.auroc,
            "accepted": self.accepted,
            "figure": self.figure,
            "most_typical": self.most_typical,
            "skipped": [{"name": s.name, "reason": s.reason} for s in self.skipped],
        }


@dataclass
class UnknownReport:
    """`evaluate_unknown`'s findings: the in-distribution images, then each other source."""

    data: str
    evaluated: str  # which in-distribution images, in words
    count: int
    threshold: float
    refused: float  # share of the in-distribution images below the threshold
    others: list[OtherSource]

    def to_json(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "evaluated": self.evaluated,
            "count": self.count,
            "threshold": self.threshold,
            "refused": self.refused,
            "others": [o.to_json() for o in self.others],
        }

    def table(self) -> str:
        w = max(24, *(len(o.source) for o in self.others))
        lines = [
            f"in distribution: {self.count} images of {self.data} ({self.evaluated})",
            f"refused at typicality {self.threshold:g}: {self.refused:.1%}",
            "",
            f"{'out of distribution':<{w}}  {'images':>6}  {'FPR@95%TPR':>10}  {'AUROC':>6}  {'accepted':>8}",
        ]
        lines += [
            f"{o.source:<{w}}  {o.images:>6}  {o.fpr_at_95:>10.1%}  {o.auroc:>6.4f}  {o.accepted:>8.1%}"
            for o in self.others
        ]
        lines.append("")
        lines += [f"most typical of {o.source}: {o.figure}" for o in self.others]
        lines += [
            f"skipped {len(o.skipped)} files of {o.source} (see --json)" for o in self.others if o.skipped
        ]
        return printable("\n".join(lines))

    def __repr__(self) -> str:
        shown = ", ".join(f"{o.source}: AUROC {o.auroc:.4f}" for o in self.others)
        return f"UnknownReport({self.count} in distribution, {self.refused:.1%} refused; {shown})"


Listed = tuple[
    DataSource, list[str], list[Skipped]
]  # an unlabelled source, its image names, what was skipped


def _decoded(model: Model, listed: Listed, workers: int) -> tuple[np.ndarray, list[str], list[Skipped]]:
    """A listed unlabelled source's images uint8 (N, H, W, C) at the model's input, their
    names, and the files skipped (not images, or undecodable)."""
    pre = model.preprocessing
    source, names, skipped = listed
    tasks = decode_tasks(source, names, pre.size, pre.channels, pre.resize)
    decoded = list(parallel_map(decode_task, tasks, workers=workers or default_workers()))
    skipped = skipped + [Skipped(n, a) for n, a in zip(names, decoded, strict=True) if isinstance(a, str)]
    kept = [(n, a) for n, a in zip(names, decoded, strict=True) if not isinstance(a, str)]
    if not kept:
        raise DataError(f"{source.path}: none of its {len(names)} images could be decoded")
    return np.stack([a for _, a in kept]), [n for n, _ in kept], skipped


def _scored(model: Model, state: unknown.State, source: Source) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N,), typicality (N,)) of a source's images, as the in-distribution model was
    calibrated: eager fp32, one view."""
    feats, logits = network_features(model.network, source, model.preprocessing, model.device)
    return unknown.score(state, feats, logits).numpy(), unknown.typicality(state, feats, logits).numpy()


def _figure_name(k: int, source: str) -> str:
    """``most_typical-2-test.png`` for the third source, a folder named test."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source).stem) or "source"
    return f"most_typical-{k + 1}-{stem}.png"


def _other(
    model: Model,
    state: unknown.State,
    path: str | os.PathLike[str],
    listed: Listed,
    inside: np.ndarray,
    figure: Path,
    workers: int,
    progress: bool,
) -> OtherSource:
    """Score an out-of-distribution source against the in-distribution scores ``inside`` and
    write the grid of its most typical images to ``figure``."""
    from pawlab.figures import RIGHT, WRONG, captioned_grid

    images, names, skipped = _decoded(model, listed, workers)
    scores, typical = _scored(model, state, _source(model, images, None, progress, f"images of {path}"))
    accepted = typical >= model.unknown_threshold
    worst = np.argsort(-scores, kind="stable")[:SHOWN]
    captioned_grid(
        images[worst],
        [f"typicality {typical[i]:.3f}" for i in worst],
        figure,
        colours=[WRONG if accepted[i] else RIGHT for i in worst],
        columns=min(6, len(worst)),
        tile=128,
    )
    return OtherSource(
        source=str(path),
        images=len(images),
        fpr_at_95=unknown.fpr_at_95(inside, scores),
        auroc=unknown.auroc(inside, scores),
        accepted=float(accepted.mean()),
        figure=str(figure),
        most_typical=[{"name": names[i], "typicality": float(typical[i])} for i in worst],
        skipped=skipped,
    )


def evaluate_unknown(
    model: Model | str | os.PathLike[str],
    data: str | os.PathLike[str],
    others: Sequence[str | os.PathLike[str]],
    *,
    report_dir: str | os.PathLike[str] | None = None,
    unknown_threshold: float | None = None,
    workers: int = 0,
    progress: bool = True,
    class_map: Mapping[str, str] | None = None,
    layout: str | None = None,
) -> UnknownReport:
    """How well the model's in-distribution model tells ``data``'s validation images (as
    `evaluate` takes them, never training images) from each of ``others`` (folders or zips of
    images that are none of its classes, unlabelled): per other source, the false-positive
    rate at 95% true-positive rate, the AUROC and the share accepted at ``unknown_threshold``
    (default the model's, 0.05); and the share of ``data``'s images refused. Writes, per other
    source, a grid of its most typical images (the worst mistakes) to ``report_dir`` (default:
    beside the model file, ``<model>-eval/``). ``class_map`` and ``layout``: how ``data`` is
    read, as for `evaluate`."""
    m = model if isinstance(model, Model) else Model.load(model, precision="fp32", compile="off")
    if m.unknown is None:
        raise ModelFileError(
            f"{m.path}: has no in-distribution model (trained before pawlab fitted one); "
            f"fit it with `pawlab calibrate-unknown {m.path} DATA`"
        )
    if unknown_threshold is not None:
        m.unknown_threshold = unknown_threshold
    if not others:
        raise DataError("evaluate-unknown: name at least one source of images that are none of the classes")
    pre = m.preprocessing
    listed = [load_unlabeled(path, pre.size, pre.channels) for path in others]  # any missing: before the work
    ev = eval_set_for(m, data, workers=workers, progress=progress, class_map=class_map, layout=layout)
    images = ev.images.images
    inside, typical = _scored(m, m.unknown, _source(m, images, None, progress, "in-distribution images"))
    out = _report_dir(m, report_dir)
    measured = [
        _other(m, m.unknown, path, listing, inside, out / _figure_name(k, str(path)), workers, progress)
        for k, (path, listing) in enumerate(zip(others, listed, strict=True))
    ]
    refused = float((typical < m.unknown_threshold).mean())
    return UnknownReport(str(data), ev.description, len(images), m.unknown_threshold, refused, measured)

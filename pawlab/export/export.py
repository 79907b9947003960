"""`export_onnx`: a model file as a checked ONNX file, fp32 or int8."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from pawlab.atomic import atomic_write_bytes, check_output_file
from pawlab.errors import AgreementError, ConfigError, DataError
from pawlab.export.check import TOLERANCES, compare, summary
from pawlab.export.graph import to_onnx
from pawlab.export.onnxfile import metadata, run_session, set_metadata
from pawlab.inference import Model, load_model
from pawlab.inference.ort import session_for
from pawlab.inference.runtimes import CALIBRATION_IMAGES, CHECK_IMAGES
from pawlab.inference.splits import CheckImages, check_images, sample

FORMATS = ("onnx",)


@dataclass(frozen=True)
class ExportReport:
    """What `export_onnx` wrote: the file, its precision and how it was checked (as its
    metadata records it)."""

    path: Path
    precision: str
    agreement: dict[str, Any]

    def __repr__(self) -> str:
        return f"ExportReport({self.path}, {self.precision}, checked: {bool(self.agreement.get('checked'))})"


def export_onnx(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | None = None,
    check: bool = True,
    int8: bool = False,
    force: bool = False,
    workers: int = 0,
    progress: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> ExportReport:
    """Write ``model`` (a pawlab model file) to ``out`` as an ONNX graph from uint8 pixels
    (N, H, W, C) to probabilities (N, classes), its metadata saying what a program needs
    (`pawlab.export.onnxfile`). It is checked with ``onnx.checker`` and, unless not ``check``,
    against pawlab's fp32 answers on validation images of the model's own data (or ``data``'s);
    ``int8``: quantized (`pawlab.inference.quantize`), calibrated on its training images, and
    checked against the fp32 graph. A check outside `TOLERANCES` is an `AgreementError` and
    writes nothing, unless ``force``. ``log``: each step's line."""
    if int8 and not check:
        raise ConfigError("--int8 needs the model's data (to calibrate and check on): drop --no-check")
    path = check_output_file(out, "ONNX file")
    m = load_model(model, device="cpu", precision="fp32", compile="off")
    images = check_images(m, data, workers, progress) if check else None
    graph = to_onnx(m.network, m.preprocessing)
    onnx.checker.check_model(graph, full_check=True)
    log(f"exported the fp32 graph ({len(graph.SerializeToString()) / 1e6:.1f} MB); onnx.checker passed")
    agreement: dict[str, Any] = {"checked": False}
    if images is not None:
        agreement = {"checked": True, "images": images.description}
        agreement["fp32"] = _checked("fp32", m, graph, images, force, log)
    precision = "fp32"
    if int8 and images is not None:
        graph, agreement["int8"] = _int8(graph, m, images, force, log)
        precision = "int8"
    digest = _sha256(Path(model))
    set_metadata(graph, metadata(m.classes, m.preprocessing, precision, Path(model), digest, agreement))
    atomic_write_bytes(path, graph.SerializeToString())
    return ExportReport(path, precision, agreement)


def _checked(
    precision: str,
    m: Model,
    graph: onnx.ModelProto,
    images: CheckImages,
    force: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The fp32 graph against pawlab's fp32 probabilities on the validation images."""
    val = sample(images.validation, CHECK_IMAGES)
    log(f"checking the {precision} graph against pawlab's fp32 answers on {len(val)} validation images")
    reference = m.predict_proba(val.images)
    probs = run_session(session_for(graph.SerializeToString()), val.images)
    figures = compare(reference, probs, val.labels, TOLERANCES[precision])
    _verdict(f"the {precision} graph", "pawlab's fp32", figures, force, log)
    return figures


def _int8(
    graph: onnx.ModelProto, m: Model, images: CheckImages, force: bool, log: Callable[[str], None]
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """``graph`` quantized, and how it agrees with ``graph`` on the validation images."""
    from pawlab.inference.quantize import quantize_int8

    if not len(images.train):
        raise DataError(f"{images.description}: no training images beside it to calibrate int8 on")
    calibration = sample(images.train, CALIBRATION_IMAGES)
    log(f"quantizing to int8, calibrated on {len(calibration)} training images")
    quantized = quantize_int8(graph, calibration.images)
    onnx.checker.check_model(quantized, full_check=True)
    val = sample(images.validation, CHECK_IMAGES)
    reference = run_session(session_for(graph.SerializeToString()), val.images)
    probs = run_session(session_for(quantized.SerializeToString()), val.images)
    figures = compare(reference, probs, val.labels, TOLERANCES["int8"])
    figures["calibration_images"] = len(calibration)
    _verdict("the int8 graph", "the fp32 graph", figures, force, log)
    return quantized, figures


def _verdict(
    what: str, against: str, figures: dict[str, Any], force: bool, log: Callable[[str], None]
) -> None:
    """Log the figures; an `AgreementError` when they are outside the tolerances, unless ``force``."""
    if figures["ok"]:
        log(f"{what} agrees with {against} on {summary(figures)}")
        return
    line = f"{what} does not agree with {against} ({'; '.join(figures['failed'])}) on {summary(figures)}"
    if not force:
        raise AgreementError(f"{line}; nothing written (--force writes it anyway)")
    log(f"{line}; written anyway (--force)")


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()

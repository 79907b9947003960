"""A pawlab ONNX file: its metadata, and opening it for inference with onnxruntime.

The file's ``metadata_props`` (string keys and values; JSON where a value is structured) make
it enough on its own for another program:

``classes``        JSON list of the class names, in the order of the output's columns
``preprocessing``  JSON: ``size`` [H, W], ``channels``, ``resize`` (``squash``: the whole image
                   resized to size; ``crop``: the shorter side fitted, the centre kept), and the
                   ``mean`` and ``std`` already applied inside the graph
``input``          JSON: the input's name, dtype, layout and shape (uint8 pixels (N, H, W, C))
``output``         JSON: the output's name, dtype and shape (probabilities (N, classes))
``precision``      ``fp32`` or ``int8``
``agreement``      JSON: how the file was checked, with the figures (`pawlab.export.check`)
``pawlab_format``, ``pawlab_version``, ``source_model``, ``source_sha256``: what made it, from what
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from pawlab._version import __version__
from pawlab.errors import ModelFileError
from pawlab.export.graph import INPUT, OUTPUT
from pawlab.inference.ort import run_batched, session_for
from pawlab.preprocessing import Preprocessing

FORMAT = "pawlab-onnx 1"
REQUIRED = ("pawlab_format", "classes", "preprocessing")
RUN_BATCH = 32  # images per onnxruntime call in `OnnxModel.predict_proba`


def metadata(
    classes: list[str],
    pre: Preprocessing,
    precision: str,
    source: Path,
    source_sha256: str,
    agreement: dict[str, Any],
) -> dict[str, str]:
    """The ``metadata_props`` of an exported model (see the module's docstring)."""
    h, w = pre.size
    return {
        "pawlab_format": FORMAT,
        "pawlab_version": __version__,
        "classes": json.dumps(classes),
        "preprocessing": json.dumps(pre.to_json()),
        "input": json.dumps(
            {
                "name": INPUT,
                "dtype": "uint8",
                "layout": "NHWC",
                "shape": ["N", h, w, pre.channels],
                "pixels": "RGB, 0-255" if pre.channels == 3 else "grey, 0-255",
                "note": "resize each image to size by the resize policy; normalisation is in the graph",
            }
        ),
        "output": json.dumps(
            {"name": OUTPUT, "dtype": "float32", "shape": ["N", len(classes)], "columns": "classes"}
        ),
        "precision": precision,
        "source_model": source.name,
        "source_sha256": source_sha256,
        "agreement": json.dumps(agreement),
    }


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replace ``model``'s ``metadata_props`` with ``props``."""
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)


@dataclass(frozen=True)
class OnnxModel:
    """A pawlab ONNX file opened with onnxruntime: ``predict_proba`` of uint8 pixels at the
    model's size, as `pawlab.inference.Model.predict_proba` takes them."""

    path: Path
    session: ort.InferenceSession
    classes: list[str]
    preprocessing: Preprocessing
    meta: dict[str, str]  # the file's metadata_props, as stored

    @property
    def precision(self) -> str:
        return self.meta.get("precision", "fp32")

    def predict_proba(self, pixels: np.ndarray, batch_size: int = RUN_BATCH) -> np.ndarray:
        """uint8 (N, H, W, C) -> probabilities (N, classes) float32."""
        pre = self.preprocessing
        if pixels.dtype != np.uint8 or pixels.shape[1:] != (*pre.size, pre.channels):
            raise ValueError(
                f"expected uint8 (N, {pre.size[0]}, {pre.size[1]}, {pre.channels}), "
                f"got {pixels.dtype} {pixels.shape}"
            )
        return run_session(self.session, pixels, batch_size)


def run_session(session: ort.InferenceSession, pixels: np.ndarray, batch_size: int = RUN_BATCH) -> np.ndarray:
    """uint8 (N, H, W, C) -> `OUTPUT` (N, classes) float32 of a pawlab graph, in batches."""
    return run_batched(session, pixels, batch_size)


def load_onnx(path: str | os.PathLike[str], threads: int | None = None) -> OnnxModel:
    """Open a file written by `pawlab.export.export_onnx` for inference. A missing, damaged
    (truncated, not ONNX) or foreign file (no pawlab metadata) is a one-line `ModelFileError`
    naming it."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such ONNX file" if not p.exists() else f"{p}: not a file")
    try:
        session = session_for(p, threads)
    except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own kinds, unexported)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelFileError(
            f"{p}: not a readable ONNX model (damaged or truncated?): {first[:200]}"
        ) from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ModelFileError(
            f"{p}: an ONNX model without pawlab's metadata ({', '.join(missing)}): "
            "not written by `pawlab export`"
        )
    classes, pre = _decoded(p, meta)
    _check_signature(p, session, pre, len(classes))
    return OnnxModel(p, session, classes, pre, meta)


def _decoded(p: Path, meta: dict[str, str]) -> tuple[list[str], Preprocessing]:
    try:
        classes = json.loads(meta["classes"])
        pre = Preprocessing.from_json(json.loads(meta["preprocessing"]))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelFileError(f"{p}: damaged pawlab metadata (classes or preprocessing): {exc}") from None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ModelFileError(f"{p}: damaged pawlab metadata: classes is not a list of names")
    return classes, pre


def _check_signature(p: Path, session: ort.InferenceSession, pre: Preprocessing, classes: int) -> None:
    """The graph takes `INPUT` uint8 pixels at the metadata's size and gives `OUTPUT`."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    want = [pre.size[0], pre.size[1], pre.channels]
    i, o = inputs.get(INPUT), outputs.get(OUTPUT)
    if i is None or o is None or i.type != "tensor(uint8)" or list(i.shape[1:]) != want:
        raise ModelFileError(
            f"{p}: its graph does not take {INPUT} uint8 (N, {', '.join(map(str, want))}) "
            f"and give {OUTPUT}, as its pawlab metadata says"
        )
    if o.shape[1] != classes:
        raise ModelFileError(f"{p}: its graph gives {o.shape[1]} probabilities for {classes} classes")

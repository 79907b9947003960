"""How a frozen backbone's features are computed: a `Route` (torch fp32 or bf16, onnxruntime
fp32 or int8), as training's ``--runtime`` and ``--precision`` name it, and ``auto``'s choice.

    auto, auto    torch bf16 where the device runs bf16 fast: on such CPUs it is the fastest
                  route for a trunk (EfficientNet-Lite2 at 260x260, 2 cores of an AMD EPYC with
                  AVX-512 BF16 and VNNI, compiled: torch bf16 157 img/s, onnxruntime int8 143,
                  torch fp32 87, onnxruntime fp32 80). Elsewhere, for a long job on a CPU: the
                  fastest of torch fp32, onnxruntime fp32 and int8 (where its features agree
                  with fp32's, `FEATURES_AGREE`), measured once per backbone and CPU and
                  recorded in the user cache (``runtimes/trunk-<key>/``); torch fp32 otherwise.

int8 is quantized as a model's int8 graph is (`pawlab.inference.quantize`), with activation
ranges from up to `CALIBRATION_IMAGES` of the training images: the features' cache key holds
their digest, so the validation set's features come from the same graph as the training set's.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pawlab.atomic import atomic_write_text
from pawlab.data import cache
from pawlab.errors import ConfigError
from pawlab.inference.engine import COMPILED_BATCH, Compiled, folded, to_inputs
from pawlab.inference.features import TORCH_FP32, images_digest, weights_digest
from pawlab.inference.routes import Route, check_route, requested
from pawlab.inference.runtimes import CALIBRATION_IMAGES, recorded_route, timing_key
from pawlab.preprocessing import Preprocessing
from pawlab.runtime import cpu_class, has_vnni, use_bf16

if TYPE_CHECKING:  # onnxruntime is imported only for a job that runs it
    from pawlab.inference.ort import OrtForward

TIMED_IMAGES = 64  # training images each candidate route is timed on, after a warm-up batch
# int8 features stand in for fp32's where, on the timed images, the median image's feature
# vector is within this relative (L2) distance of fp32's: a backbone that int8 breaks is far
# past it. EfficientNet-Lite2, bench/transfer.py features (heads learn from both as from fp32):
# int8 median 0.060 on cats/dogs, bf16 0.045 and 0.047 on cats/dogs and flowers5.
FEATURES_AGREE = 0.1
ROUTE_FORMAT = 1  # bump when what a record's times mean changes: older records are measured again
# this process's graphs of trunks, by weights, preprocessing, precision, calibration, setting
_graphs: dict[str, bytes] = {}


def feature_route(runtime: str, precision: str, device: torch.device) -> Route | None:
    """The route training's settings name for a frozen trunk's features, or None where ``auto``
    leaves a CPU without fast bf16 to measure (`choose`); a one-line `ConfigError` for a pair
    that cannot run."""
    check_route(runtime, precision, device.type)
    route = requested(runtime, precision)
    if route is not None:
        return route
    fast = use_bf16("auto", device)
    if runtime == "torch" or fast:
        return Route("torch", "bf16" if fast else "fp32")
    return None if device.type == "cpu" else TORCH_FP32


def graph_setting() -> str:
    """What else an onnxruntime graph of a trunk, and so its features, depends on: the
    onnxruntime version and, for int8, whether weights keep 7 bits (CPUs without VNNI)."""
    return f"onnxruntime {importlib.metadata.version('onnxruntime')}, 7-bit int8 weights: {not has_vnni()}"


def calibration_rows(n: int) -> np.ndarray:
    """The rows of ``n`` training images that int8's activation ranges come from: a seeded
    sample of at most `CALIBRATION_IMAGES`, in order."""
    return np.sort(np.random.default_rng(0).permutation(n)[:CALIBRATION_IMAGES])


def ort_forward(
    trunk: torch.nn.Module, pre: Preprocessing, precision: str, calibration: np.ndarray | None
) -> OrtForward:
    """An onnxruntime session of ``trunk`` (folded) at ``precision``; int8 calibrated on
    ``calibration`` (uint8 (N, H, W, C) training images). A trunk's graph is made once per
    process: the training and the validation set are run by the same one."""
    from pawlab.inference.ort import OrtForward, session_for

    return OrtForward(session_for(_graph(trunk, pre, precision, calibration)))


def _graph(
    trunk: torch.nn.Module, pre: Preprocessing, precision: str, calibration: np.ndarray | None
) -> bytes:
    digest = images_digest(calibration) if precision == "int8" and calibration is not None else None
    key = f"{weights_digest(trunk)}|{pre.to_json()}|{precision}|{digest}|{graph_setting()}"
    if key not in _graphs:
        _graphs[key] = _make_graph(folded(trunk), pre, precision, calibration)
    return _graphs[key]


def _make_graph(
    runner: torch.nn.Module, pre: Preprocessing, precision: str, calibration: np.ndarray | None
) -> bytes:
    from pawlab.inference.ort import network_graph
    from pawlab.inference.quantize import SETTINGS, quantize_int8

    if precision == "int8" and (calibration is None or not len(calibration)):
        raise ConfigError("precision int8: no training images to calibrate the backbone's int8 graph on")
    try:
        graph = network_graph(runner, pre.size, pre.channels)
    except torch.onnx.errors.OnnxExporterError as exc:  # an operation opset 17 has no form for
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"onnxruntime {precision}: this backbone does not export to ONNX ({first}); compute its "
            "features in torch (--runtime torch, --precision auto, fp32 or bf16)"
        ) from None
    if precision == "fp32" or calibration is None:
        return bytes(graph.SerializeToString())
    inputs = to_inputs(calibration, pre, torch.device("cpu"), torch.contiguous_format).numpy()
    settings = replace(SETTINGS, reduce_range=not has_vnni())
    return bytes(quantize_int8(graph, inputs, settings).SerializeToString())


def choose(
    trunk: torch.nn.Module,
    pre: Preprocessing,
    train_images: np.ndarray,
    log: Callable[[str], None] | None = None,
) -> Route:
    """``auto`` on a CPU without fast bf16: the recorded route of this trunk on this CPU, or the
    fastest of torch fp32, onnxruntime fp32 and int8 (where its features agree with fp32's,
    `FEATURES_AGREE`), timed now on `TIMED_IMAGES` of ``train_images`` (uint8 (N, H, W, C);
    int8 calibrated on them as the job's will be) and recorded."""
    say = log or (lambda line: print(f"pawlab: {line}", file=sys.stderr, flush=True))
    path = _record_path(trunk, pre)
    recorded = recorded_route(path, ROUTE_FORMAT)
    if recorded is not None:
        return recorded
    rows = np.random.default_rng(1).permutation(len(train_images))[:TIMED_IMAGES]
    timed = np.asarray(train_images[np.sort(rows)])
    say(f"measuring the fastest way to compute this backbone's features on this CPU, once ({cpu_class()})")
    calibration = np.asarray(train_images[calibration_rows(len(train_images))])
    outputs, seconds = {}, {}
    for route in (TORCH_FP32, Route("onnxruntime", "fp32"), Route("onnxruntime", "int8")):
        try:
            outputs[str(route)], seconds[str(route)] = _timed(trunk, pre, route, timed, calibration)
        except ConfigError as exc:  # a backbone that does not export: torch it is
            say(f"features: not {route} ({exc})")
    int8 = outputs.get("onnxruntime int8")
    error = _relative_error(int8, outputs["torch fp32"]) if int8 is not None else None  # None: not made
    int8_agrees = error is not None and error <= FEATURES_AGREE
    candidates = [r for r in seconds if r != "onnxruntime int8" or int8_agrees]
    best = min(candidates, key=lambda r: seconds[r])
    shown = ", ".join(f"{r} {len(timed) / s:.0f} img/s" for r, s in seconds.items())
    int8_line = f"; int8 {error:.3f} from fp32" if error is not None else ""
    say(f"features: {best} ({shown}{int8_line}); recorded for this backbone and CPU")
    record = {
        "format": ROUTE_FORMAT,
        "route": best,
        "cpu": cpu_class(),
        "seconds": seconds,
        "int8_error": error,
    }
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return Route.parse(best)


def _timed(
    trunk: torch.nn.Module, pre: Preprocessing, route: Route, images: np.ndarray, calibration: np.ndarray
) -> tuple[np.ndarray, float]:
    """``route``'s features (N, F) of ``images`` and its seconds for them, ready as a long job
    runs it (compiled; after a warm-up batch): the best of two."""
    forward: OrtForward | Compiled
    if route.runtime == "onnxruntime":
        forward = ort_forward(trunk, pre, route.precision, calibration)
        fmt = torch.contiguous_format
    else:
        forward, fmt = Compiled(folded(trunk).eval(), COMPILED_BATCH["fp32"]), torch.channels_last
    batch = forward.batch_size
    x = to_inputs(images, pre, torch.device("cpu"), fmt)
    best, out = float("inf"), torch.empty(0)
    with torch.inference_mode():
        forward(x[:batch])
        for _ in range(2):
            start = time.perf_counter()
            out = torch.cat([forward(x[i : i + batch]) for i in range(0, len(x), batch)])
            best = min(best, time.perf_counter() - start)
    return out.float().numpy(), best


def feature_distances(test: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(N,): each image's L2 distance of features ``test`` (N, F) from ``ref``, relative to
    ``ref``'s norm."""
    dist: np.ndarray = np.linalg.norm(test - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)
    return dist


def _relative_error(test: np.ndarray, ref: np.ndarray) -> float:
    """The median image's `feature_distances`."""
    dist = feature_distances(test, ref)
    return float(np.median(dist)) if len(dist) else 0.0


def _record_path(trunk: torch.nn.Module, pre: Preprocessing) -> Path:
    key = f"{weights_digest(trunk)}|{pre.to_json()}|{timing_key()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return cache.entry("runtimes", f"trunk-{digest}") / "features-route.json"

"""A model file's runtimes: its ONNX graphs, made once into the user cache, and the fastest
route that agrees with fp32, measured once per CPU.

    <cache>/runtimes/<digest of the model file>/
        fp32.onnx              the runtime graph (`pawlab.inference.ort`)
        int8-vnni.onnx, .json  quantized (`pawlab.inference.quantize`) and its agreement record;
                               ``int8-avx2`` on CPUs without VNNI (7-bit weights: their int8
                               dot products saturate otherwise), each checked on such a CPU
        route-<cpu>.json       the routes' times on this CPU, and the fastest that agrees

int8 is calibrated on training images of the model's own data and checked as guarded bf16 is
(`pawlab.inference.agreement.guarded_agreement`): on validation images, the images whose two
likeliest classes are close run again in fp32. A check that fails is recorded too, so it is not
made again; only the model's data (the source its file records) can make one.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pawlab.atomic import atomic_write_bytes, atomic_write_text
from pawlab.data import cache
from pawlab.data.pack import locked
from pawlab.data.workers import entry_point
from pawlab.errors import AgreementError, DataError
from pawlab.inference.agreement import describe, guarded_agreement
from pawlab.inference.engine import COMPILE_MIN_IMAGES, predict_outputs, to_inputs
from pawlab.inference.guard import agreed
from pawlab.inference.model import Model
from pawlab.inference.routes import Route
from pawlab.inference.splits import CheckImages, check_images, sample
from pawlab.runtime import cpu_class, cpu_name_and_flags, has_vnni, use_bf16

if TYPE_CHECKING:  # onnxruntime is imported only for a job that runs it
    from pawlab.inference.ort import OrtForward

CALIBRATION_IMAGES = 300  # training images, at most, int8 activation ranges are taken from
CHECK_IMAGES = 1000  # validation images, at most, a route is checked on
TIMED_IMAGES = 96  # validation images each route is timed on, after a warm-up batch
ROUTE_FORMAT = 1  # bump when what a route's time means changes: older records are measured again


@entry_point
def load_model(
    path: str | os.PathLike[str],
    device: str = "auto",
    precision: str = "auto",
    compile: str = "auto",
    runtime: str = "auto",
) -> Model:
    """Load a model file written by `pawlab.train`.

    ``runtime``: torch, onnxruntime (the model exported once into the user cache) or auto;
    ``precision``: auto, fp32, bf16 (torch) or int8 (onnxruntime); ``compile``: auto (for jobs
    of many images), on or off (torch). With both ``auto``, a long job (`Model.prepare_for`)
    runs by the route measured fastest on this CPU among those that agree with fp32 (measured
    once, then recorded in the cache); a short one by that record, or torch as trained."""
    model = Model.load(path, device, precision, compile, runtime)
    model.chooser = RuntimeCache(model)
    return model


class RuntimeCache:
    """The runtime cache entry of ``model``'s file: what `pawlab.inference.routes.Chooser` asks."""

    def __init__(self, model: Model, log: Callable[[str], None] | None = None) -> None:
        assert model.path is not None
        self.model = model
        self.log = log or (lambda line: print(f"pawlab: {line}", file=sys.stderr, flush=True))
        self._images: CheckImages | None | str = None  # str: why there are none
        self._held = False

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The entry's lock (re-entrant here): processes making or measuring the same model's
        routes (a server's workers) wait for the first, then read what it recorded."""
        if self._held:
            yield
            return
        with locked(self.folder):
            self._held = True
            try:
                yield
            finally:
                self._held = False

    @functools.cached_property
    def folder(self) -> Path:
        assert self.model.path is not None
        with self.model.path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        return cache.entry("runtimes", digest[:32])

    @functools.cached_property
    def _route_file(self) -> Path:
        """This CPU's record (`timing_key`)."""
        return self.folder / f"route-{hashlib.sha256(timing_key().encode()).hexdigest()[:16]}.json"

    def recorded(self) -> Route | None:
        return recorded_route(self._route_file, ROUTE_FORMAT)

    def graph(self, precision: str) -> tuple[bytes, dict[str, Any]]:
        if precision == "fp32":
            return self._fp32(), {}
        record_path = self.int8_file.with_suffix(".json")
        with self._locked():
            if not record_path.exists():
                self._make_int8()
        record = json.loads(record_path.read_text())
        if not record.get("ok"):
            raise AgreementError(f"{self.model.path}: guarded int8 {describe(record)}; use --precision fp32")
        return self.int8_file.read_bytes(), record

    def _fp32(self) -> bytes:
        from pawlab.inference.ort import network_graph

        path = self.folder / "fp32.onnx"
        with self._locked():
            if path.exists():
                return path.read_bytes()
            pre = self.model.preprocessing
            self.log("exporting the model to ONNX for onnxruntime (once: kept in the user cache)")
            graph = network_graph(self.model._runner, pre.size, pre.channels)
            atomic_write_bytes(path, graph.SerializeToString())
        return path.read_bytes()

    def images(self) -> CheckImages:
        """The model's own training and validation images (a `DataError` where they are not here)."""
        if isinstance(self._images, str):
            raise DataError(self._images)
        if self._images is None:
            try:
                self._images = check_images(
                    self.model, purpose="to calibrate and check int8 on", remedy="int8 is not available"
                )
            except DataError as exc:
                self._images = str(exc)
                raise
        return self._images

    def _inputs(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> the runtime graph's inputs (N, C, H, W) float32."""
        x = to_inputs(pixels, self.model.preprocessing, torch.device("cpu"), torch.contiguous_format)
        return x.numpy()

    @property
    def int8_file(self) -> Path:
        """Where this CPU's int8 graph goes (its record beside it, ``.json``)."""
        return self.folder / f"int8-{'vnni' if has_vnni() else 'avx2'}.onnx"

    def _make_int8(self) -> None:
        """Quantize, check guarded int8 against fp32 on validation images, record both."""
        import onnx

        from pawlab.inference.ort import OrtForward, session_for
        from pawlab.inference.quantize import SETTINGS, quantize_int8

        images = self.images()
        calibration = sample(images.train, CALIBRATION_IMAGES)
        self.log(f"quantizing the model to int8 (once), calibrated on {len(calibration)} training images")
        fp32 = self._fp32()
        settings = replace(SETTINGS, reduce_range=not has_vnni())
        graph = quantize_int8(onnx.load_from_string(fp32), self._inputs(calibration.images), settings)
        int8 = graph.SerializeToString()
        val = sample(images.validation, CHECK_IMAGES)
        p_fp32, p_int8 = (self._probabilities(OrtForward(session_for(g)), val.images) for g in (fp32, int8))
        record = guarded_agreement(p_fp32, p_int8, torch.from_numpy(val.labels).long(), precision="int8")
        record = {**record, "images_from": images.description, "calibration_images": len(calibration)}
        self.log(f"guarded int8 {describe(record)}")
        if record["ok"]:
            atomic_write_bytes(self.int8_file, int8)
        atomic_write_text(self.int8_file.with_suffix(".json"), json.dumps(record, indent=1) + "\n")

    def _probabilities(self, forward: OrtForward, pixels: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, C) -> probabilities (N, classes) of a runtime graph's session, run
        by the engine as `Model` runs it (NCHW inputs, the logits softmaxed)."""
        m, k = self.model, len(self.model.classes)
        out = predict_outputs(
            m._runner, pixels, m.preprocessing, torch.device("cpu"), forward.batch_size,
            forward=forward, channels_last=False, softmax=True, classes=k,
        )  # fmt: skip
        return out[:, :k]

    def choose(self) -> Route:
        """Time each route that agrees on the same images, record the fastest, and use it
        (or, where another process measured it meanwhile, its record)."""
        with self._locked():
            route = self.recorded()
            if route is not None:
                self.model.keep_only(route)
                return route
            return self._measure()

    def _measure(self) -> Route:
        routes, notes = self._candidates()
        pixels, what = self._timing_images()
        self.log(
            f"measuring the fastest way to run this model on this CPU, once ({cpu_class()}; "
            f"{len(routes)} routes on {what}){'; ' if notes else ''}{'; '.join(notes)}"
        )
        seconds = {str(r): self._time(r, pixels) for r in routes}
        best = min(routes, key=lambda r: seconds[str(r)])
        shown = ", ".join(f"{r} {len(pixels) / s:.0f} img/s" for r, s in seconds.items())
        self.log(f"fastest: {best} ({shown}); recorded for this model and CPU")
        record = {
            "format": ROUTE_FORMAT,
            "route": str(best),
            "cpu": cpu_class(),
            "seconds": seconds,
            "timed_on": what,
        }
        atomic_write_text(self._route_file, json.dumps(record, indent=1) + "\n")
        self.model.keep_only(best)
        return best

    def _candidates(self) -> tuple[list[Route], list[str]]:
        """The routes that agree with fp32 here, and why the others are left out."""
        routes, notes = [Route("torch", "fp32"), Route("onnxruntime", "fp32")], []
        if use_bf16("auto", self.model.device) and agreed(self.model.meta.get("inference", {})):
            routes.insert(0, Route("torch", "bf16"))
        try:
            self.graph("int8")
            routes.append(Route("onnxruntime", "int8"))
        except AgreementError:
            notes.append("not int8: it does not agree with fp32 on validation images")
        except DataError:
            notes.append("not int8: the model's training data is not here to calibrate and check it on")
        return routes, notes

    def _timing_images(self) -> tuple[np.ndarray, str]:
        """Validation images of the model's data (a guard's re-runs cost what they cost on real
        images), else seeded noise at its size."""
        try:
            val = sample(self.images().validation, TIMED_IMAGES, seed=1)
            return val.images, f"{len(val)} validation images"
        except DataError:
            pre = self.model.preprocessing
            noise = np.random.default_rng(0).integers(
                0, 256, (TIMED_IMAGES, *pre.size, pre.channels), np.uint8
            )
            return noise, f"{TIMED_IMAGES} noise images (its data is not here)"

    def _time(self, route: Route, pixels: np.ndarray) -> float:
        """Seconds ``route`` takes on ``pixels``, ready as a long job runs it: the best of two."""
        m = self.model
        m.use_route(route)
        m.prepare_for(COMPILE_MIN_IMAGES)
        m.warm_up()
        m.predict_proba(pixels[:16])
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            m.predict_proba(pixels)
            best = min(best, time.perf_counter() - t0)
        return best


def timing_key() -> str:
    """What a route's measured time depends on besides the network: the CPU's name and
    instruction sets, the threads, and the torch and onnxruntime versions (read from the
    installed metadata: no import of onnxruntime for a job that never runs it)."""
    name, flags = cpu_name_and_flags()
    versions = f"{torch.__version__}|{importlib.metadata.version('onnxruntime')}"
    return f"{name}|{' '.join(flags)}|{torch.get_num_threads()}|{versions}"


def recorded_route(path: Path, format: int) -> Route | None:
    """The route a measurement recorded at ``path`` in ``format``, or None (no record, an
    unreadable one, or one of another format: measured again)."""
    try:
        record = json.loads(path.read_text())
        return Route.parse(record["route"]) if record.get("format") == format else None
    except (OSError, ValueError, KeyError, TypeError):
        return None

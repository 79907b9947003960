"""A trained classifier loaded from its model file, and its predictions."""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pawlab import checkpoint
from pawlab.data.decode import decode_named, read_file
from pawlab.errors import ConfigError, DataError, ModelFileError
from pawlab.inference.engine import (
    COMPILE_MIN_IMAGES,
    COMPILED_BATCH,
    TTA_VIEWS,
    Compiled,
    folded,
    predict_outputs,
)
from pawlab.inference.features import trunk_features
from pawlab.models.network import Network, build
from pawlab.preprocessing import Preprocessing
from pawlab.runtime import resolve_device, use_bf16

ImageLike = str | os.PathLike[str] | bytes | Image.Image | np.ndarray


@dataclass(frozen=True)
class Prediction:
    """One image's class probabilities, in the Cortex tutorial's shape."""

    probabilities: dict[str, float]
    classification: str

    def to_json(self) -> dict[str, Any]:
        return {"probability-map": self.probabilities, "classification": self.classification}


class Model:
    """A trained classifier loaded from its model file."""

    def __init__(
        self,
        network: Network,
        classes: list[str],
        preprocessing: Preprocessing,
        meta: dict[str, Any],
        path: Path | None = None,
        device: str = "auto",
        precision: str = "auto",
        compile: str = "auto",
    ) -> None:
        self.device = resolve_device(device)
        self.network = network.to(self.device).to(memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
        self.classes = classes
        self.preprocessing = preprocessing
        self.meta = meta
        self.path = path
        self.bf16 = self._use_bf16(precision)
        # images whose bf16 top-class probability is below 1 - guard are run again in fp32
        record = meta.get("inference", {})
        agreed = bool(record.get("ok")) and "guard" in record
        self.guard: float | None = float(record["guard"]) if self.bf16 and agreed else None
        if compile not in ("auto", "on", "off"):
            raise ConfigError(f"compile: must be auto, on or off, got {compile!r}")
        self.compile = compile
        self._compiled: Compiled | None = None  # bf16 (autocast) or fp32, as self.bf16
        self._rerun: Compiled | None = None  # fp32, for the images the guard sends back

    @functools.cached_property
    def _runner(self) -> torch.nn.Module:
        """What predicts images: `network` with batch-norms folded. A copy made on first use:
        `evaluate` of a frozen backbone reads cached features (`trunk_features` folds its own
        copy of the trunk) and needs nothing else."""
        return folded(self.network)

    def _use_bf16(self, precision: str) -> bool:
        """``auto``: bf16 only where the hardware runs it fast and training recorded that
        this model's guarded bf16 predictions agree with fp32 (`pawlab.inference.agreement`);
        ``bf16``: bf16 regardless (guarded where the check agreed)."""
        if precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision: must be auto, fp32 or bf16, got {precision!r}")
        if precision != "auto":
            return precision == "bf16"
        agreed = bool(self.meta.get("inference", {}).get("ok"))
        return agreed and use_bf16("auto", self.device)

    def prepare_for(self, images: int, tta: bool = False) -> None:
        """Get ready for a job of ``images`` images (each run once per view with ``tta``):
        ``compile`` ``on``, or ``auto`` and at least `COMPILE_MIN_IMAGES` forward passes
        (compiling costs tens of seconds once, then each batch runs faster). With guarded
        bf16, the fp32 re-runs get a compiled graph of their own."""
        images *= len(TTA_VIEWS) if tta else 1
        wanted = self.compile == "on" or (self.compile == "auto" and images >= COMPILE_MIN_IMAGES)
        if wanted and self._compiled is None:
            self._compiled = Compiled(self._runner, COMPILED_BATCH["bf16" if self.bf16 else "fp32"])
            if self.guard is not None:
                self._rerun = Compiled(self._runner, COMPILED_BATCH["fp32"])

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str = "auto",
        precision: str = "auto",
        compile: str = "auto",
    ) -> Model:
        ck = checkpoint.load(path)
        if checkpoint.model_kind(ck.meta) != "classifier":
            raise ModelFileError(
                f"{path}: a {checkpoint.model_kind(ck.meta)} model file, not a classifier "
                "(pawlab.inference.load_generator reads generators)"
            )
        with checkpoint.damaged(path):
            classes = checkpoint.check_classes(path, ck.meta.get("classes"))
            pre = Preprocessing.from_json(ck.meta["preprocessing"])
            network = build(
                ck.meta["architecture"], num_classes=len(classes), where=str(path), pretrained=False
            )
            checkpoint.load_weights(path, network, ck.model_state)
        return cls(network, classes, pre, ck.meta, Path(path), device, precision, compile)

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.meta.get("metrics", {}))

    def _load_image(self, image: ImageLike) -> np.ndarray:
        """Anything image-like -> uint8 (H, W, C) at the model's input size."""
        size, c = self.preprocessing.size, self.preprocessing.channels
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise DataError("image array must be uint8 with shape (H, W) or (H, W, C)")
            image = Image.fromarray(image)
        if isinstance(image, Image.Image):
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            data, name = buf.getvalue(), "<image>"
        elif isinstance(image, bytes):
            data, name = image, "<bytes>"
        else:
            data, name = read_file(image), str(image)
        return decode_named(data, name, size, c, self.preprocessing.resize)

    def predict_proba(
        self,
        images: np.ndarray,
        batch_size: int | None = None,
        tta: bool = False,
        cached: bool = False,
        progress: bool = False,
    ) -> np.ndarray:
        """uint8 (N, H, W, C) at the model's size -> probabilities (N, classes); ``tta``:
        averaged over the image, its mirror and two crops. ``cached``: a frozen backbone's
        features come from (and go to) the feature cache, as in training."""
        views = TTA_VIEWS if tta else ("plain",)
        if cached and self.network.trunk_length is not None:
            # cached features are fp32: the probabilities are exact, whatever the precision
            feats = trunk_features(
                self.network.trunk, images, self.preprocessing, self.device, views=views, progress=progress
            )
            with torch.inference_mode():
                x = torch.from_numpy(feats).to(self.device)  # (N, views, F)
                out = self.network.forward_head(x.flatten(0, 1)).float().softmax(1)
                mean: np.ndarray = out.view(len(images), len(views), -1).mean(1).cpu().numpy()
                return mean
        probs = predict_outputs(
            self._runner,
            images,
            self.preprocessing,
            self.device,
            self._compiled.batch_size if self._compiled is not None else batch_size,
            bf16=self.bf16,
            guard=self.guard,
            forward=self._compiled,
            rerun=self._rerun,
            views=views,
            softmax=True,
            progress=progress,
        )
        return probs.numpy()

    def predict(self, image: ImageLike, tta: bool = False) -> Prediction:
        """One image (path, bytes, PIL image or uint8 array) -> its probability map."""
        self.prepare_for(1, tta)
        probs = self.predict_proba(self._load_image(image)[None], tta=tta)[0]
        return self._prediction(probs)

    def predict_many(self, images: Sequence[ImageLike], tta: bool = False) -> list[Prediction]:
        arrays = np.stack([self._load_image(im) for im in images])
        self.prepare_for(len(arrays), tta)
        return [self._prediction(p) for p in self.predict_proba(arrays, tta=tta)]

    def _prediction(self, probs: np.ndarray) -> Prediction:
        pm = {c: float(p) for c, p in zip(self.classes, probs, strict=True)}
        return Prediction(pm, self.classes[int(np.argmax(probs))])


def load_model(
    path: str | os.PathLike[str], device: str = "auto", precision: str = "auto", compile: str = "auto"
) -> Model:
    """Load a model file written by `pawlab.train`. ``precision``: auto, fp32 or bf16;
    ``compile``: auto (for jobs of many images), on or off (see `Model.prepare_for`)."""
    return Model.load(path, device, precision, compile)

"""A trained classifier loaded from its model file, and its predictions."""

from __future__ import annotations

import functools
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from pawlab import checkpoint, display, unknown
from pawlab.data.decode import ImageLike, load_image
from pawlab.errors import ConfigError, ModelFileError, SmallImageWarning
from pawlab.inference.engine import (
    COMPILE_MIN_IMAGES,
    COMPILED_BATCH,
    TTA_VIEWS,
    Compiled,
    Forward,
    folded,
    predict_outputs,
    to_inputs,
)
from pawlab.inference.features import trunk_features
from pawlab.inference.guard import Guard, agreed
from pawlab.inference.routes import Chooser, Route, check_route, requested
from pawlab.inference.typicality import WithFeatures, split_outputs
from pawlab.models.network import Network, build
from pawlab.preprocessing import Preprocessing
from pawlab.runtime import resolve_device, use_bf16


@dataclass(frozen=True)
class Prediction:
    """One image's class probabilities, in the Cortex tutorial's shape. ``typicality``: the
    share of the model's validation images less typical of its training data than this one,
    and ``unknown``: whether that is below the model's threshold, so the image is none of its
    classes (both None for a model file without an in-distribution model). ``notes``: lines
    about the image, each also a `SmallImageWarning` ("cat.png: 1x1 pixels, far smaller than
    the model's 224x224 input (upscaled 224x)"); never part of `to_json`."""

    probabilities: dict[str, float]
    classification: str
    notes: tuple[str, ...] = ()
    typicality: float | None = None
    unknown: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "probability-map": self.probabilities,
            "classification": self.classification,
            "typicality": self.typicality,
            "unknown": self.unknown,
        }

    def __repr__(self) -> str:
        """``Prediction(dogs: cats 0.0712, dogs 0.9288; typicality 0.41)``."""
        shown = ", ".join(f"{c} {p:.4f}" for c, p in self.probabilities.items())
        typical = "" if self.typicality is None else f"; typicality {self.typicality:.3g}"
        return f"Prediction({self.classification}{' (unknown)' if self.unknown else ''}: {shown}{typical})"

    def _repr_html_(self) -> str:
        rows = [(c, display.number(p)) for c, p in sorted(self.probabilities.items(), key=lambda cp: -cp[1])]
        return display.section(
            f"prediction: {self.classification}", display.table(rows, ["class", "probability"])
        )


class Predictions(Sequence[Prediction]):
    """The predictions of a list of images, in its order: a sequence of `Prediction` that a
    notebook shows as a table (a thumbnail, the file name, the class, each probability)."""

    SHOWN = 50  # rows in the notebook's table (and images keeping a thumbnail)

    def __init__(
        self,
        predictions: Sequence[Prediction],
        classes: Sequence[str],
        names: Sequence[str | None] | None = None,
        thumbnails: Sequence[np.ndarray | None] | None = None,
    ) -> None:
        n = len(predictions)
        self.predictions = list(predictions)
        self.classes = list(classes)
        self.names: list[str | None] = list(names) if names is not None else [None] * n
        # uint8 (h, w, C) at most THUMB_PX a side, for the rows a notebook shows; None for the rest
        self.thumbnails: list[np.ndarray | None] = list(thumbnails) if thumbnails is not None else [None] * n

    @overload
    def __getitem__(self, index: int) -> Prediction: ...
    @overload
    def __getitem__(self, index: slice) -> Predictions: ...
    def __getitem__(self, index: int | slice) -> Prediction | Predictions:
        if isinstance(index, slice):
            return Predictions(
                self.predictions[index], self.classes, self.names[index], self.thumbnails[index]
            )
        return self.predictions[index]

    def __len__(self) -> int:
        return len(self.predictions)

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self.predictions)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Predictions | list | tuple):
            return self.predictions == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per image (for ``pandas.DataFrame``): ``image`` (its path, or None),
        ``classification``, then each class's probability under its name (``p(name)`` for a
        class named ``image`` or ``classification``)."""
        keys = [f"p({c})" if c in ("image", "classification") else c for c in self.classes]
        return [
            {
                "image": name,
                "classification": p.classification,
                **{k: p.probabilities[c] for k, c in zip(keys, self.classes, strict=True)},
            }
            for p, name in zip(self.predictions, self.names, strict=True)
        ]

    def __repr__(self) -> str:
        counts = Counter(p.classification for p in self.predictions).most_common()
        summary = ", ".join(f"{c} {n}" for c, n in counts[:5]) + (", ..." if len(counts) > 5 else "")
        lines = [f"Predictions({len(self)} images: {summary or 'none'})"]
        for i, (p, name) in enumerate(zip(self.predictions[:5], self.names[:5], strict=True)):
            label = Path(name).name if name is not None else f"#{i}"
            lines.append(f"  {label:<24} {p.classification:<12} p={p.probabilities[p.classification]:.4f}")
        if len(self) > 5:
            lines.append(f"  ... {len(self) - 5} more")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows: list[list[object]] = []
        for i in range(min(len(self), self.SHOWN)):
            p, name, pixels = self.predictions[i], self.names[i], self.thumbnails[i]
            thumb = display.thumbnail(pixels, title=name or "") if pixels is not None else ""
            label: object = f"#{i}"
            if name is not None:
                label = display.Html(
                    f'<span title="{display.escape(name)}">{display.escape(Path(name).name)}</span>'
                )
            rows.append([thumb, label, p.classification, *(p.probabilities[c] for c in self.classes)])
        parts = [display.table(rows, ["image", "name", "class", *self.classes])]
        if len(self) > self.SHOWN:
            parts.append(display.paragraph(f"... and {len(self) - self.SHOWN} more (to_rows() has them all)"))
        return display.section(repr(self).splitlines()[0], *parts)


@dataclass
class _Plan:
    """How a `Route` runs here: ``forward`` runs a batch (None: the network as it is, eagerly),
    ``rerun`` runs in fp32 what ``guard`` sends back, ``batch_size`` images at a time (None:
    the engine's default)."""

    forward: Forward | None = None
    rerun: Forward | None = None
    guard: Guard | None = None
    batch_size: int | None = None
    rerun_batch: int = COMPILED_BATCH["fp32"]


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
        runtime: str = "auto",
    ) -> None:
        check_route(runtime, precision, device)
        if compile not in ("auto", "on", "off"):
            raise ConfigError(f"compile: must be auto, on or off, got {compile!r}")
        self.device = resolve_device(device)
        self.network = network.to(self.device).to(memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
        self.classes = classes
        self.preprocessing = preprocessing
        self.meta = meta
        self.path = path
        self.runtime, self.precision, self.compile = runtime, precision, compile
        # the runtime cache of the model's file (`pawlab.inference.runtimes`): its ONNX graphs and
        # the route measured fastest on this CPU; None for a model held in memory only (torch)
        self.chooser: Chooser | None = None
        self._route: Route | None = None  # resolved on first use (`route`)
        self._settled = False  # whether ``auto`` has its measured (or recorded) route
        self._plans: dict[Route, _Plan] = {}
        # its in-distribution model (`pawlab.unknown`): None for a file trained before pawlab fitted one
        self.unknown: unknown.State | None = None
        self._unknown_threshold = unknown.DEFAULT_THRESHOLD

    @property
    def route(self) -> Route:
        """What runs this model's images: the route the settings name; for ``auto``, the one
        measured fastest on this CPU if it was (`pawlab.inference.runtimes`), else torch with
        bf16 where training found guarded bf16 agrees and the hardware runs it fast."""
        if self._route is None:
            self._route = requested(self.runtime, self.precision) or self._default_route()
        return self._route

    def _default_route(self) -> Route:
        recorded = self.chooser.recorded() if self._may_choose() and self.chooser is not None else None
        if recorded is not None:
            self._settled = True
            return recorded
        fast = agreed(self.meta.get("inference", {})) and use_bf16("auto", self.device)
        return Route("torch", "bf16" if fast else "fp32")

    def _may_choose(self) -> bool:
        """Whether ``auto`` may pick a route by measuring: the settings leave it open, and the
        model runs on the CPU from a file."""
        return (
            self.runtime == "auto"
            and self.precision == "auto"
            and self.chooser is not None
            and self.device.type == "cpu"
        )

    def use_route(self, route: Route) -> None:
        """Run from now on by ``route`` (a measurement's choice, or a bench's)."""
        self._route, self._settled = route, True

    @property
    def bf16(self) -> bool:
        return self.route == Route("torch", "bf16")

    @property
    def guard(self) -> Guard | None:
        """Which images of a fast route's batch run again in fp32 (None: none do)."""
        return self._plan().guard

    @guard.setter
    def guard(self, value: Guard | None) -> None:
        self._plan().guard = value

    @property
    def _compiled(self) -> Compiled | None:
        """The torch route's compiled network, once `prepare_for` made it."""
        forward = self._plan().forward
        return forward if isinstance(forward, Compiled) else None

    @property
    def _rerun(self) -> Forward | None:
        """What runs the guard's images again in fp32, where it is not the network itself."""
        return self._plan().rerun

    @_rerun.setter
    def _rerun(self, value: Forward | None) -> None:
        self._plan().rerun = value

    @functools.cached_property
    def _runner(self) -> torch.nn.Module:
        """What predicts images: `network` with batch-norms folded. A copy made on first use:
        `evaluate` of a frozen backbone reads cached features (`trunk_features` folds its own
        copy of the trunk) and needs nothing else. With an in-distribution model, it puts the
        penultimate features beside the logits (`WithFeatures`)."""
        net = folded(self.network)
        return WithFeatures(net) if self.unknown is not None else net  # type: ignore[arg-type]

    def _plan(self) -> _Plan:
        """This route's plan, made on first use: torch's guard from the model file's record (no
        compiling: `prepare_for` does that); onnxruntime's sessions on the runtime graph."""
        route = self.route
        if route not in self._plans:
            self._plans[route] = (
                self._onnx_plan(route) if route.runtime == "onnxruntime" else self._torch_plan()
            )
        return self._plans[route]

    def _torch_plan(self) -> _Plan:
        if not self.bf16:
            return _Plan()
        # which images of a bf16 batch run again in fp32: the rule and setting training recorded
        return _Plan(guard=Guard.from_record(self.meta.get("inference", {})))

    def _onnx_plan(self, route: Route) -> _Plan:
        """Sessions on the runtime graph at ``route``'s precision; int8 with an fp32 session for
        the images its guard sends back."""
        from pawlab.inference.ort import ORT_BATCH, OrtForward, network_graph, session_for

        if self.chooser is None:
            if route.precision != "fp32":
                raise ConfigError(
                    f"precision {route.precision} in onnxruntime needs a model loaded from its file"
                )
            pre = self.preprocessing
            graph = network_graph(self._runner, pre.size, pre.channels).SerializeToString()
        else:
            graph, _ = self.chooser.graph("fp32")
        fp32 = OrtForward(session_for(graph))
        if route.precision == "fp32":
            return _Plan(forward=fp32, batch_size=ORT_BATCH, rerun_batch=ORT_BATCH)
        assert self.chooser is not None
        int8, record = self.chooser.graph("int8")
        return _Plan(OrtForward(session_for(int8)), fp32, Guard.from_record(record), ORT_BATCH, ORT_BATCH)

    def prepare_for(self, images: int, tta: bool = False) -> None:
        """Get ready for a job of ``images`` images (each run once per view with ``tta``). A
        long job (``compile`` ``on``, or ``auto`` and at least `COMPILE_MIN_IMAGES` forward
        passes) with the route left to ``auto`` first measures which route is fastest here,
        once per model and CPU (`pawlab.inference.runtimes`); in torch it compiles the network
        (tens of seconds once, then each batch runs faster), and with guarded bf16 the fp32
        re-runs get a compiled graph of their own."""
        images *= len(TTA_VIEWS) if tta else 1
        long = self.compile == "on" or (self.compile == "auto" and images >= COMPILE_MIN_IMAGES)
        if long and not self._settled and self._may_choose() and self.chooser is not None:
            self.use_route(self.chooser.choose())
        plan = self._plan()
        if long and self.route.runtime == "torch" and not isinstance(plan.forward, Compiled):
            plan.forward = Compiled(self._runner, COMPILED_BATCH["bf16" if self.bf16 else "fp32"])
            plan.rerun = Compiled(self._runner, COMPILED_BATCH["fp32"]) if plan.guard is not None else None
            plan.batch_size = plan.forward.batch_size

    def keep_only(self, route: Route) -> None:
        """Use ``route`` and drop the other routes' plans (their compiled graphs, sessions)."""
        self.use_route(route)
        self._plans = {r: p for r, p in self._plans.items() if r == route}

    def warm_up(self, tta: bool = False) -> None:
        """Compile now the graphs `prepare_for` set up: a full batch through the network, and
        one through the fp32 re-runs' graph (compiled on the first unsure image otherwise), so
        no later batch waits tens of seconds for a compiler: a server's requests."""
        pre, plan = self.preprocessing, self._plan()
        size = plan.batch_size if plan.forward is not None and plan.batch_size else 1
        self.predict_proba(np.zeros((size, *pre.size, pre.channels), np.uint8), tta=tta)
        if plan.rerun is not None:
            blank = np.zeros((plan.rerun_batch, *pre.size, pre.channels), np.uint8)
            fmt = torch.channels_last if self.route.runtime == "torch" else torch.contiguous_format
            with torch.inference_mode():  # as predict_outputs runs it: same graph, no recompiling
                plan.rerun(to_inputs(blank, pre, self.device, fmt))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str = "auto",
        precision: str = "auto",
        compile: str = "auto",
        runtime: str = "auto",
    ) -> Model:
        """The model file at ``path``, run as the settings say (`load_model`)."""
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
        model = cls(network, classes, pre, ck.meta, Path(path), device, precision, compile, runtime)
        state = unknown.from_tensors(ck.extra, ck.meta.get("unknown"), str(path))
        if state is not None:  # float16 in the file; float32 once here, not at every batch
            tensors = {k: t.float() if t.is_floating_point() else t for k, t in state.tensors.items()}
            state = unknown.State(state.method, state.settings, tensors)
        model.unknown = state
        return model

    @property
    def unknown_threshold(self) -> float:
        """The typicality below which a prediction says ``unknown`` (default 0.05: about 5% of
        images like the training ones are refused)."""
        return self._unknown_threshold

    @unknown_threshold.setter
    def unknown_threshold(self, value: float) -> None:
        self._unknown_threshold = unknown.check_threshold(value, "unknown_threshold")

    def typicality(self, images: np.ndarray) -> np.ndarray | None:
        """uint8 (N, H, W, C) at the model's size -> each image's typicality (N,) in [0, 1]: the
        share of the validation images less typical of the training data than it (an image
        below `pawlab.unknown.DEFAULT_THRESHOLD` is one the model should not answer for); None
        when the model file has no in-distribution model (`predict_scored` gives both)."""
        return self.predict_scored(images)[1]

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.meta.get("metrics", {}))

    def _precision(self) -> str:
        """The route in words: ``bf16, guarded (top-two margin < 0.39 re-run in fp32)`` in torch,
        ``onnxruntime int8, guarded (...)``."""
        route, guard = self.route, self.guard
        shown = route.precision if route.runtime == "torch" else str(route)
        return f"{shown}, guarded ({guard.describe()} re-run in fp32)" if guard is not None else shown

    def __repr__(self) -> str:
        pre, m = self.preprocessing, self.metrics
        shown = ", ".join(self.classes[:6]) + (", ..." if len(self.classes) > 6 else "")
        params = sum(p.numel() for p in self.network.parameters())
        best = f"; {display.best_epoch(m)}" if "epoch" in m else ""
        where = f"; {self.path.name}" if self.path is not None else ""
        return (
            f"Model({len(self.classes)} classes: {shown}; {pre.size[0]}x{pre.size[1]}x{pre.channels} "
            f"{pre.resize}; {params:,} parameters{best}; {self.device} {self._precision()}{where})"
        )

    def _repr_html_(self) -> str:
        pre, m = self.preprocessing, self.metrics
        rows = self.network.rows()
        total = sum(p.numel() for p in self.network.parameters())
        layers = display.table([*rows, ("total", "", total)], ["layer", "output", "parameters"])
        more = ", ..." if len(self.classes) > 50 else ""
        about = {
            "classes": f"{len(self.classes)}: {', '.join(self.classes[:50])}{more}",
            "input": f"{pre.size[0]}x{pre.size[1]}, {pre.channels} channel{'s' * (pre.channels != 1)}",
            "resize": pre.resize,
            "normalisation": f"mean {list(pre.mean)}, std {list(pre.std)}",
            "device": f"{self.device}, {self._precision()}, compile {self.compile}",
            "file": str(self.path) if self.path is not None else "(in memory)",
        }
        named = {"epoch": "best epoch", "val_loss": "val loss", "val_accuracy": "val accuracy"}
        scores = {label: m[k] if k != "epoch" else int(m[k]) for k, label in named.items() if k in m}
        parts = [display.fields({**about, **scores})]
        parts.append(display.details(f"architecture: {len(rows)} layers, {total:,} parameters", layers, True))
        if self.meta.get("history"):
            parts.append(display.curves(self.meta["history"]))
        title = f"pawlab Model: {self.path.name}" if self.path is not None else "pawlab Model"
        return display.section(title, *parts)

    def _load_image(self, image: ImageLike, notes: list[str] | None = None) -> np.ndarray:
        """Anything image-like (`load_image`) -> uint8 (H, W, C) at the model's input size."""
        pre = self.preprocessing
        return load_image(image, pre.size, pre.channels, pre.resize, notes=notes)

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
        return self._outputs(images, batch_size, tta, cached, progress)[:, : len(self.classes)].numpy()

    def predict_scored(
        self,
        images: np.ndarray,
        batch_size: int | None = None,
        tta: bool = False,
        cached: bool = False,
        progress: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """As `predict_proba`, with each image's typicality (N,) from the same pass (None
        without an in-distribution model): the share of validation images less typical."""
        out = self._outputs(images, batch_size, tta, cached, progress)
        n = len(self.classes)
        if self.unknown is None:
            return out[:, :n].numpy(), None
        probs, logits, feats = split_outputs(out, n)
        return probs.numpy(), unknown.typicality(self.unknown, feats, logits).numpy()

    def _outputs(
        self, images: np.ndarray, batch_size: int | None, tta: bool, cached: bool, progress: bool
    ) -> torch.Tensor:
        """Probabilities (N, classes), then with an in-distribution model the logits' logsumexp
        and the features (`WithFeatures`), averaged over the views."""
        views = TTA_VIEWS if tta else ("plain",)
        if cached and self.network.trunk_length is not None and self.route.runtime == "torch":
            # cached features are fp32: the probabilities are exact, whatever the precision
            feats = trunk_features(
                self.network.trunk, images, self.preprocessing, self.device, views=views, progress=progress
            )
            return self._head_outputs(torch.from_numpy(feats), len(views))
        plan = self._plan()
        return predict_outputs(
            self._runner,
            images,
            self.preprocessing,
            self.device,
            plan.batch_size or batch_size,
            bf16=self.bf16,
            guard=plan.guard,
            forward=plan.forward,
            rerun=plan.rerun,
            rerun_batch=plan.rerun_batch,
            channels_last=self.route.runtime == "torch",  # onnxruntime reads NCHW
            views=views,
            softmax=True,
            classes=len(self.classes) if self.unknown is not None else None,
            progress=progress,
        )

    def _head_outputs(self, feats: torch.Tensor, views: int) -> torch.Tensor:
        """A frozen trunk's features (N, views, F) -> `_outputs` through the head alone."""
        with torch.inference_mode():
            x = feats.to(self.device).flatten(0, 1)  # (N * views, F)
            if self.unknown is None:
                out: torch.Tensor = self.network.forward_head(x).float().softmax(1)
            else:
                penultimate, logits = unknown.features_and_logits(self.network, x, from_trunk=True)
                lse = logits.logsumexp(1, keepdim=True)
                out = torch.cat([logits.softmax(1), lse, penultimate], 1)
            mean: torch.Tensor = out.view(len(feats), views, -1).mean(1).cpu()
            return mean

    @overload
    def predict(self, image: ImageLike, tta: bool = False) -> Prediction: ...
    @overload
    def predict(self, image: list[ImageLike] | tuple[ImageLike, ...], tta: bool = False) -> Predictions: ...
    def predict(
        self, image: ImageLike | list[ImageLike] | tuple[ImageLike, ...], tta: bool = False
    ) -> Prediction | Predictions:
        """One image -> its `Prediction`; a list or tuple of them -> their `Predictions`, in
        order (a notebook shows them as a table). An image: a path, an encoded file's bytes
        (bytes, bytearray, memoryview), a binary file object, a PIL image of any mode, or a
        NumPy array (H, W) or (H, W, C) of uint8, uint16, bool or float in [0, 1]
        (`pawlab.data.decode.load_image`). ``tta``: averaged over the image, its mirror and two
        crops. An image far smaller than the model's input is predicted, with a `SmallImageWarning`."""
        if isinstance(image, list | tuple):
            return self._predict_many(image, tta)
        notes: list[str] = []
        pixels = self._load_image(image, notes)[None]
        self.prepare_for(1, tta)
        probs, typical = self.predict_scored(pixels, tta=tta)
        _warn(notes, stacklevel=2)
        return self.prediction(probs[0], notes, None if typical is None else float(typical[0]))

    def predict_many(self, images: Sequence[ImageLike], tta: bool = False) -> Predictions:
        """Images (as `predict` takes them) -> their `Predictions`, in order, in batches."""
        return self._predict_many(images, tta)

    def _predict_many(self, images: Sequence[ImageLike], tta: bool) -> Predictions:
        if not images:
            return Predictions([], self.classes)
        notes: list[list[str]] = [[] for _ in images]
        # (N, H, W, C) at the model's size
        arrays = np.stack([self._load_image(im, n) for im, n in zip(images, notes, strict=True)])
        self.prepare_for(len(arrays), tta)
        probs, typical = self.predict_scored(arrays, tta=tta)
        _warn([line for n in notes for line in n], stacklevel=3)
        each = [None] * len(probs) if typical is None else [float(t) for t in typical]
        preds = [self.prediction(p, n, t) for p, n, t in zip(probs, notes, each, strict=True)]
        names = [str(os.fspath(im)) if isinstance(im, str | os.PathLike) else None for im in images]
        thumbs = [display.shrink(a) if i < Predictions.SHOWN else None for i, a in enumerate(arrays)]
        return Predictions(preds, self.classes, names, thumbs)

    def prediction(
        self, probs: np.ndarray, notes: Sequence[str] = (), typicality: float | None = None
    ) -> Prediction:
        """Probabilities (classes,), as `predict_proba` gives them, and the image's typicality
        if known -> their `Prediction` (``unknown`` below `unknown_threshold`)."""
        pm = {c: float(p) for c, p in zip(self.classes, probs, strict=True)}
        refused = None if typicality is None else typicality < self.unknown_threshold
        return Prediction(pm, self.classes[int(np.argmax(probs))], tuple(notes), typicality, refused)


def _warn(notes: Sequence[str], stacklevel: int) -> None:
    """Each note as a `SmallImageWarning` (its only kind so far); ``stacklevel`` as if
    ``warnings.warn`` were called where `_warn` is (2: the line that called that function)."""
    for note in notes:
        warnings.warn(note, SmallImageWarning, stacklevel=stacklevel + 1)

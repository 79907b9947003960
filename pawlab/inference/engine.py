"""The one inference path: validation, `predict`, `evaluate`, `submit` and feature extraction.

uint8 batches (B, H, W, C) go to the device as bytes, are laid out channels-last, scaled and
normalised there, and run under ``inference_mode``. Two things make it faster, each only
where it keeps the results:

* bf16 autocast with a *guard* (`pawlab.inference.guard`): the images of a batch that bf16 may
  have answered differently (those whose two likeliest classes are close) are run again in
  fp32. A model file asks for it only after `check_agreement` found it agrees with fp32 on real
  images (the class, the probabilities, accuracy and log loss).
* `Compiled`: ``torch.compile`` (inductor), for long jobs (it costs tens of seconds once).

Test-time augmentation views are made on the batch in torch.
"""

from __future__ import annotations

import copy
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pawlab.inference.guard import Guard
from pawlab.preprocessing import Preprocessing
from pawlab.progress import progress_bar

# Test-time augmentation: the image, its mirror, and two 90% crops (resized back), as fastai.
TTA_VIEWS = ("plain", "flip", "crop-tl", "crop-br")
VIEWS = ("plain", "flip", "crop-tl", "crop-br", "crop-c")
_CROP = 0.9
# Images per uncompiled forward pass. On CPUs small batches keep activations in the caches
# (EfficientNet-Lite0 at 224x224 on 2 cores, batch-norms folded, channels-last, interleaved runs:
# fp32 97 / 90 / 60 / 51 img/s at batch 4 / 8 / 16 / 32, bf16 160 / 183 / 139 / 128; with
# batch-norms, fp32 57 at 8 and 33 at 32). GPUs need many images per pass to be busy (a common
# default, not measured here: no GPU).
INFER_BATCH = {"cpu": 8, "gpu": 128}


def infer_batch(device: torch.device) -> int:
    """`INFER_BATCH` for ``device``."""
    return INFER_BATCH["cpu" if device.type == "cpu" else "gpu"]


# A compiled network runs batches of one size, by precision: activations of small batches stay
# in the caches (EfficientNet-Lite0 at 224x224 on 2 cores, frozen graphs, interleaved runs: bf16
# 256 / 285 / 247 / 180 img/s at batch 4 / 8 / 16 / 32; fp32 150 / 127 / 103 / 80).
COMPILED_BATCH = {"bf16": 8, "fp32": 4}
# Jobs of at least this many forward passes (images x views) compile the network by default:
# where a cold compile has paid for itself. bench/infer.py prints that break-even (its
# "pays off after N images" line); this is its figure on 2 cores, rounded up.
COMPILE_MIN_IMAGES = 3000


def view(x: torch.Tensor, name: str) -> torch.Tensor:
    """One augmentation view of a [0, 1] batch (B, C, H, W), same shape."""
    if name == "plain":
        return x
    if name == "flip":
        return x.flip(-1)
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h * _CROP)), max(1, round(w * _CROP))
    top, left = {"crop-tl": (0, 0), "crop-br": (h - ch, w - cw), "crop-c": ((h - ch) // 2, (w - cw) // 2)}[
        name
    ]
    crop = x[..., top : top + ch, left : left + cw]
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)


def to_inputs(
    batch: np.ndarray | torch.Tensor,
    pre: Preprocessing,
    device: torch.device,
    memory_format: torch.memory_format = torch.channels_last,
    view_name: str = "plain",
) -> torch.Tensor:
    """uint8 (B, H, W, C) -> normalised float inputs (B, C, H, W) of one view, on ``device``."""
    return pre.inputs(
        batch, device, memory_format, None if view_name == "plain" else partial(view, name=view_name)
    )


Forward = Callable[[torch.Tensor], torch.Tensor]


def folded(module: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of ``module`` for inference, with the batch-norms of its pretrained
    backbones folded into their convolutions (`Backbone.fold_batch_norms`): the same function,
    up to float rounding. A copy even with nothing to fold: a `Compiled` graph reads the weights
    once, and the copy is what it reads."""
    from pawlab.models.backbones import Backbone

    out = copy.deepcopy(module).eval()
    for m in out.modules():
        if isinstance(m, Backbone):
            m.fold_batch_norms()
    return out


class Compiled:
    """``torch.compile`` (inductor) of an inference network, fed batches of one size: a short
    batch is padded, so one graph serves a whole job, unless it is under half that size: then
    the network runs as it is, which is faster for so few images (a server's lone requests;
    EfficientNet-Lite2, bf16, 2 cores: 1 / 2 / 3 / 4 images eager 38 / 59 / 83 / 120 ms, the
    compiled batch of 8 about 105 ms). If compiling fails (no C++ compiler, an unsupported
    operation), it says so once on stderr and runs the network as it is."""

    def __init__(self, module: torch.nn.Module, batch_size: int) -> None:
        self.module, self.batch_size = module, batch_size
        self.fn: Forward = torch.compile(module, dynamic=False)
        self.failed: str | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, ...)
        b = len(x)
        if self.failed is not None or b > self.batch_size or 2 * b < self.batch_size:
            out: torch.Tensor = self.module(x)
            return out
        if b < self.batch_size:
            fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else None
            x = torch.cat([x, x.new_zeros((self.batch_size - b, *x.shape[1:]))])
            x = x.contiguous(memory_format=fmt) if fmt is not None else x
        try:
            # Frozen: weights become constants, packed once (for oneDNN on CPUs), and each
            # convolution's ReLU6 or residual add runs inside it (EfficientNet-Lite0, bf16, batch
            # 8 on 2 cores: about 1.2x). Dynamo reads inductor's config switch while tracing
            # (``torch.compile``'s own "freezing" option comes too late: the weights stay graph
            # inputs), so it is on around every call. Weights changed after compiling are not
            # seen: `Model` compiles its own copy (`folded`).
            with torch._inductor.config.patch(freezing=True):
                out = self.fn(x)
        except Exception as exc:  # noqa: BLE001  (any compiler failure: run eagerly instead)
            first = (str(exc).strip().splitlines() or [""])[0]
            self.failed = f"{type(exc).__name__}: {first}"
            print(f"pawlab: torch.compile failed ({self.failed}); running uncompiled", file=sys.stderr)
            out = self.module(x)
        return out[:b]


@dataclass
class _Pending:
    """One batch's outputs while some of its images wait to be run again in fp32."""

    outs: list[torch.Tensor] = field(default_factory=list)  # per view, (B, ...)
    waiting: int = 0  # rows not yet run again


class _RerunQueue:
    """Batches in order while images that bf16 was unsure of wait to run again in fp32: queued
    across batches and run ``batch_size`` at a time (a compiled ``again`` has one batch size, and
    a few images per batch would mostly be padding); a batch is released once all are final."""

    def __init__(
        self, again: Forward, batch_size: int, fmt: torch.memory_format, classes: int | None = None
    ) -> None:
        self.again, self.batch_size, self.fmt, self.classes = again, batch_size, fmt, classes
        self.pending: deque[_Pending] = deque()
        self.queue: list[tuple[_Pending, int, int, torch.Tensor]] = []  # (batch, view, row, input (C, H, W))

    def new_batch(self) -> _Pending:
        """A batch to fill view by view, released in the order it was begun."""
        item = _Pending()
        self.pending.append(item)
        return item

    def add_view(self, item: _Pending, x: torch.Tensor, out: torch.Tensor, guard: Guard | None) -> None:
        """One view's outputs (B, ...) for inputs ``x`` (B, C, H, W); with a ``guard``, the rows
        it sends back are queued."""
        if guard is not None:
            unsure = torch.nonzero(guard.rerun(out[:, : self.classes])).flatten().tolist()
            self.queue += [(item, len(item.outs), row, x[row].clone()) for row in unsure]
            item.waiting += len(unsure)
        item.outs.append(out)

    def run_queued(self, everything: bool) -> None:
        """Run the queue in fp32, full batches only unless ``everything``; softmax outputs replace
        the bf16 rows."""
        while len(self.queue) >= self.batch_size or (everything and self.queue):
            chunk = self.queue[: self.batch_size]
            del self.queue[: self.batch_size]
            x = torch.stack([inp for *_, inp in chunk]).contiguous(memory_format=self.fmt)
            probs = softmaxed(self.again(x).float(), self.classes)
            for (item, v, row, _), p in zip(chunk, probs, strict=True):
                item.outs[v][row] = p
                item.waiting -= 1

    def finished(self) -> Iterator[torch.Tensor]:
        """The leading batches with nothing waiting: outputs (B, ...) on the CPU, views averaged."""
        while self.pending and self.pending[0].waiting == 0:
            outs = self.pending.popleft().outs
            yield (outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)).cpu()


def softmaxed(out: torch.Tensor, classes: int | None = None) -> torch.Tensor:
    """Outputs (B, K) -> the softmax of their first ``classes`` columns (all when None: logits
    alone), then the other columns as they are (what a network puts beside its logits)."""
    if classes is None:
        return F.softmax(out, dim=1)
    return torch.cat([F.softmax(out[:, :classes], dim=1), out[:, classes:]], dim=1)


def _outputs(
    run: Forward, x: torch.Tensor, device: torch.device, bf16: bool, softmax: bool, classes: int | None
) -> torch.Tensor:
    """Inputs (B, C, H, W) -> outputs (B, ...) float32, under bf16 autocast if asked; softmax
    probabilities of the first ``classes`` columns if asked (`softmaxed`)."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = run(x).float()
    return softmaxed(out, classes) if softmax else out


def run_batches(
    module: torch.nn.Module,
    batches: Iterable[np.ndarray | torch.Tensor],
    pre: Preprocessing,
    device: torch.device,
    *,
    bf16: bool = False,
    guard: Guard | float | None = None,
    forward: Forward | None = None,
    rerun: Forward | None = None,
    rerun_batch: int = COMPILED_BATCH["fp32"],
    channels_last: bool = True,
    views: Sequence[str] = ("plain",),
    softmax: bool = False,
    classes: int | None = None,
) -> Iterator[torch.Tensor]:
    """Outputs (B, ...) per uint8 batch, in order, float32 on the CPU; with several ``views``
    their softmax probabilities (or outputs) averaged. ``forward``: what runs the network (e.g.
    a `Compiled` copy; default ``module``).

    ``guard`` (with ``softmax``): the images of a fast route (bf16, or an int8 ``forward``) it
    sends back (`Guard.rerun`; a float: the ``confidence`` rule's guard) are run again in fp32
    by ``rerun`` (default ``module``). They are queued
    across batches and run ``rerun_batch`` at a time (a compiled ``rerun`` has one batch size,
    and a few images per batch would mostly be padding); a batch is yielded once all of its
    images are final. ``classes``: the outputs' first columns are the logits, the rest are
    passed through (and averaged over views) as they are, e.g. features beside them."""
    module.eval()
    run = forward or module
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if isinstance(guard, float | int):
        guard = Guard("confidence", float(guard))
    guard = guard if softmax else None  # it reads probabilities
    reruns = _RerunQueue(rerun or module, rerun_batch, fmt, classes)
    with torch.inference_mode():
        for batch in batches:
            item = reruns.new_batch()
            for v in views:
                x = to_inputs(batch, pre, device, fmt, v)
                reruns.add_view(item, x, _outputs(run, x, device, bf16, softmax, classes), guard)
            reruns.run_queued(everything=False)
            yield from reruns.finished()
        reruns.run_queued(everything=True)
        yield from reruns.finished()


def array_batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


def predict_outputs(
    module: torch.nn.Module,
    images: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    batch_size: int | None = None,
    progress: bool = False,
    desc: str = "predicting",
    log_only: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """uint8 (N, H, W, C) -> outputs (N, ...) float32 on the CPU (see `run_batches`), in batches
    of ``batch_size`` (default `infer_batch`); ``progress``: a bar, or lines in a log, named
    ``desc`` (``log_only``: lines in a log, no bar)."""
    batches = array_batches(images, batch_size or infer_batch(device))
    bar = progress_bar(total=len(images), desc=desc, enabled=progress, log_only=log_only)
    outs = []
    for out in run_batches(module, batches, pre, device, **kwargs):
        outs.append(out)
        bar.update(len(out))
    bar.close()
    return torch.cat(outs) if outs else torch.empty(0)

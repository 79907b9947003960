"""The one inference path: validation, `predict`, `evaluate`, `submit` and feature extraction.

uint8 batches (B, H, W, C) go to the device as bytes, are laid out channels-last, scaled and
normalised there, and run under ``inference_mode`` (bf16 autocast when asked for, which a
model file only asks for after its agreement with fp32 was checked on real images; see
`check_agreement`). Test-time augmentation views are made on the batch in torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pawlab.preprocessing import Preprocessing

# Test-time augmentation: the image, its mirror, and two 90% crops (resized back), as fastai.
TTA_VIEWS = ("plain", "flip", "crop-tl", "crop-br")
VIEWS = ("plain", "flip", "crop-tl", "crop-br", "crop-c")
_CROP = 0.9
# Images per forward pass: on CPUs larger batches stop fitting the caches (EfficientNet-Lite0
# at 224x224 on 2 cores: about 31 img/s at 32 or 64, 18 at 128).
INFER_BATCH = 32


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
    """uint8 (B, H, W, C) -> normalised float inputs (B, C, H, W) on ``device``."""
    t = torch.as_tensor(np.ascontiguousarray(batch) if isinstance(batch, np.ndarray) else batch)
    # still one byte a value while moved and laid out; float only on the device
    x = t.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous(memory_format=memory_format)
    x = view(x.float().div_(255.0), view_name)
    return pre.normalize(x).contiguous(memory_format=memory_format)


def run_batches(
    module: torch.nn.Module,
    batches: Iterable[np.ndarray | torch.Tensor],
    pre: Preprocessing,
    device: torch.device,
    *,
    bf16: bool = False,
    channels_last: bool = True,
    views: Sequence[str] = ("plain",),
    softmax: bool = False,
) -> Iterator[torch.Tensor]:
    """Outputs (B, ...) per uint8 batch, float32 on the CPU; with several ``views`` their
    softmax probabilities (or outputs) averaged."""
    module.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for batch in batches:
            total: torch.Tensor | None = None
            for v in views:
                out = module(to_inputs(batch, pre, device, fmt, v)).float()
                out = F.softmax(out, dim=1) if softmax else out
                total = out if total is None else total + out
            assert total is not None
            yield (total / len(views)).cpu()


def array_batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


def predict_outputs(
    module: torch.nn.Module,
    images: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    batch_size: int = INFER_BATCH,
    **kwargs: Any,
) -> torch.Tensor:
    """uint8 (N, H, W, C) -> outputs (N, ...) float32 on the CPU (see `run_batches`)."""
    outs = list(run_batches(module, array_batches(images, batch_size), pre, device, **kwargs))
    return torch.cat(outs) if outs else torch.empty(0)


# Agreement a faster precision must keep with fp32 before a model file may use it.
AGREE_SAME_CLASS = 0.999
AGREE_MAX_PROB_DIFF = 0.01


def check_agreement(
    module: torch.nn.Module,
    images: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    fp32_probs: torch.Tensor | None = None,
    batch_size: int = INFER_BATCH,
) -> dict[str, Any]:
    """bf16 autocast against fp32 on real images: the share predicting the same class and
    the largest probability difference; ``ok`` when both are within the limits. Stops at
    the first batch that settles a failure."""
    n = len(images)
    allowed = int((1 - AGREE_SAME_CLASS) * n)  # class changes that still pass
    changed, diff, seen = 0, 0.0, 0
    for start in range(0, n, batch_size):
        batch = images[start : start + batch_size]
        if fp32_probs is None:
            ref = predict_outputs(module, batch, pre, device, batch_size, softmax=True)
        else:
            ref = fp32_probs[start : start + batch_size]
        fast = predict_outputs(module, batch, pre, device, batch_size, softmax=True, bf16=True)
        changed += int((fast.argmax(1) != ref.argmax(1)).sum())
        diff = max(diff, float((fast - ref).abs().max()))
        seen += len(batch)
        if changed > allowed or diff > AGREE_MAX_PROB_DIFF:
            break
    return {
        "precision": "bf16",
        "images": seen,
        "same_class": 1 - changed / max(seen, 1),
        "max_prob_diff": diff,
        "ok": changed <= allowed and diff <= AGREE_MAX_PROB_DIFF and seen == n,
    }

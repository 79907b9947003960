"""Is bf16 inference safe for this model? Guarded bf16 checked against fp32 on real images.

At the end of training (`record_agreement`) bf16 and fp32 run on up to `AGREEMENT_IMAGES`
validation images; the guard is chosen on half of them (`choose_guard`) and agreement measured
on the other half (`check_agreement`). The model file records the outcome, and inference uses
bf16 only where it agreed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pawlab import checkpoint
from pawlab.inference.engine import folded, predict_outputs
from pawlab.preprocessing import Preprocessing
from pawlab.runtime import use_bf16

# Agreement a faster precision must keep with fp32 before a model file may use it.
AGREE_SAME_CLASS = 0.999
AGREE_MAX_PROB_DIFF = 0.01
# The largest guard: bf16 is kept only for images at least 95% sure of their class.
GUARD_MAX = 0.05
# Guarded bf16 is not worth it when it runs more than this share of the images twice.
MAX_RERUN = 0.5


def choose_guard(unsure: torch.Tensor, diff: torch.Tensor, limit: float = AGREE_MAX_PROB_DIFF / 2) -> float:
    """The largest guard under which every image keeps its probabilities within ``limit``:
    ``unsure`` (N,) is 1 - bf16's top-class probability, ``diff`` (N,) the largest
    probability difference from fp32 (``inf`` where the class changed). Images at most
    ``guard`` unsure keep bf16; the others are run again in fp32. Half the allowed
    difference by default, a margin for images other than these."""
    order = torch.argsort(unsure, stable=True)
    worst = torch.cummax(diff[order], 0).values  # (N,) worst difference kept up to each image
    fits = int((worst <= limit).sum())  # a prefix: the cumulative maximum only grows
    if fits == len(unsure):
        return GUARD_MAX
    # strictly below the first image that does not fit: images tied with it run again too
    below = unsure[order[:fits]]
    below = below[below < unsure[order[fits]]]
    return min(GUARD_MAX, float(below.max())) if len(below) else 0.0


def check_agreement(
    module: torch.nn.Module,
    images: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    fp32_logits: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Guarded bf16 against fp32 on real images. The guard is chosen on every other image
    (`choose_guard`); agreement is measured on the rest, images the guard was not chosen on:
    the share predicting the same class, the largest probability difference and the share run
    again in fp32. ``ok`` when both are within the limits and at most `MAX_RERUN` of the
    images run twice (otherwise fp32 alone is faster)."""
    n = len(images)
    ref = fp32_logits if fp32_logits is not None else predict_outputs(module, images, pre, device, batch_size)
    p_ref = F.softmax(ref, 1)
    fast = folded(module)  # as inference runs it
    p_fast = F.softmax(predict_outputs(fast, images, pre, device, batch_size, bf16=True), 1)
    unsure = 1 - p_fast.amax(1)  # (N,)
    diff = (p_fast - p_ref).abs().amax(1)
    diff[p_fast.argmax(1) != p_ref.argmax(1)] = math.inf
    calib, check = slice(0, None, 2), slice(1, None, 2)  # interleaved: both see every class
    guard = choose_guard(unsure[calib], diff[calib])
    rerun = unsure[check] > guard  # these images get their fp32 probabilities
    guarded = torch.where(rerun[:, None], p_ref[check], p_fast[check])
    held, half = n // 2, n - n // 2
    same = float((guarded.argmax(1) == p_ref[check].argmax(1)).float().mean()) if held else 0.0
    worst = float((guarded - p_ref[check]).abs().max()) if held else 1.0
    return {
        "precision": "bf16",
        "images": held,
        "calibration_images": half,
        "guard": guard,
        "rerun": float(rerun.float().mean()) if held else 1.0,
        "same_class": same,
        "max_prob_diff": worst,
        "unguarded_max_prob_diff": float((p_fast - p_ref).abs().max()) if n else 1.0,
        "ok": held > 0
        and same >= AGREE_SAME_CLASS
        and worst <= AGREE_MAX_PROB_DIFF
        and float(rerun.float().mean()) <= MAX_RERUN,
    }


AGREEMENT_IMAGES = 1000  # validation images on which bf16 inference is checked against fp32


def record_agreement(
    path: Path,
    network: torch.nn.Module,
    images: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    log: Callable[[str], None],
    fp32_logits: Callable[[np.ndarray], torch.Tensor] | None = None,
) -> None:
    """Check guarded bf16 inference of the model saved at ``path`` against fp32 on validation
    ``images`` (uint8 (N, H, W, C)) and record the outcome in the model file. ``network`` is
    loaded with the saved weights; ``fp32_logits(rows)``, when given, supplies fp32 logits of
    those rows (a frozen trunk's cached features make them cheap)."""
    if not use_bf16("auto", device):
        return
    ck = checkpoint.load(path, with_optimizer=True)
    network.load_state_dict(ck.model_state)
    # a seeded sample across the classes (the arrays are in file-name order, often by class)
    rows = np.sort(np.random.default_rng(0).permutation(len(images))[:AGREEMENT_IMAGES])
    fp32 = fp32_logits(rows) if fp32_logits is not None else None
    result = check_agreement(network, images[rows], pre, device, fp32)
    if result["ok"]:
        verdict = "agrees with fp32: bf16 for inference"
    elif result["rerun"] > MAX_RERUN and result["max_prob_diff"] <= AGREE_MAX_PROB_DIFF:
        verdict = "would run too many images twice to be faster: fp32 for inference"
    else:
        verdict = "does not agree with fp32: fp32 for inference"
    log(
        f"guarded bf16 inference {verdict} ({result['images']} validation images: same class "
        f"{result['same_class']:.2%}, largest probability difference {result['max_prob_diff']:.4f}, "
        f"{result['rerun']:.1%} run again in fp32 by the guard {result['guard']:.4f})"
    )
    meta = {**ck.meta, "inference": result}
    checkpoint.save(path, ck.model_state, meta, ck.optimizer_state, ck.rng, ck.extra)

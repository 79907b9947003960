"""Is bf16 inference safe for this model? Guarded bf16 checked against fp32 on real images
(and, by the same rule, guarded int8: `pawlab.inference.runtimes`).

At the end of training (`agreement_record`) bf16 and fp32 run on up to `AGREEMENT_IMAGES`
validation images. The rule (`guarded_agreement`): bf16 keeps every image except those whose two
likeliest classes are close (`pawlab.inference.guard`'s ``margin`` rule), which run again in
fp32; the margin is chosen on half of the images (`choose_margin`) and agreement measured on the
other half against the tolerances below (`agrees`). The model file records the rule, its setting
and the figures, and inference uses bf16 only where it agreed.

Before the margin rule, the guard was on confidence (images below ``1 - guard`` ran again): on a
five-class photo task over half the images were below it although bf16 changed none of their
classes, so such models fell back to fp32. Records of that rule keep their meaning
(`pawlab.inference.guard.Guard.from_record`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pawlab.inference.engine import folded, predict_outputs
from pawlab.inference.guard import Guard, margins
from pawlab.preprocessing import Preprocessing
from pawlab.runtime import use_bf16

# What a faster precision must keep against fp32 on held-out validation images before a model
# file may use it: the class of (almost) every image, the accuracy and log loss against the true
# labels, and every probability within a bound. The accuracy bound follows from the first where
# it holds (accuracy moves at most by the share of images whose class changed); it is stated for
# rules that relax the first.
AGREE_SAME_CLASS = 0.999
AGREE_ACCURACY = 0.005  # half a point
AGREE_LOG_LOSS = 0.005
# The probability bound was 0.01. bf16's rounding moves the probabilities of unsure images more
# than that (679 validation photos of five-class flowers, default EfficientNet-Lite2 transfer
# model: up to 0.10, though accuracy stays the same and log loss moves by 0.003; Lite0: 0.051), so
# 0.01 kept bf16 only for images at least ~97% sure and such tasks ran in fp32. Retraining the
# same Lite0 head with another seed moves them far more (largest 0.24, 99th percentile 0.14, 2.8%
# of classes changed), so 0.1 still catches a model that bf16 breaks and passes rounding.
AGREE_MAX_PROB_DIFF = 0.1
# Guarded bf16 is not worth it when it runs more than this share of the images twice (compiled
# EfficientNet-Lite0 on 2 cores: bf16 about 1.9x fp32's images/s, so even at half it barely pays).
MAX_RERUN = 0.5
# A class can change under bf16 only where the top-two margin is below twice its probability
# error; images up to this many times that margin run again in fp32, against errors larger than
# the calibration images showed (flowers, Lite2: unguarded bf16 changed 4 of 679 classes, at
# margins up to 0.069, with errors up to 0.10; the margin chosen, 0.39, re-runs 8.6%).
MARGIN_SAFETY = 2.0
# The confidence rule's largest guard: bf16 kept only for images at least 95% sure of their
# class; and the largest difference it kept images within (half its bound then, 0.01).
GUARD_MAX = 0.05
GUARD_LIMIT = 0.005


def choose_guard(unsure: torch.Tensor, diff: torch.Tensor, limit: float = GUARD_LIMIT) -> float:
    """The confidence rule's guard (recorded for pawlab before the margin rule): the largest
    under which every image keeps its probabilities within ``limit``: ``unsure`` (N,) is
    1 - bf16's top-class probability, ``diff`` (N,) the largest probability difference from
    fp32 (``inf`` where the class changed). Images at most ``guard`` unsure keep bf16; the
    others are run again in fp32. Half the allowed difference by default, a margin for images
    other than these."""
    order = torch.argsort(unsure, stable=True)
    worst = torch.cummax(diff[order], 0).values  # (N,) worst difference kept up to each image
    fits = int((worst <= limit).sum())  # a prefix: the cumulative maximum only grows
    if fits == len(unsure):
        return GUARD_MAX
    # strictly below the first image that does not fit: images tied with it run again too
    below = unsure[order[:fits]]
    below = below[below < unsure[order[fits]]]
    return min(GUARD_MAX, float(below.max())) if len(below) else 0.0


def choose_margin(
    margin: torch.Tensor,
    diff: torch.Tensor,
    limit: float = AGREE_MAX_PROB_DIFF,
    safety: float = MARGIN_SAFETY,
) -> float:
    """The top-two margin below which images run again in fp32, from calibration images:
    ``margin`` (N,) bf16's, ``diff`` (N,) the largest probability difference from fp32 (``inf``
    where the class changed). The larger of
    * what was seen: every image kept (margin at least the setting) is within ``limit`` of fp32
      and kept its class (the first that is not, and any below or tied with it, runs again;
      where none is, every image does);
    * what was not: ``safety`` x twice the largest difference of the images kept, below which
      an unseen image's class could change.
    The whole probability bound by default, not half as `choose_guard`'s: the held-out half
    checks it on images the choice never saw."""
    order = torch.argsort(margin, descending=True, stable=True)
    worst = torch.cummax(diff[order], 0).values  # (N,) worst difference kept down to each image
    fits = int((worst <= limit).sum())  # a prefix: the cumulative maximum only grows
    above = margin.new_tensor(2.0)
    if fits == 0:  # not even the surest image: bf16 for none
        return float(torch.nextafter(margin.new_tensor(1.0), above))  # above any margin
    seen = 0.0 if fits == len(margin) else float(torch.nextafter(margin[order[fits]], above))
    kept = diff[margin >= seen]
    return max(seen, safety * 2 * float(kept.max())) if len(kept) else seen


def agreement_figures(
    p_ref: torch.Tensor, p_test: torch.Tensor, labels: torch.Tensor | None
) -> dict[str, Any]:
    """How probabilities ``p_test`` (N, K) compare with fp32's ``p_ref`` (N, K): the share of
    the same class, the largest probability difference and, with true ``labels`` (N,), the
    accuracy and log loss of both (None without labels)."""
    n = len(p_ref)
    figures: dict[str, Any] = {
        "images": n,
        "same_class": float((p_test.argmax(1) == p_ref.argmax(1)).float().mean()) if n else 0.0,
        "max_prob_diff": float((p_test - p_ref).abs().max()) if n else 1.0,
    }
    if labels is None or not n:
        return {**figures, "accuracy_fp32": None, "accuracy": None, "log_loss_fp32": None, "log_loss": None}
    for key, p in (("accuracy_fp32", p_ref), ("accuracy", p_test)):
        figures[key] = float((p.argmax(1) == labels).float().mean())
    for key, p in (("log_loss_fp32", p_ref), ("log_loss", p_test)):
        figures[key] = float(-p.gather(1, labels[:, None]).clamp_min(1e-15).log().mean())
    return figures


def agrees(figures: dict[str, Any]) -> bool:
    """Whether `agreement_figures` are within every tolerance (the labelled ones where given)."""
    ok = (
        figures["images"] > 0
        and figures["same_class"] >= AGREE_SAME_CLASS
        and figures["max_prob_diff"] <= AGREE_MAX_PROB_DIFF
    )
    if figures.get("accuracy") is None:  # no labels (or a record from before they counted)
        return bool(ok)
    return bool(
        ok
        and abs(figures["accuracy"] - figures["accuracy_fp32"]) <= AGREE_ACCURACY
        and abs(figures["log_loss"] - figures["log_loss_fp32"]) <= AGREE_LOG_LOSS
    )


def guarded_agreement(
    p_ref: torch.Tensor, p_fast: torch.Tensor, labels: torch.Tensor | None = None, precision: str = "bf16"
) -> dict[str, Any]:
    """The agreement record of a guarded fast ``precision`` (bf16, or int8) from probabilities
    of the same images, fp32's ``p_ref`` and the fast one's ``p_fast`` (N, K), and their true
    ``labels`` (N,) if known. The margin
    is chosen on every other image (`choose_margin`); agreement is measured on the rest, images
    it was not chosen on (`agreement_figures`). ``ok`` when they agree (`agrees`) and at most
    `MAX_RERUN` of them run twice (otherwise fp32 alone is faster)."""
    n = len(p_ref)
    diff = (p_fast - p_ref).abs().amax(1)
    diff[p_fast.argmax(1) != p_ref.argmax(1)] = math.inf
    calib, check = slice(0, None, 2), slice(1, None, 2)  # interleaved: both see every class
    guard = Guard("margin", choose_margin(margins(p_fast[calib]), diff[calib]))
    rerun = guard.rerun(p_fast[check])  # these images get their fp32 probabilities
    guarded = torch.where(rerun[:, None], p_ref[check], p_fast[check])
    figures = agreement_figures(p_ref[check], guarded, labels[check] if labels is not None else None)
    share = float(rerun.float().mean()) if len(rerun) else 1.0
    return {
        "precision": precision,
        "rule": guard.rule,
        "margin": guard.setting,
        # pawlab before the margin rule reads this alone, as the confidence rule's guard
        "guard": choose_guard(1 - p_fast[calib].amax(1), diff[calib]),
        **figures,
        "calibration_images": n - n // 2,
        "rerun": share,
        "unguarded_max_prob_diff": float((p_fast - p_ref).abs().max()) if n else 1.0,
        "ok": agrees(figures) and share <= MAX_RERUN,
    }


def check_agreement(
    module: torch.nn.Module,
    images: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    fp32_logits: torch.Tensor | None = None,
    batch_size: int | None = None,
    labels: np.ndarray | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Guarded bf16 against fp32 on real images, uint8 (N, H, W, C) with their true ``labels``
    (N,) if known: `guarded_agreement` of their bf16 and fp32 probabilities. ``fp32_logits``
    (N, K): fp32's, when already known. ``progress``: each pass's lines in a log (no bar).
    Both passes run the network as inference does (`folded`): fp32 inference is the folded
    network too, and eager fp32 runs it faster than with its batch-norms (EfficientNet-Lite2 at
    260x260, 1,000 photos on 2 cores: 18-24 s, against 20-34 s)."""
    check = partial(
        predict_outputs, pre=pre, device=device, batch_size=batch_size, progress=progress, log_only=True
    )
    what = "checking bf16 inference against fp32"
    fast = folded(module)
    ref = fp32_logits if fp32_logits is not None else check(fast, images, desc=f"{what}: fp32")
    p_fast = F.softmax(check(fast, images, desc=f"{what}: bf16", bf16=True), 1)
    truth = torch.as_tensor(labels, dtype=torch.int64) if labels is not None else None
    return guarded_agreement(F.softmax(ref, 1), p_fast, truth)


AGREEMENT_IMAGES = 1000  # validation images on which bf16 inference is checked against fp32


def agreement_record(
    network: torch.nn.Module,
    images: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    log: Callable[[str], None],
    fp32_logits: Callable[[np.ndarray], torch.Tensor] | None = None,
    labels: np.ndarray | None = None,
    progress: bool = False,
) -> dict[str, Any] | None:
    """Check guarded bf16 inference of ``network`` against fp32 on validation ``images``
    (uint8 (N, H, W, C)) and their ``labels`` (N,): the record a model file keeps (None where
    bf16 is not fast here). ``fp32_logits(rows)``, when given, supplies fp32 logits of those
    rows (a frozen trunk's cached features make them cheap). ``progress``: lines in a log while
    it runs."""
    if not use_bf16("auto", device):
        return None
    # a seeded sample across the classes (the arrays are in file-name order, often by class)
    rows = np.sort(np.random.default_rng(0).permutation(len(images))[:AGREEMENT_IMAGES])
    fp32 = fp32_logits(rows) if fp32_logits is not None else None
    truth = labels[rows] if labels is not None else None
    result = check_agreement(network, images[rows], pre, device, fp32, labels=truth, progress=progress)
    log(f"guarded bf16 inference {describe(result)}")
    return result


def describe(result: dict[str, Any]) -> str:
    """An agreement record in a line: the verdict, then the figures."""
    if result["ok"]:
        verdict = f"agrees with fp32: {result.get('precision', 'bf16')} for inference"
    elif result["rerun"] > MAX_RERUN and agrees(result):
        verdict = "would run too many images twice to be faster: fp32 for inference"
    else:
        verdict = "does not agree with fp32: fp32 for inference"
    scored = ""
    if result.get("accuracy") is not None:
        scored = (
            f", accuracy {result['accuracy']:.2%} (fp32 {result['accuracy_fp32']:.2%}), "
            f"log loss {result['log_loss']:.4f} (fp32 {result['log_loss_fp32']:.4f})"
        )
    unguarded = ""
    if "unguarded_max_prob_diff" in result:
        unguarded = f" ({result['unguarded_max_prob_diff']:.4f} unguarded)"
    guard = Guard.from_record({**result, "ok": True})
    return (
        f"{verdict} ({result['images']} validation images: same class {result['same_class']:.2%}, "
        f"largest probability difference {result['max_prob_diff']:.4f}{unguarded}{scored}, "
        f"{result['rerun']:.1%} run again in fp32: {guard.describe() if guard else 'no guard'})"
    )

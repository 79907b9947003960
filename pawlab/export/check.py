"""Does an exported graph answer as the model does? The images it is checked on, and the rule.

The tolerances are here, in one place (`TOLERANCES`): an fp32 graph must give pawlab's fp32
answers (the same class for every image, every probability within 1e-4); an int8 graph may
lose at most 0.5 points of validation accuracy and raise the validation log loss by at most
0.005 against the fp32 graph (the share of images keeping fp32's class is recorded, not a limit:
what users see is accuracy and log loss, and int8 moves a few unsure images either way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pawlab.inference.agreement import AGREE_ACCURACY, AGREE_LOG_LOSS, agreement_figures


@dataclass(frozen=True)
class Tolerance:
    """How far a graph's answers may be from the reference's (None: not a limit)."""

    same_class: float | None = None  # the least share of images keeping the reference's class
    max_prob_diff: float | None = None  # the largest difference of any probability
    accuracy_drop: float | None = None  # the largest loss of validation accuracy (0.005: half a point)
    log_loss_rise: float | None = None  # the largest rise of validation log loss


TOLERANCES = {
    "fp32": Tolerance(same_class=1.0, max_prob_diff=1e-4),
    # bf16's limits (`pawlab.inference.agreement`), one-sided: an int8 graph that does better passes
    "int8": Tolerance(accuracy_drop=AGREE_ACCURACY, log_loss_rise=AGREE_LOG_LOSS),
}


def compare(
    reference: np.ndarray, probs: np.ndarray, labels: np.ndarray, tolerance: Tolerance
) -> dict[str, Any]:
    """``probs`` (N, classes) against ``reference`` (N, classes) on labelled images, as bf16's
    agreement is measured (`agreement_figures`): the share keeping the reference's class, the
    largest probability difference, both accuracies and log losses and their changes; ``ok``
    when within ``tolerance``, else ``failed`` says why."""
    truth = torch.from_numpy(labels).long()
    f = agreement_figures(torch.from_numpy(reference), torch.from_numpy(probs), truth)
    figures: dict[str, Any] = {
        "images": f["images"],
        "same_class": f["same_class"],
        "max_prob_diff": f["max_prob_diff"],
        "reference_accuracy": f["accuracy_fp32"],
        "accuracy": f["accuracy"],
        "accuracy_change": f["accuracy"] - f["accuracy_fp32"],
        "reference_log_loss": f["log_loss_fp32"],
        "log_loss": f["log_loss"],
        "log_loss_change": f["log_loss"] - f["log_loss_fp32"],
    }
    failed = _outside(figures, tolerance)
    return {**figures, "ok": not failed, "failed": failed}


def _outside(f: dict[str, Any], t: Tolerance) -> list[str]:
    """The figures outside ``t``, in words."""
    out = []
    if t.same_class is not None and f["same_class"] < t.same_class:
        out.append(f"same class {f['same_class']:.2%} < {t.same_class:.2%}")
    if t.max_prob_diff is not None and f["max_prob_diff"] > t.max_prob_diff:
        out.append(f"probability difference {f['max_prob_diff']:.2g} > {t.max_prob_diff:g}")
    if t.accuracy_drop is not None and -f["accuracy_change"] > t.accuracy_drop:
        out.append(f"accuracy {100 * f['accuracy_change']:+.2f} points, below -{100 * t.accuracy_drop:g}")
    if t.log_loss_rise is not None and f["log_loss_change"] > t.log_loss_rise:
        out.append(f"log loss {f['log_loss_change']:+.4f} > +{t.log_loss_rise:g}")
    return out


def summary(figures: dict[str, Any]) -> str:
    """One line of a comparison's figures."""
    return (
        f"{figures['images']} validation images: same class {figures['same_class']:.2%}, largest "
        f"probability difference {figures['max_prob_diff']:.2g}, accuracy {figures['accuracy']:.4f} "
        f"({100 * figures['accuracy_change']:+.2f} points), log loss {figures['log_loss']:.4f} "
        f"({figures['log_loss_change']:+.4f})"
    )

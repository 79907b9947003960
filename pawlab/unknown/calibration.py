"""Typicality: a score in the units of the validation images, and the rule that refuses.

An image's typicality is the share of validation images (in distribution, never trained on)
that score below it: 0.3 means 30% of them are less typical. ``unknown = typicality < T``
then refuses about a share T of in-distribution images, whatever the method's score scale.
"""

from __future__ import annotations

import torch

from pawlab.errors import ConfigError
from pawlab.unknown.scorers import State, score

DEFAULT_THRESHOLD = 0.05  # about 95% of in-distribution images accepted
MAX_POINTS = 2048  # validation scores kept: more are thinned to evenly spaced quantiles


def calibrate(state: State, features: torch.Tensor, logits: torch.Tensor) -> State:
    """``state`` with the sorted scores of the validation images' features (N, D) and logits
    (N, C) kept as its ``calibration`` (at most `MAX_POINTS`, float32)."""
    if len(features) == 0:
        raise ConfigError("unknown-input calibration: no validation images to calibrate on")
    ordered = score(state, features, logits).sort().values
    if len(ordered) > MAX_POINTS:
        ordered = ordered[torch.linspace(0, len(ordered) - 1, MAX_POINTS).round().long()]
    return State(state.method, dict(state.settings), {**state.tensors, "calibration": ordered.contiguous()})


def typicality(state: State, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(N,) float64 in [0, 1]: for each image, the share of calibration scores below its score
    (a count over them: exact)."""
    ordered = state.tensors.get("calibration")
    if ordered is None:
        raise ValueError(f"{state.method}: not calibrated (calibrate() keeps the validation scores)")
    below = torch.searchsorted(ordered, score(state, features, logits).contiguous(), side="left")
    return below.double() / len(ordered)


def check_threshold(threshold: float, where: str = "--unknown-threshold") -> float:
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"{where}: a typicality between 0 and 1, got {threshold:g}")
    return threshold


def refused(typical: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """(N,) bool: the images too atypical to answer, typicality below ``threshold``."""
    return typical < check_threshold(threshold)

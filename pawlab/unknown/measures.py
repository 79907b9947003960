"""How well scores tell in-distribution images (inside) from others (outside): higher scores
are more typical, as the scorers give them."""

from __future__ import annotations

import numpy as np


def fpr_at_95(inside: np.ndarray, outside: np.ndarray) -> float:
    """Share of ``outside`` scoring at or above the score that keeps 95% of ``inside``."""
    return float((outside >= np.quantile(inside, 0.05)).mean())


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """The chance that an inside score beats an outside one (ties count half)."""
    ordered = np.sort(outside)
    below = np.searchsorted(ordered, inside, side="left")
    ties = np.searchsorted(ordered, inside, side="right") - below
    return float((below + ties / 2).mean() / len(outside))

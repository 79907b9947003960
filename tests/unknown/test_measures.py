"""FPR at 95% TPR and AUROC, against their definitions counted pair by pair."""

from __future__ import annotations

import numpy as np
import pytest

from pawlab.unknown import auroc, fpr_at_95


def test_auroc_is_the_share_of_pairs_won_with_ties_counting_half() -> None:
    rng = np.random.default_rng(0)
    inside, outside = rng.integers(0, 20, 300).astype(float), rng.integers(0, 15, 200).astype(float)
    pairs = inside[:, None] - outside[None, :]
    assert auroc(inside, outside) == pytest.approx((pairs > 0).mean() + (pairs == 0).mean() / 2)
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5


def test_fpr_at_95_counts_the_outside_scores_at_or_above_the_fifth_percentile_inside() -> None:
    inside = np.arange(100.0)  # its 5% quantile: 4.95
    assert fpr_at_95(inside, np.array([4.0, 4.95, 5.0, 100.0])) == 0.75
    assert fpr_at_95(inside, np.array([-1.0, 0.0])) == 0.0

"""In-distribution scorers on synthetic features: three Gaussian classes in distribution, and
images that are none of them, near the origin where a network's logits say little."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pawlab.errors import ConfigError, ModelFileError
from pawlab.unknown import (
    DEFAULT_METHOD,
    DEFAULT_THRESHOLD,
    SCORERS,
    State,
    calibrate,
    fit,
    from_tensors,
    refused,
    score,
    to_tensors,
    typicality,
)
from pawlab.unknown.scorers import mahalanobis_from_sums

D, C = 16, 3
MEANS = 4.0 * torch.eye(C, D)  # class c is centred at 4 along axis c
HEAD = MEANS.T.clone()  # logits: how far along each class's axis, (D, C)


def sample(n: int, seed: int, shift: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features (n, D), logits (n, C), labels (n,)); ``shift``: out of distribution, centred
    on ``shift`` times the last axis, no class's."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (n,), generator=g)
    centre = (
        MEANS[labels] if shift is None else torch.zeros(n, D).index_fill_(1, torch.tensor([D - 1]), shift)
    )
    features = centre + torch.randn(n, D, generator=g)
    return features, features @ HEAD, labels


def auroc(inside: torch.Tensor, outside: torch.Tensor) -> float:
    """The chance that an in-distribution image scores above an out-of-distribution one."""
    return float((inside[:, None] > outside[None, :]).float().mean())


@pytest.fixture(scope="module")
def train() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return sample(1500, seed=0)


@pytest.mark.parametrize("method", SCORERS.names())
def test_each_scorer_scores_a_shifted_gaussian_below_the_training_one(
    method: str, train: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> None:
    state = fit(method, *train)
    inside_f, inside_l, _ = sample(400, seed=1)
    outside_f, outside_l, _ = sample(400, seed=2, shift=1.0)
    inside, outside = score(state, inside_f, inside_l), score(state, outside_f, outside_l)
    assert inside.shape == (400,) and inside.dtype == torch.float32
    assert auroc(inside, outside) > 0.95  # the baseline, msp, is the weakest


@pytest.mark.parametrize("method", SCORERS.names())
def test_calibration_refuses_about_the_chosen_share_of_new_in_distribution_images(
    method: str, train: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> None:
    val_f, val_l, _ = sample(2000, seed=3)
    state = calibrate(fit(method, *train), val_f, val_l)
    new_f, new_l, _ = sample(2000, seed=4)
    typical = typicality(state, new_f, new_l)
    assert float(typical.min()) >= 0.0 and float(typical.max()) <= 1.0
    assert abs(float(refused(typical).float().mean()) - DEFAULT_THRESHOLD) < 0.02
    assert abs(float(refused(typical, 0.2).float().mean()) - 0.2) < 0.04
    out_f, out_l, _ = sample(200, seed=5, shift=1.0)
    assert float(refused(typicality(state, out_f, out_l)).float().mean()) > 0.6  # most, even by msp


@pytest.mark.parametrize("method", SCORERS.names())
def test_a_state_round_trips_through_a_safetensors_file(
    method: str, train: tuple[torch.Tensor, torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    val_f, val_l, _ = sample(300, seed=3)
    state = calibrate(fit(method, *train), val_f, val_l)
    tensors, meta = to_tensors(state)
    path = tmp_path / "m.safetensors"
    save_file({"net.weight": torch.ones(2), **tensors}, str(path), metadata={"pawlab": json.dumps(meta)})
    with safe_open(str(path), "pt") as fh:
        loaded = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
        back = from_tensors(loaded, json.loads(fh.metadata()["pawlab"]), str(path))
    assert back is not None and back.method == method and back.settings == state.settings
    assert set(back.tensors) == set(state.tensors) and back.nbytes == state.nbytes
    torch.testing.assert_close(typicality(back, val_f, val_l), typicality(state, val_f, val_l))


def test_a_file_without_a_state_has_none_and_a_damaged_entry_is_one_line() -> None:
    assert from_tensors({}, None, "old.safetensors") is None
    with pytest.raises(ModelFileError, match=r"^m\.safetensors: its unknown-input entry is damaged"):
        from_tensors({}, {"method": "telepathy", "settings": {}}, "m.safetensors")
    with pytest.raises(ModelFileError, match="no calibration tensor"):
        from_tensors({}, {"method": "knn", "settings": {"k": 3, "bank": 10}}, "m.safetensors")


def test_unknown_methods_settings_and_thresholds_are_config_errors(
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    with pytest.raises(ConfigError, match=r"must be one of energy, knn, mahalanobis, msp, got 'odin'"):
        fit("odin", *train)
    with pytest.raises(ConfigError, match=r"knn: no setting 'neighbours' \(it has: k, bank\)"):
        fit("knn", *train, neighbours=5)
    with pytest.raises(ConfigError, match="--unknown-threshold: a typicality between 0 and 1, got 5"):
        refused(torch.zeros(3), 5)


def test_the_knn_bank_is_a_seeded_half_precision_subsample(
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    a, b = fit("knn", *train, bank=100), fit("knn", *train, bank=100)
    assert a.tensors["bank"].shape == (100, D) and a.tensors["bank"].dtype == torch.float16
    assert torch.equal(a.tensors["bank"], b.tensors["bank"]) and a.nbytes == 100 * D * 2
    assert fit("knn", *train, bank=5000).tensors["bank"].shape == (1500, D)


def test_the_default_method_is_registered_and_fits_with_its_defaults(
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    state = fit(DEFAULT_METHOD, *train)
    assert DEFAULT_METHOD in SCORERS and state.settings == SCORERS.get(DEFAULT_METHOD).defaults


def test_typicality_needs_a_calibrated_state() -> None:
    with pytest.raises(ValueError, match="not calibrated"):
        typicality(State("msp", {}, {}), *sample(3, seed=0)[:2])


def test_mahalanobis_from_sums_scores_as_the_fit_on_the_features(
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    keep = train[2] != 1  # class 1 without images: both take the mean of all for it
    features, logits, labels = (t[keep] for t in train)
    x = torch.nn.functional.normalize(features, dim=1)  # as "mahalanobis" reads them
    sums = torch.zeros(C, D).index_add_(0, labels, x)
    state = mahalanobis_from_sums(torch.bincount(labels, minlength=C), sums, x.T @ x)
    fitted = fit("mahalanobis", features, logits, labels)
    queries, q_logits, _ = sample(200, seed=5)
    assert state.method == "mahalanobis" and state.settings == fitted.settings
    assert torch.allclose(score(state, queries, q_logits), score(fitted, queries, q_logits), rtol=0.01)

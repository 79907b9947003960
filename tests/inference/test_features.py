"""A frozen backbone's features: which networks have a fixed trunk, and the feature cache."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pawlab.data.cache import cache_root
from pawlab.inference import features as _features
from pawlab.inference.engine import to_inputs
from pawlab.inference.features import trunk_features
from pawlab.inference.routes import Route
from pawlab.models import (
    Network,
    build,
    frozen_trunk,
    get_architecture,
    preprocessing_for,
    transfer_architecture,
)

CPU = torch.device("cpu")
BF16 = Route("torch", "bf16")
SPEC = transfer_architecture("efficientnet_lite0", size=32)


@pytest.fixture(scope="module")
def network() -> Network:
    return build(SPEC, 2)


def trunk_of(network: Network) -> torch.nn.Module:
    trunk: torch.nn.Module = network.body[:1]
    return trunk


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A feature cache of each test's own, so that what it finds there is what it wrote."""
    monkeypatch.setenv("PAWLAB_CACHE_DIR", str(tmp_path / "cache"))


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def cached_files() -> set[Path]:
    return set((cache_root() / "features").glob("*/features.npy"))


def test_frozen_trunk(network: Network) -> None:
    assert frozen_trunk(network) == 1  # the backbone is body[0]; dropout and linear are the head
    assert frozen_trunk(build(get_architecture("small-cnn"), 2)) is None
    fine_tuned = build(transfer_architecture("efficientnet_lite0", size=32, frozen=False), 2)
    assert frozen_trunk(fine_tuned) is None
    assert frozen_trunk(torch.nn.Linear(2, 2)) is None  # not a pawlab network at all


def test_trunk_features_are_the_trunks_outputs_and_cached(
    network: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    trunk, pre = trunk_of(network), preprocessing_for(SPEC)
    batch = images(5, seed=101)
    assert not cached_files()
    feats = trunk_features(trunk, batch, pre, CPU, views=("plain", "flip"), progress=False)
    assert feats.dtype == np.float32 and feats.shape == (5, 2, 1280)
    assert isinstance(feats, np.memmap)  # read from the cache file, not held in memory
    assert len(cached_files()) == 1  # both views in one entry, computed in one pass
    with torch.inference_mode():
        trunk.eval()
        plain = trunk(to_inputs(batch, pre, CPU)).numpy()
        mirrored = trunk(to_inputs(batch, pre, CPU, view_name="flip")).numpy()
    np.testing.assert_allclose(feats[:, 0], plain, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(feats[:, 1], mirrored, rtol=1e-4, atol=1e-4)
    assert not np.allclose(feats[:, 0], feats[:, 1])

    # the second time nothing is computed: the same arrays come from the cache
    def no_compute(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("features computed again although cached")

    with monkeypatch.context() as m:
        m.setattr(_features, "_passes", no_compute)
        again = trunk_features(trunk, batch, pre, CPU, views=("plain", "flip"), progress=False)
    assert np.array_equal(again, feats)
    plain_only = trunk_features(trunk, batch, pre, CPU, progress=False)  # other views: its own entry
    assert plain_only.shape == (5, 1, 1280)
    np.testing.assert_allclose(plain_only[:, 0], feats[:, 0], rtol=1e-5, atol=1e-5)
    assert len(cached_files()) == 2


def test_bf16_features_are_their_own_entry_and_close_to_fp32s(network: Network) -> None:
    trunk, pre = trunk_of(network), preprocessing_for(SPEC)
    batch = images(6, seed=404)
    fp32 = trunk_features(trunk, batch, pre, CPU, views=("plain", "flip"), progress=False)
    bf16 = trunk_features(trunk, batch, pre, CPU, views=("plain", "flip"), route=BF16, progress=False)
    assert len(cached_files()) == 2 and bf16.dtype == np.float32 and bf16.shape == fp32.shape
    assert not np.array_equal(bf16, fp32)
    # bf16 keeps 8 bits of mantissa: features agree to a few percent of their spread
    assert np.abs(bf16 - fp32).mean() < 0.05 * np.abs(fp32).mean()


def test_a_failed_pass_leaves_no_cache_file(network: Network, monkeypatch: pytest.MonkeyPatch) -> None:
    trunk, pre = trunk_of(network), preprocessing_for(SPEC)
    real = _features._passes

    def failing(*args: object) -> Iterator[np.ndarray]:
        parts = real(*args)  # type: ignore[arg-type]
        yield next(parts)
        raise KeyboardInterrupt  # Ctrl-C after the first batch

    monkeypatch.setattr(_features, "_passes", failing)
    with pytest.raises(KeyboardInterrupt):
        trunk_features(trunk, images(20, seed=505), pre, CPU, progress=False)
    assert not cached_files()
    assert not [p for p in (cache_root() / "features").rglob("*") if p.suffix == ".tmp"]


def test_an_earlier_pawlabs_flat_features_file_is_moved_into_a_marked_entry_and_reused(
    network: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pawlab.data.cache import ENTRY_MARKER, list_cache

    trunk, pre = trunk_of(network), preprocessing_for(SPEC)
    batch = images(2, seed=303)
    feats = trunk_features(trunk, batch, pre, CPU, progress=False)
    (entry,) = cached_files()
    flat = entry.parent.with_suffix(".npy")  # features/<key>.npy, as before entries had markers
    entry.rename(flat)
    (entry.parent / ENTRY_MARKER).unlink()
    entry.parent.rmdir()

    def no_compute(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("features computed again although cached")

    monkeypatch.setattr(_features, "_passes", no_compute)
    assert np.array_equal(trunk_features(trunk, batch, pre, CPU, progress=False), feats)
    assert not flat.exists() and cached_files() == {entry}
    assert [e.kind for e in list_cache().entries] == ["features"]


def test_other_images_preprocessing_or_weights_are_other_entries(
    network: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    trunk, pre = trunk_of(network), preprocessing_for(SPEC)
    batch = images(3, seed=202)
    calls: list[str] = []
    real = _features._passes

    def counting(*args: object) -> Iterator[np.ndarray]:
        calls.append(str(args[4]))  # the views
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(_features, "_passes", counting)
    first = trunk_features(trunk, batch, pre, CPU, progress=False)
    other = trunk_features(trunk, images(3, seed=203), pre, CPU, progress=False)
    assert len(calls) == 2 and len(cached_files()) == 2
    assert not np.allclose(first, other)
    squashed = trunk_features(trunk, batch, preprocessing_for(SPEC, "squash"), CPU, progress=False)
    assert len(calls) == 3 and np.array_equal(squashed, first)  # same pixels, but its own key
    changed = trunk_of(build(SPEC, 2))
    with torch.no_grad():
        next(changed.parameters()).mul_(2.0)
    trunk_features(changed, batch, pre, CPU, progress=False)
    assert len(calls) == 4 and len(cached_files()) == 4
    trunk_features(trunk, batch, pre, CPU, progress=False)  # the first again: cached
    assert len(calls) == 4


@pytest.mark.parametrize("route", [_features.TORCH_FP32, BF16])
def test_torchs_features_keep_the_cache_keys_they_had(network: Network, route: Route) -> None:
    """The key as pawlab wrote it before onnxruntime could compute features: caches stay valid."""
    trunk, pre = trunk_of(network), preprocessing_for(SPEC)
    batch = images(3, seed=7)
    before = {
        "version": _features.FEATURES_VERSION,
        "weights": _features.weights_digest(trunk),
        "preprocessing": pre.to_json(),
        "images": _features.images_digest(batch),
        "views": ["plain", "flip"],
        "precision": route.precision,
    }
    expected = hashlib.blake2b(json.dumps(before, sort_keys=True).encode(), digest_size=16).hexdigest()
    assert _features._key(trunk, batch, pre, ("plain", "flip"), route, None) == expected

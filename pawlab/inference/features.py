"""Features of a frozen pretrained backbone, computed once and cached.

A network whose first trainable part is a frozen backbone splits into a trunk (fixed) and a
head (trained): `Network.trunk` and `Network.head`. The trunk's outputs for a set of images
depend only on its weights, the preprocessing, the view (plain or mirrored) and the pixels,
so they are kept in the user cache's entry ``features/<key>/`` under a hash of exactly those, and
every later epoch or run trains the head on them: seconds instead of minutes. The backbones of
an ensemble are cached one by one, each key with the size it is fed and its renormalisation.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from pawlab.atomic import atomic_write_bytes
from pawlab.data import cache
from pawlab.inference.engine import array_batches, folded, infer_batch, run_batches
from pawlab.models.layers import BackboneEnsemble, Resized
from pawlab.preprocessing import Preprocessing
from pawlab.progress import progress_bar

FEATURES_VERSION = 1


def weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def images_digest(images: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(images.shape).encode())
    for start in range(0, len(images), 512):
        h.update(np.ascontiguousarray(images[start : start + 512]).data)
    return h.hexdigest()


def trunk_features(
    trunk: torch.nn.Module,
    images: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    *,
    views: tuple[str, ...] = ("plain",),
    batch_size: int | None = None,
    progress: bool = True,
    what: str = "images",
) -> np.ndarray:
    """float32 (N, len(views), F): the trunk's outputs for uint8 images (N, H, W, C), from the
    cache when the same weights, preprocessing and pixels were seen before. An ensemble of
    backbones is computed, and cached, one backbone at a time."""
    members = _members(trunk)
    if members:  # (N, views, F0 + F1 + ...), each backbone's part cached on its own
        parts = [
            trunk_features(
                m,
                images,
                pre,
                device,
                views=views,
                batch_size=batch_size,
                progress=progress,
                what=f"{what}, {m.member.name}",
            )
            for m in members
        ]
        return np.concatenate(parts, axis=2)
    base = {
        "version": FEATURES_VERSION,
        "weights": weights_digest(trunk),
        "preprocessing": pre.to_json(),
        "images": images_digest(images),
    }
    if isinstance(trunk, Resized):  # its size and renormalisation are no weights
        base["resized"] = [trunk.size, trunk.scale.flatten().tolist(), trunk.shift.flatten().tolist()]
    out = []
    runner: torch.nn.Module | None = None  # the trunk with batch-norms folded, made if needed
    for v in views:
        key = hashlib.blake2b(json.dumps({**base, "view": v}, sort_keys=True).encode(), digest_size=16)
        feats = _cached(key.hexdigest())
        if feats is None:
            # with batch-norms folded (fp32, the same features up to float rounding): 2x faster
            if runner is None:
                runner = folded(trunk)
            feats = _compute(
                runner, images, pre, device, v, batch_size or infer_batch(device), progress, what
            )
            _save(key.hexdigest(), feats)
        out.append(feats)
    return np.stack(out, axis=1)


def _members(trunk: torch.nn.Module) -> list[Resized]:
    """The backbones of a trunk that is a frozen ensemble (alone in a `Sequential`), else none."""
    modules = list(trunk) if isinstance(trunk, torch.nn.Sequential) else [trunk]
    if len(modules) == 1 and isinstance(modules[0], BackboneEnsemble):
        return modules[0].parts
    return []


def _compute(
    trunk: torch.nn.Module,
    images: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    view: str,
    batch_size: int,
    progress: bool,
    what: str,
) -> np.ndarray:
    # fp32: the head is trained on, and later predicts from, features of the same precision
    bar = progress_bar(
        total=len(images), desc=f"features ({what}{', mirrored' if view == 'flip' else ''})", enabled=progress
    )
    parts = []
    for out in run_batches(trunk, array_batches(images, batch_size), pre, device, views=(view,)):
        parts.append(out.numpy())
        bar.update(len(out))
    bar.close()
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def _cached(key: str) -> np.ndarray | None:
    """The cached features of ``key``, or None; an earlier pawlab's flat ``features/<key>.npy``
    is moved into its entry first."""
    folder = cache.cache_root() / "features"
    flat = folder / f"{key}.npy"
    if flat.is_file() and not flat.is_symlink():
        cache.adopt_legacy_features(flat)
    try:
        feats: np.ndarray = np.load(folder / key / cache.FEATURES_FILE)
        return feats
    except (OSError, ValueError):
        return None


def _save(key: str, feats: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, feats.astype(np.float32, copy=False))
    atomic_write_bytes(cache.entry("features", key) / cache.FEATURES_FILE, buf.getvalue())

"""Features of a frozen pretrained backbone, computed once and cached.

A network whose first trainable part is a frozen backbone splits into a trunk (fixed) and a
head (trained): `Network.trunk` and `Network.head`. The trunk's outputs for a set of images
depend only on its weights, the preprocessing, the views (plain, mirrored), the precision and
the pixels, so they are kept in the user cache's entry ``features/<key>/`` under a hash of
exactly those, and every later epoch or run trains the head on them: seconds instead of minutes.
The backbones of an ensemble are cached one by one, each key with the size it is fed and its
renormalisation.

Memory stays flat whatever the number of images: features are written to their cache file a
chunk at a time and read back memory-mapped ((N, views, F) float32; 100,000 photos of
EfficientNet-Lite2 with their mirrors are 1 GB on disk, none of it private memory).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from pawlab.atomic import atomic_write
from pawlab.data import cache
from pawlab.inference.engine import (
    COMPILE_MIN_IMAGES,
    COMPILED_BATCH,
    Compiled,
    Forward,
    folded,
    infer_batch,
    to_inputs,
)
from pawlab.inference.routes import Route
from pawlab.models.layers import BackboneEnsemble, Resized
from pawlab.preprocessing import Preprocessing
from pawlab.progress import closing, progress_bar, stage

FEATURES_VERSION = 2  # 2: one entry holds every view, and the precision is part of the key
CHUNK = 2048  # rows of an ensemble's parts joined at a time
TORCH_FP32 = Route("torch", "fp32")


def weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def images_digest(images: np.ndarray, tick: Callable[[int], object] | None = None) -> str:
    """A hash of the pixels (and shape) of ``images``; ``tick(rows)`` after each part read."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(images.shape).encode())
    for start in range(0, len(images), 64):  # 64 rows at a time: a few MB, however many images
        part = np.ascontiguousarray(images[start : start + 64])
        h.update(part.data)
        if tick is not None:
            tick(len(part))
    return h.hexdigest()


def trunk_features(
    trunk: torch.nn.Module,
    images: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    *,
    views: tuple[str, ...] = ("plain",),
    route: Route = TORCH_FP32,
    calibration: np.ndarray | None = None,
    compile: bool | None = None,
    progress: bool = True,
    what: str = "images",
) -> np.ndarray:
    """float32 (N, len(views), F), memory-mapped from the cache: the trunk's outputs for uint8
    images (N, H, W, C), computed unless the same weights, preprocessing, views, route and
    pixels were seen before. ``route``: torch fp32 or bf16 (autocast), or onnxruntime fp32 or
    int8 (`pawlab.inference.feature_routes`; int8 calibrated on ``calibration``, uint8 training
    images), each its own entry: fp32 features are never read for bf16 ones, nor the reverse.
    ``compile`` (torch): `Compiled` (default: where the job has at least `COMPILE_MIN_IMAGES`
    forward passes on a CPU). An ensemble of backbones is computed, and cached, one backbone
    at a time."""
    members = backbone_members(trunk)
    if members:  # (N, views, F0 + F1 + ...), each backbone's part cached on its own
        parts = [
            trunk_features(
                m,
                images,
                pre,
                device,
                views=views,
                route=route,
                calibration=calibration,
                compile=compile,
                progress=progress,
                what=f"{what}, {m.member.name}",
            )
            for m in members
        ]
        return _joined(parts)
    with stage(f"reading {what}", total=len(images), unit="img", enabled=progress) as bar:
        key = _key(trunk, images, pre, views, route, calibration, bar.update)
    feats = _cached(key)
    if feats is None:
        passes = _route_passes(trunk, images, pre, device, views, route, calibration, compile, progress)
        what = f"features ({what}{', and mirrored' if 'flip' in views else ''})"
        _store(key, len(images), len(views), _counted(passes, len(images), what, progress))
        feats = _cached(key)
        assert feats is not None
    return feats


def _key(
    trunk: torch.nn.Module,
    images: np.ndarray,
    pre: Preprocessing,
    views: Sequence[str],
    route: Route,
    calibration: np.ndarray | None,
    tick: Callable[[int], object] | None = None,
) -> str:
    base: dict[str, object] = {
        "version": FEATURES_VERSION,
        "weights": weights_digest(trunk),
        "preprocessing": pre.to_json(),
        "images": images_digest(images, tick),
        "views": list(views),
        "precision": features_label(route),
    }
    if route.runtime == "onnxruntime":  # another version or calibration, another graph
        from pawlab.inference.feature_routes import graph_setting

        base["graph"] = graph_setting()
        if route.precision == "int8":
            base["calibration"] = images_digest(calibration) if calibration is not None else None
    if isinstance(trunk, Resized):  # its size and renormalisation are no weights
        base["resized"] = [trunk.size, trunk.scale.flatten().tolist(), trunk.shift.flatten().tolist()]
    return hashlib.blake2b(json.dumps(base, sort_keys=True).encode(), digest_size=16).hexdigest()


def features_label(route: Route) -> str:
    """How features computed by ``route`` are named, in their cache key and the training line:
    torch's by precision alone, as before onnxruntime could compute them (their entries stay
    valid), onnxruntime's by runtime and precision."""
    return route.precision if route.runtime == "torch" else str(route)


def backbone_members(trunk: torch.nn.Module) -> list[Resized]:
    """The backbones of a trunk that is a frozen ensemble (alone in a `Sequential`), else none."""
    modules = list(trunk) if isinstance(trunk, torch.nn.Sequential) else [trunk]
    if len(modules) == 1 and isinstance(modules[0], BackboneEnsemble):
        return modules[0].parts
    return []


def _route_passes(
    trunk: torch.nn.Module,
    images: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    views: Sequence[str],
    route: Route,
    calibration: np.ndarray | None,
    compile: bool | None,
    progress: bool,
) -> Iterator[np.ndarray]:
    """`_passes` of ``trunk`` by ``route`` (onnxruntime's graph made first: a line in a log
    while it is, with ``progress``)."""
    if route.runtime == "onnxruntime":
        from pawlab.inference.feature_routes import ort_forward

        with stage(f"preparing onnxruntime {route.precision} for the backbone", enabled=progress):
            session = ort_forward(trunk, pre, route.precision, calibration)
        nchw = torch.contiguous_format  # what onnxruntime reads
        return _passes(session, images, pre, device, views, False, session.batch_size, nchw)
    if compile is None:
        compile = device.type == "cpu" and len(images) * len(views) >= COMPILE_MIN_IMAGES
    # with batch-norms folded (the same features up to float rounding): 2x faster
    return _torch_passes(folded(trunk), images, pre, device, views, route.precision == "bf16", compile)


def _torch_passes(
    runner: torch.nn.Module,
    images: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    views: Sequence[str],
    bf16: bool,
    compile: bool,
) -> Iterator[np.ndarray]:
    """`_passes` of ``runner``: a compiled graph of `COMPILED_BATCH` passes where asked."""
    runner.eval()
    per_pass = COMPILED_BATCH["bf16" if bf16 else "fp32"] if compile else infer_batch(device)
    per_batch = max(1, per_pass // len(views))
    forward: Forward = Compiled(runner, per_batch * len(views)) if compile else runner
    return _passes(forward, images, pre, device, views, bf16, per_pass, torch.channels_last)


def _passes(
    forward: Forward,
    images: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    views: Sequence[str],
    bf16: bool,
    per_pass: int,
    fmt: torch.memory_format,
) -> Iterator[np.ndarray]:
    """Features (B, views, F) float32 per batch of images, in order: every view of a batch in
    one forward pass of ``per_pass`` inputs (so fewer images per batch with more views)."""
    per_batch = max(1, per_pass // len(views))
    with torch.inference_mode():
        for start in range(0, len(images), per_batch):
            batch = images[start : start + per_batch]  # uint8 (b, H, W, C)
            x = torch.cat(_views(batch, pre, device, fmt, views))  # (views * b, C, H, W)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = forward(x.contiguous(memory_format=fmt)).float()  # (views * b, F)
            yield out.view(len(views), len(batch), -1).transpose(0, 1).cpu().numpy()


def _counted(parts: Iterator[np.ndarray], total: int, what: str, progress: bool) -> Iterator[np.ndarray]:
    """``parts`` as they come, each counted on a progress bar (or in a log's lines) by its rows;
    no done line when the pass fails or its parts are not all taken."""
    with closing(progress_bar(total=total, desc=what, enabled=progress)) as bar:
        for part in parts:
            yield part
            bar.update(len(part))


def _views(
    batch: np.ndarray,
    pre: Preprocessing,
    device: torch.device,
    fmt: torch.memory_format,
    views: Sequence[str],
) -> list[torch.Tensor]:
    """Inputs (b, C, H, W) of each view of uint8 images (b, H, W, C); a mirror is the plain
    inputs flipped (normalising is per pixel, so it is the same as normalising the mirror)."""
    plain = to_inputs(batch, pre, device, fmt)
    return [
        plain if v == "plain" else plain.flip(-1) if v == "flip" else to_inputs(batch, pre, device, fmt, v)
        for v in views
    ]


def _store(key: str, n: int, views: int, parts: Iterator[np.ndarray]) -> None:
    """Write the (n, views, F) rows that ``parts`` yields in order, a part at a time, as the
    cache entry ``key``'s file: whole or not at all."""
    path = cache.entry("features", key) / cache.FEATURES_FILE

    def write(tmp: Path) -> None:
        out: np.memmap | None = None  # its width is known once the first part is
        row = 0
        for part in parts:
            if out is None:
                out = _new_file(tmp, (n, views, part.shape[-1]))
            out[row : row + len(part)] = part
            row += len(part)
        if out is None:
            _new_file(tmp, (n, views, 0))
        else:
            out.flush()
            del out

    atomic_write(path, write)


def _new_file(path: Path, shape: tuple[int, ...]) -> np.memmap:
    out: np.memmap = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    return out


def _joined(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The members' features (N, views, Fi) side by side (N, views, sum Fi), written once to the
    cache a chunk at a time (keyed by the parts' own files) and memory-mapped."""
    key = hashlib.blake2b(
        json.dumps([FEATURES_VERSION, "joined", *(_file_of(p) for p in parts)]).encode(), digest_size=16
    ).hexdigest()
    feats = _cached(key)
    if feats is None:
        n, views = parts[0].shape[:2]
        rows = range(0, n, CHUNK)
        _store(key, n, views, (np.concatenate([p[r : r + CHUNK] for p in parts], axis=2) for r in rows))
        feats = _cached(key)
        assert feats is not None
    return feats


def _file_of(feats: np.ndarray) -> str:
    """The cache file a memory-mapped features array was read from."""
    filename = getattr(feats, "filename", None)
    return str(filename) if filename is not None else images_digest(np.asarray(feats))


def _cached(key: str) -> np.ndarray | None:
    """The cached features of ``key``, memory-mapped copy-on-write (writable without writing
    the file, as torch wants its arrays), or None; an earlier pawlab's flat
    ``features/<key>.npy`` is moved into its entry first."""
    folder = cache.cache_root() / "features"
    flat = folder / f"{key}.npy"
    if flat.is_file() and not flat.is_symlink():
        cache.adopt_legacy_features(flat)
    try:
        feats: np.ndarray = np.load(folder / key / cache.FEATURES_FILE, mmap_mode="c")
        return feats
    except (OSError, ValueError):
        return None

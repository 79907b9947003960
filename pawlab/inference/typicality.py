"""A model's in-distribution model ("none of these"), from training to prediction.

At the end of training (and by ``pawlab calibrate-unknown`` for an older model file) a scorer
(`pawlab.unknown`, Mahalanobis distance by default) is fitted on the penultimate features the
network computes for the training images (a frozen backbone's cached features make that cheap)
and calibrated on the validation images; it is kept in the model file under ``unknown.``.
An image's typicality is then the share of validation images less typical than it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pawlab import checkpoint, unknown
from pawlab.inference.engine import array_batches, folded, predict_outputs
from pawlab.models.network import Network
from pawlab.preprocessing import Preprocessing

FIT_IMAGES = 2000  # training images the scorer is fitted on at most (a seeded sample): bounds its cost
FEATURE_BATCH = 32


class WithFeatures(torch.nn.Module):
    """``network`` whose outputs are (B, classes + 1 + D): its logits, their logsumexp, then its
    penultimate features: what the in-distribution model reads, from the pass that predicts.
    With the logits softmaxed (`pawlab.inference.engine.softmaxed`), `split_outputs` recovers
    the three."""

    def __init__(self, network: Network) -> None:
        super().__init__()
        self.before, self.after = unknown.split_last_linear(network.body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes + 1 + D)
        features = self.before(x)
        logits = self.after(features)
        return torch.cat([logits, logits.logsumexp(1, keepdim=True), features.flatten(1)], 1)


def split_outputs(out: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`WithFeatures` outputs, logits softmaxed (N, classes + 1 + D) -> (probabilities (N, classes),
    logits (N, classes), features (N, D)); logits = log p + logsumexp (exact for one view)."""
    probs, lse, feats = out[:, :classes], out[:, classes : classes + 1], out[:, classes + 1 :]
    return probs, probs.clamp_min(1e-45).log() + lse, feats


class Source:
    """What the network computes features from: uint8 images (N, H, W, C), or a frozen trunk's
    cached features (N, views, F) (the first view is used)."""

    def __init__(self, data: np.ndarray, labels: np.ndarray | None = None, cached: bool = False) -> None:
        self.data, self.labels, self.cached = data, labels, cached

    def __len__(self) -> int:
        return len(self.data)

    def sample(self, n: int) -> Source:
        """At most ``n`` of its rows, a seeded sample in their order."""
        if len(self) <= n:
            return self
        rows = np.sort(np.random.default_rng(0).permutation(len(self))[:n])
        labels = self.labels[rows] if self.labels is not None else None
        return Source(self.data[rows], labels, self.cached)


def network_features(
    network: Network, source: Source, pre: Preprocessing, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features (N, D), logits (N, C)), float32 on the CPU, in fp32: images through
    the network with its batch-norms folded (as inference runs it: about 2x faster than as
    trained), cached trunk features through the head alone."""
    network.eval()
    if len(source) == 0:
        return torch.empty(0, 0), torch.empty(0, 0)
    if not source.cached:
        out = predict_outputs(WithFeatures(folded(network)), source.data, pre, device)  # type: ignore[arg-type]
        classes = network.num_classes
        return out[:, classes + 1 :], out[:, :classes]
    feats, logits = [], []
    for batch in array_batches(source.data, FEATURE_BATCH):
        x = torch.from_numpy(np.ascontiguousarray(batch[:, 0])).to(device)  # (B, F)
        f, out = unknown.features_and_logits(network, x, from_trunk=True)
        feats.append(f.cpu())
        logits.append(out.cpu())
    if not feats:
        return torch.empty(0), torch.empty(0)
    return torch.cat(feats), torch.cat(logits)


def fit_state(
    network: Network,
    train: Source,
    validation: Source,
    pre: Preprocessing,
    device: torch.device,
    method: str = unknown.DEFAULT_METHOD,
) -> unknown.State:
    """``method`` fitted on (at most `FIT_IMAGES` of) the training images and calibrated on the
    validation images."""
    train = train.sample(FIT_IMAGES)
    assert train.labels is not None
    feats, logits = network_features(network, train, pre, device)
    state = unknown.fit(method, feats, logits, torch.from_numpy(np.asarray(train.labels)))
    v_feats, v_logits = network_features(network, validation, pre, device)
    return unknown.calibrate(state, v_feats, v_logits)


def record_unknown(
    path: Path,
    network: Network,
    train: Source,
    validation: Source,
    pre: Preprocessing,
    device: torch.device,
    log: Callable[[str], None],
) -> unknown.State:
    """Fit the in-distribution model of the model saved at ``path`` (``network`` is loaded
    with its weights) and keep it in the file, in place of any earlier one."""
    ck = checkpoint.load(path, with_optimizer=True)
    network.load_state_dict(ck.model_state)
    ck, state = with_unknown(ck, network, (train, validation), pre, device, log)
    checkpoint.write(path, ck)
    return state


def with_unknown(
    ck: checkpoint.Checkpoint,
    network: Network,
    sources: tuple[Source, Source],
    pre: Preprocessing,
    device: torch.device,
    log: Callable[[str], None],
) -> tuple[checkpoint.Checkpoint, unknown.State]:
    """``ck`` with the in-distribution model of ``network`` (its weights ``ck``'s), fitted on
    the first of ``sources`` and calibrated on the second, in place of any earlier one; and
    that model. ``log`` gets a line of what was fitted and what it cost."""
    start = time.perf_counter()
    train, validation = sources
    state = fit_state(network, train, validation, pre, device)
    log(
        f"in-distribution model: {state.method} on {min(len(train), FIT_IMAGES)} training images, "
        f"calibrated on {len(validation)} validation images ({state.nbytes / 1e6:.1f} MB, "
        f"{time.perf_counter() - start:.1f}s)"
    )
    tensors, entry = unknown.to_tensors(state)
    kept = {k: t for k, t in ck.extra.items() if not k.startswith(unknown.PREFIX)}
    return replace(ck, card=replace(ck.card, unknown=entry), extra={**kept, **tensors}), state

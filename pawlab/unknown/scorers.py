"""In-distribution scorers, registered by name: higher scores are more typical of the training data.

Each fits on what a network computes for its training images, penultimate features (N, D)
float32, logits (N, C) and labels (N,), and keeps only named tensors (for the model file's
safetensors, never pickle) and a few JSON settings.

msp          the largest softmax probability (Hendrycks & Gimpel 2017); fits nothing
energy       logsumexp of the logits, the negative free energy (Liu et al. 2020); fits nothing
mahalanobis  minus the smallest Mahalanobis distance to a class mean, one shared covariance
             (Lee et al. 2018), on L2-normalised features by default
knn          minus the distance to the k-th nearest training feature, all L2-normalised
             (Sun et al. 2022), from a bank of at most ``bank`` training features
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from pawlab.errors import ConfigError
from pawlab.registry import Registry

Setting = bool | int | float | str
Settings = dict[str, Setting]
Tensors = dict[str, torch.Tensor]
# features (N, D), logits (N, C), labels (N,), settings -> the tensors a scorer keeps
Fit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Settings], Tensors]
# kept tensors, settings, features (N, D), logits (N, C) -> scores (N,)
Score = Callable[[Tensors, Settings, torch.Tensor, torch.Tensor], torch.Tensor]

CHUNK = 1024  # query rows scored at a time: bounds the (rows, bank) similarity matrix


@dataclass(frozen=True)
class Scorer:
    fit: Fit
    score: Score
    defaults: Settings = field(default_factory=dict)
    description: str = ""


SCORERS: Registry[Scorer] = Registry("unknown-input method")

# bench/unknown.py: the one method whose FPR at 95% TPR stayed <= 0.2% (AUROC >= 0.997) against
# every source that is no variant of the training data, for the cats/dogs, flowers and digit
# models, with settings chosen on the training split; the k-NN distance chosen the same way let
# 8% of cats/dogs photos through the flowers model
DEFAULT_METHOD = "mahalanobis"


@dataclass
class State:
    """A fitted scorer: its method, settings and tensors (``calibration`` among them once
    calibrated: the sorted validation scores)."""

    method: str
    settings: Settings
    tensors: Tensors

    @property
    def nbytes(self) -> int:
        """Bytes of its tensors, as the model file stores them."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def get_scorer(method: str) -> Scorer:
    if method not in SCORERS:
        raise ConfigError(f"unknown-input method: must be one of {', '.join(SCORERS)}, got {method!r}")
    return SCORERS.get(method)


def fit(
    method: str, features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, **settings: Setting
) -> State:
    """Fit ``method`` on the training images' features (N, D), logits (N, C) and labels (N,);
    ``settings`` override the method's defaults."""
    scorer = get_scorer(method)
    unknown = sorted(set(settings) - set(scorer.defaults))
    if unknown:
        raise ConfigError(
            f"{method}: no setting {unknown[0]!r} (it has: {', '.join(scorer.defaults) or 'none'})"
        )
    chosen = {**scorer.defaults, **settings}
    tensors = scorer.fit(features.float(), logits.float(), labels.long(), chosen)
    return State(SCORERS.canonical(method) or method, chosen, tensors)


def score(state: State, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Scores (N,) float32 of images' features (N, D) and logits (N, C): higher, more typical."""
    scorer = get_scorer(state.method)
    with torch.inference_mode():
        return scorer.score(state.tensors, state.settings, features.float(), logits.float()).float()


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def _nothing(features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, s: Settings) -> Tensors:
    return {}


def _msp(
    kept: Mapping[str, torch.Tensor], s: Settings, features: torch.Tensor, logits: torch.Tensor
) -> torch.Tensor:
    return logits.softmax(1).amax(1)


def _energy(
    kept: Mapping[str, torch.Tensor], s: Settings, features: torch.Tensor, logits: torch.Tensor
) -> torch.Tensor:
    t = float(s["temperature"])
    return t * torch.logsumexp(logits / t, dim=1)


SCORERS.register("msp")(Scorer(_nothing, _msp, {}, "maximum softmax probability (the baseline)"))
SCORERS.register("energy")(Scorer(_nothing, _energy, {"temperature": 1.0}, "logsumexp of the logits"))


def _fit_mahalanobis(
    features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, s: Settings
) -> Tensors:
    x = _normalised(features) if s["normalise"] else features
    classes = int(labels.max()) + 1
    means = torch.stack(
        [x[labels == c].mean(0) if bool((labels == c).any()) else x.mean(0) for c in range(classes)]
    )
    centred = (x - means[labels]).double()
    return _whitened(means, centred.T @ centred / len(x), s)


def _whitened(means: torch.Tensor, cov: torch.Tensor, s: Settings, cholesky: bool = False) -> Tensors:
    """What "mahalanobis" keeps of class means (C, D) and their shared covariance (D, D) float64.
    ``cholesky``: whiten by the inverse Cholesky factor, the same distances about 10x cheaper
    to compute than by the eigendecomposition (falls back to it when the factor fails)."""
    # shrunk towards a multiple of the identity: fewer images than dimensions leave it singular
    shrink = float(s["shrinkage"]) * torch.trace(cov) / len(cov)
    eye = torch.eye(len(cov), dtype=cov.dtype)
    shrunk = cov + shrink * eye
    factor, info = torch.linalg.cholesky_ex(shrunk) if cholesky else (shrunk, torch.tensor(1))
    if int(info) == 0:  # shrunk = L L^T: |(x - mean) @ L^-T|^2 is the distance
        whiten = torch.linalg.solve_triangular(factor, eye, upper=False).T
    else:
        values, vectors = torch.linalg.eigh(shrunk)
        whiten = vectors * values.clamp_min(1e-12).rsqrt()
    # (D, D): |(x - mean) @ whiten|^2 is the distance; half precision (a 1280-wide backbone: 3.3 MB)
    whiten = whiten.half()
    return {"whiten": whiten, "means": means.float() @ whiten.float()}  # the means whitened: (C, D)


def mahalanobis_from_sums(counts: torch.Tensor, sums: torch.Tensor, scatter: torch.Tensor) -> State:
    """ "mahalanobis" (default settings) fitted from sufficient statistics of training features
    as it reads them, L2-normalised: per class their count (C,) and sum (C, D), and the sum of
    their outer products (D, D). A training loop accumulates those as it goes, keeping no
    features; a class without images gets the mean of all (as `fit`)."""
    settings = dict(SCORERS.get("mahalanobis").defaults)
    counts, sums, scatter = counts.double(), sums.double(), scatter.double()
    means = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], sums.sum(0) / counts.sum())
    # the sum over images of (x - mean_y)(x - mean_y)^T is scatter - sum_c n_c mean_c mean_c^T
    cov = (scatter - (means.T * counts) @ means) / counts.sum()
    return State("mahalanobis", settings, _whitened(means, cov, settings, cholesky=True))


def _mahalanobis(
    kept: Mapping[str, torch.Tensor], s: Settings, features: torch.Tensor, logits: torch.Tensor
) -> torch.Tensor:
    x = _normalised(features) if s["normalise"] else features
    z = x @ kept["whiten"].float()  # (N, D)
    return -torch.cdist(z, kept["means"]).amin(1).square()


SCORERS.register("mahalanobis")(
    Scorer(
        _fit_mahalanobis,
        _mahalanobis,
        {"normalise": True, "shrinkage": 0.01},
        "minus the smallest Mahalanobis distance to a class mean (one shared covariance)",
    )
)


def _fit_knn(features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, s: Settings) -> Tensors:
    bank = int(s["bank"])
    x = features
    if len(x) > bank:  # a seeded subsample, the same for the same features
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:bank]
        x = x[keep.sort().values]
    return {"bank": _normalised(x).half()}  # (M, D), at most `bank` rows


def _knn(
    kept: Mapping[str, torch.Tensor], s: Settings, features: torch.Tensor, logits: torch.Tensor
) -> torch.Tensor:
    bank = kept["bank"].float()
    k = min(int(s["k"]), len(bank))
    out = []
    for chunk in _normalised(features).split(CHUNK):
        kth = (chunk @ bank.T).topk(k, dim=1).values[:, -1]  # the k-th largest cosine similarity
        out.append(-(2 - 2 * kth).clamp_min(0).sqrt())  # its euclidean distance on the unit sphere
    return torch.cat(out) if out else torch.zeros(0)


SCORERS.register("knn")(
    Scorer(
        _fit_knn,
        _knn,
        {"k": 10, "bank": 2048},
        "minus the distance to the k-th nearest training feature (L2-normalised)",
    )
)

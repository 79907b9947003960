"""Metamorphic robustness of a classifier: does its class hold under label-preserving variants?

For each transform of `pawlab.spec.metamorphic`, every image is predicted again after the
transform at random severities (a seeded NumPy generator, uniform in [-1, 1]) and over a grid
of severities from mild to the maximum, both signs (a plain worst-case search). A *flip* is a
change of the predicted class relative to the model's own prediction on the original image,
not to the true label: an image the model already gets wrong counts as flipped only when the
transform changes its (wrong) prediction, and the report says how many originals were wrong.
Where a grid severity flips an image, bisection toward the previous (non-flipping) grid step
finds its mildest flipping severity. With the model's in-distribution model, the random
variants also say how often a transform takes an image out of the model's distribution: the
share of variants of in-distribution originals whose typicality falls below the model's
threshold, from the same predictions. The most fragile images (the mildest flips first, then
the largest drops in the probability of the original class) are drawn beside their variants.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ImageFont

from pawlab.atomic import atomic_write_bytes
from pawlab.errors import ConfigError, DataError
from pawlab.figures import RIGHT, UNSURE, WRONG, draw_tile, fit_text, new_sheet, save_png
from pawlab.inference import Model, load_model
from pawlab.inference.evaluation import eval_set_for
from pawlab.progress import progress_bar
from pawlab.spec.metamorphic import (
    FLIP,
    allowed_transforms,
    apply,
    apply_many,
    describe,
    get_transform,
    resolve_params,
)

REPORT_JSON = "robustness.json"
FRAGILE_PNG = "fragile.png"


@dataclass
class TransformResult:
    """One transform's figures over ``count`` images; shares are in [0, 1]."""

    transform: str
    params: dict[str, float]
    random_flip_share: float  # flipped at random severities (all draws of all images)
    # out of distribution at random severities (all draws of the originals in distribution);
    # None without an in-distribution model
    left_distribution_share: float | None
    worst_case_flip_share: float  # flipped at some severity of the search
    worst_severity: float  # the single searched severity that flipped the most images
    worst_severity_share: float
    worst_severity_words: str
    median_mildest: float | None  # median |mildest flipping severity| over flipped images
    mean_prob_drop: float  # mean over images of the largest drop of p(original class)
    mildest: list[float | None]  # per image: the mildest flipping severity found (signed), or None
    prob_drop: list[float]  # per image: the largest drop of p(original class) over the search


@dataclass
class RobustnessReport:
    """What `robustness` measured; ``to_json()`` for machines, ``table()`` for people."""

    classes: list[str]
    count: int
    originally_wrong: int
    originally_unknown: int | None  # originals already out of distribution (None: no in-distribution model)
    unknown_threshold: float | None  # the typicality below which an image is out of distribution
    evaluated: str  # which images, in words
    random_samples: int
    steps: int
    refine: int
    seed: int
    results: list[TransformResult]
    names: list[str]
    fragile: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)

    relative_to = "the model's prediction on the original image"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["flips_relative_to"] = self.relative_to
        d["accuracy_on_originals"] = 1 - self.originally_wrong / self.count if self.count else 0.0
        return d

    def table(self) -> str:
        """One row per transform: the flip shares, the severity that flipped the most images,
        the median mildest flip and the mean largest drop of the original class's probability."""
        head = [
            "transform",
            "random",
            "worst case",
            "most flipping severity",
            "share",
            "mildest",
            "p drop",
            "out of dist",
        ]
        rows = [
            [
                r.transform + "".join(f" {k}={v:g}" for k, v in r.params.items()),
                f"{r.random_flip_share:.3f}",
                f"{r.worst_case_flip_share:.3f}",
                r.worst_severity_words,
                f"{r.worst_severity_share:.3f}",
                "-" if r.median_mildest is None else f"{r.median_mildest:.3f}",
                f"{r.mean_prob_drop:.3f}",
                "-" if r.left_distribution_share is None else f"{r.left_distribution_share:.3f}",
            ]
            for r in self.results
        ]
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
        unknown = (
            "" if self.originally_unknown is None else f", {self.originally_unknown} out of distribution"
        )
        out_of = (
            "out of dist: the model has no in-distribution model (pawlab calibrate-unknown)"
            if self.unknown_threshold is None
            else "out of dist: share of the random variants of in-distribution originals whose "
            f"typicality is below {self.unknown_threshold:g}"
        )
        lines = [
            f"robustness of {self.count} images ({self.evaluated}); {self.originally_wrong} of the "
            f"originals were already wrong{unknown}",
            f"a flip: the predicted class changes from {self.relative_to}",
            f"random: {self.random_samples} severity per image uniform in [-1, 1] (seed {self.seed}); "
            f"worst case: {self.steps} severities per direction up to the maximum, {self.refine} bisection "
            "steps; mildest: median |severity| of the mildest flip; p drop: mean largest drop of "
            f"p(original class); {out_of}",
            "",
            "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
        ]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines += [f"{name}: {path}" for name, path in self.figures.items()]
        return "\n".join(lines)


def _predict(model: Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities (N, classes) for uint8 (N, H, W, C) images, in batches."""
    if len(images) == 0:
        return np.zeros((0, len(model.classes)), dtype=np.float32)
    return np.concatenate(
        [model.predict_proba(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    )


def _predict_scored(
    model: Model, images: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """`_predict`, with each image's typicality (N,) from the same passes (None without an
    in-distribution model)."""
    if model.unknown is None:
        return _predict(model, images, batch_size), None
    if len(images) == 0:
        return _predict(model, images, batch_size), np.zeros(0)
    scored = [model.predict_scored(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate([p for p, _ in scored]), np.concatenate([t for _, t in scored if t is not None])


def _variants(images: np.ndarray, kind: str, sev: np.ndarray, params: dict[str, float]) -> np.ndarray:
    """Each image (N, H, W, C) transformed at its own severity ``sev`` (N,)."""
    return apply_many(images, kind, sev, **params)


def search_grid(kind: str, steps: int) -> list[float]:
    """The worst-case search's severities, mildest first: ``steps`` magnitudes up to 1, both
    signs for a transform with a direction; a flip has one (mirrored)."""
    t = get_transform(kind)
    if t.name == FLIP:
        return [1.0]
    mags = [(k + 1) / steps for k in range(steps)]
    return [s for m in mags for s in ((m, -m) if t.signed else (m,))]


@dataclass
class _Search:
    """Per image: the mildest flipping severity (nan: none), the largest probability drop and
    the severity that gave it."""

    mildest: np.ndarray
    drop: np.ndarray
    drop_at: np.ndarray
    per_severity: np.ndarray  # (grid,) share of images flipped at each grid severity


def _grid_search(
    model: Model,
    images: np.ndarray,
    pred: np.ndarray,
    p0: np.ndarray,
    kind: str,
    grid: list[float],
    params: dict[str, float],
    batch_size: int,
) -> _Search:
    """Predict every image at every grid severity (mildest first): the first severity that
    flips each image, and the largest drop of p(original class) ``p0`` (N,)."""
    n = len(images)
    mildest, drop, drop_at = np.full(n, np.nan), np.zeros(n), np.zeros(n)
    per = np.zeros(len(grid))
    rows = np.arange(n)
    for g, s in enumerate(grid):
        probs = _predict(model, _variants(images, kind, np.full(n, s), params), batch_size)
        flipped = probs.argmax(1) != pred
        per[g] = flipped.mean() if n else 0.0
        mildest[flipped & np.isnan(mildest)] = s
        d = p0 - probs[rows, pred]
        better = d > drop
        drop[better], drop_at[better] = d[better], s
    return _Search(mildest, drop, drop_at, per)


def _bisect(
    model: Model,
    images: np.ndarray,
    pred: np.ndarray,
    mildest: np.ndarray,
    kind: str,
    step: float,
    params: dict[str, float],
    batch_size: int,
    rounds: int,
) -> np.ndarray:
    """Refine each image's mildest flipping severity (nan: none) between the grid step below
    it, which did not flip it in that direction, and itself; the result still flips."""
    idx = np.flatnonzero(~np.isnan(mildest))
    if rounds <= 0 or len(idx) == 0 or get_transform(kind).name == FLIP:
        return mildest
    hi = np.abs(mildest[idx])
    lo, sign = np.maximum(hi - step, 0.0), np.sign(mildest[idx])
    for _ in range(rounds):
        mid = (lo + hi) / 2
        probs = _predict(model, _variants(images[idx], kind, sign * mid, params), batch_size)
        flips = probs.argmax(1) != pred[idx]
        hi, lo = np.where(flips, mid, hi), np.where(flips, lo, mid)
    out = mildest.copy()
    out[idx] = sign * hi
    return out


def _random_shares(
    model: Model,
    images: np.ndarray,
    pred: np.ndarray,
    known: np.ndarray | None,
    kind: str,
    params: dict[str, float],
    opts: _Options,
) -> tuple[float, float | None]:
    """The share of (image, draw) pairs flipped at severities uniform in [-1, 1], drawn from a
    generator seeded by ``seed`` and the transform's name (adding a transform changes no other);
    with ``known`` (N,), the originals in distribution, the share of their draws out of it
    (None without; 0 with no draws of them)."""
    if opts.random_samples <= 0 or len(images) == 0:
        return 0.0, None if known is None else 0.0
    rng = np.random.default_rng([opts.seed, zlib.crc32(kind.encode())])
    sev = rng.uniform(-1.0, 1.0, (opts.random_samples, len(images)))
    flipped, left = [], []
    for s in sev:
        probs, typical = _predict_scored(model, _variants(images, kind, s, params), opts.batch_size)
        flipped.append(probs.argmax(1) != pred)
        if known is not None and typical is not None:
            left.append(typical[known] < model.unknown_threshold)
    if known is None:
        return float(np.mean(flipped)), None
    return float(np.mean(flipped)), float(np.mean(left)) if known.any() else 0.0


TransformSpec = str | tuple[str, dict[str, float]]


@dataclass(frozen=True)
class _Options:
    random_samples: int
    steps: int
    refine: int
    seed: int
    batch_size: int


@dataclass(frozen=True)
class _Originals:
    """The model on the original images: its class (N,), that class's probability (N,), and
    which images are in its distribution (N,) (None without an in-distribution model)."""

    pred: np.ndarray
    p0: np.ndarray
    known: np.ndarray | None


def _one_transform(
    model: Model, images: np.ndarray, orig: _Originals, spec: TransformSpec, opts: _Options
) -> tuple[TransformResult, np.ndarray]:
    """Random, grid and bisection measurements of one transform; also, per image, the
    severity to draw (the mildest flip, else the largest probability drop)."""
    pred = orig.pred
    kind, params = _split_spec(spec)
    t, bs = get_transform(kind), opts.batch_size
    full = resolve_params(t, params)
    grid = search_grid(kind, opts.steps)
    found = _grid_search(model, images, pred, orig.p0, kind, grid, full, bs)
    step = 1 / opts.steps
    mildest = _bisect(model, images, pred, found.mildest, kind, step, full, bs, opts.refine)
    worst = int(np.argmax(found.per_severity))
    flipped = ~np.isnan(mildest)
    random_flips, left = _random_shares(model, images, pred, orig.known, kind, full, opts)
    result = TransformResult(
        transform=t.name,
        params=full,
        random_flip_share=random_flips,
        left_distribution_share=left,
        worst_case_flip_share=float(flipped.mean()) if len(images) else 0.0,
        worst_severity=grid[worst],
        worst_severity_share=float(found.per_severity[worst]),
        worst_severity_words=describe(kind, grid[worst], **full),
        median_mildest=float(np.median(np.abs(mildest[flipped]))) if flipped.any() else None,
        mean_prob_drop=float(found.drop.mean()) if len(images) else 0.0,
        mildest=[None if np.isnan(v) else float(v) for v in mildest],
        prob_drop=[float(v) for v in found.drop],
    )
    return result, np.where(flipped, mildest, found.drop_at)


def _split_spec(spec: TransformSpec) -> tuple[str, dict[str, float]]:
    """A transform given as ``"rotate"`` or ``("rotate", {"max_degrees": 30})``."""
    if isinstance(spec, str):
        return spec, {}
    kind, params = spec
    return kind, dict(params)


def _check_inputs(
    model: Model, images: Any, labels: Any, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, C) at the model's input size and int labels (N,) in range, or a
    one-line DataError."""
    size, c = model.preprocessing.size, model.preprocessing.channels
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        what = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"images must be a uint8 array (N, H, W, C), got {what}")
    if tuple(images.shape[1:]) != (size[0], size[1], c):
        raise DataError(
            f"images must be {size[0]}x{size[1]}x{c} for this model, got "
            + "x".join(map(str, images.shape[1:]))
        )
    lab = np.asarray(labels)
    if lab.shape != (len(images),) or not np.issubdtype(lab.dtype, np.integer):
        raise DataError(f"labels must be integers, one per image ({len(images)}), got shape {lab.shape}")
    if list(classes) != list(model.classes):
        raise DataError(f"classes {list(classes)} differ from the model's {model.classes}")
    if len(lab) and (lab.min() < 0 or lab.max() >= len(classes)):
        raise DataError(f"labels must lie in [0, {len(classes)}), got {lab.min()}..{lab.max()}")
    return images, lab.astype(np.int64)


def _pick_fragile(
    results: list[TransformResult], draw_at: list[np.ndarray], k: int
) -> list[tuple[int, int, float]]:
    """Up to ``k`` (transform index, image index, severity) of distinct images, most fragile
    first: flipped at the mildest |severity| (ties: the larger drop), then unflipped with the
    largest drop of p(original class) (none that did not drop at all)."""
    keyed = []
    for t, (r, at) in enumerate(zip(results, draw_at, strict=True)):
        for i, (m, d) in enumerate(zip(r.mildest, r.prob_drop, strict=True)):
            if m is not None:
                keyed.append(((0, abs(m), -d), t, i, m))
            elif d > 0:
                keyed.append(((1, -d, 0.0), t, i, float(at[i])))
    chosen: list[tuple[int, int, float]] = []
    seen: set[int] = set()
    for _, t, i, s in sorted(keyed, key=lambda e: e[0]):
        if i not in seen and len(chosen) < k:
            seen.add(i)
            chosen.append((t, i, s))
    return chosen


def _top_two(probs: np.ndarray, classes: list[str]) -> tuple[str, list[str]]:
    """A caption template and class names: the two likeliest classes with their probabilities."""
    order = [int(j) for j in np.argsort(-probs, kind="stable")[:2]]
    template = "  ".join(f"{{}} {probs[j]:.2f}" for j in order)
    return template, [classes[j] for j in order]


def fragile_grid(
    originals: np.ndarray,
    variants: np.ndarray,
    p_orig: np.ndarray,
    p_var: np.ndarray,
    labels: np.ndarray,
    captions: list[str],
    classes: list[str],
    path: str | os.PathLike[str],
    *,
    tile: int = 128,
    pairs: int = 3,
) -> Path:
    """A PNG of uint8 ``originals`` (N, H, W, C) each beside its variant, ``pairs`` pairs to a
    row, captioned with the variant's description and both images' two likeliest classes
    (``p_orig``, ``p_var``: (N, classes)). Originals are framed green when right and red when
    already wrong; variants red when their class changed, amber when it held."""
    columns = 2 * pairs
    sheet, draw = new_sheet(2 * len(originals), columns, tile)
    font = ImageFont.load_default()
    for n in range(len(originals)):
        before, after = int(p_orig[n].argmax()), int(p_var[n].argmax())
        colours = (RIGHT if before == labels[n] else WRONG, WRONG if after != before else UNSURE)
        heads = ["original", captions[n]]
        for k, (im, probs, colour) in enumerate(
            zip((originals[n], variants[n]), (p_orig[n], p_var[n]), colours, strict=True)
        ):
            x, y = draw_tile(sheet, draw, 2 * n + k, im, colour, columns=columns, tile=tile)
            draw.text((x, y), fit_text(draw, font, tile - 2, "{}", [heads[k]]), fill=colour, font=font)
            template, names = _top_two(probs, classes)
            draw.text((x, y + 12), fit_text(draw, font, tile - 2, template, names), fill=colour, font=font)
    return save_png(sheet, Path(path))


def _fragile(
    model: Model,
    images: np.ndarray,
    labels: np.ndarray,
    p0: np.ndarray,
    results: list[TransformResult],
    draw_at: list[np.ndarray],
    names: list[str],
    k: int,
    out: Path | None,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The most fragile images, for the report, and (with ``out``) their grid's path."""
    chosen = _pick_fragile(results, draw_at, k)
    if not chosen:
        return [], {}
    kinds = [(results[t].transform, results[t].params) for t, _, _ in chosen]
    idx = np.array([i for _, i, _ in chosen])
    var = np.stack(
        [apply(images[i], kind, s, **p) for (kind, p), (_, i, s) in zip(kinds, chosen, strict=True)]
    )
    p_var = _predict(model, var, len(var))
    words = [describe(kind, s, **p) for (kind, p), (_, _, s) in zip(kinds, chosen, strict=True)]
    classes = model.classes
    entries = [
        {
            "name": names[i],
            "true": classes[int(labels[i])],
            "transform": kind,
            "severity": s,
            "words": words[n],
            "flipped": bool(p_var[n].argmax() != p0[i].argmax()),
            "original": dict(zip(classes, map(float, p0[i]), strict=True)),
            "variant": dict(zip(classes, map(float, p_var[n]), strict=True)),
        }
        for n, ((kind, _), (_, i, s)) in enumerate(zip(kinds, chosen, strict=True))
    ]
    if out is None:
        return entries, {}
    path = fragile_grid(images[idx], var, p0[idx], p_var, labels[idx], words, classes, out / FRAGILE_PNG)
    return entries, {"fragile": str(path)}


def _all_transforms(
    model: Model,
    images: np.ndarray,
    orig: _Originals,
    specs: Sequence[TransformSpec],
    opts: _Options,
    progress: bool,
) -> tuple[list[TransformResult], list[np.ndarray]]:
    """`_one_transform` for each of ``specs``, with a bar (or lines in a log)."""
    results, draw_at = [], []
    bar = progress_bar(
        specs, total=len(specs), desc="robustness", unit="transform", enabled=progress, leave=True
    )
    for spec in bar:
        r, at = _one_transform(model, images, orig, spec, opts)
        results.append(r)
        draw_at.append(at)
    bar.close()
    return results, draw_at


def _checked_specs(
    model: Model, transforms: Sequence[TransformSpec] | None, opts: _Options
) -> list[TransformSpec]:
    """The transforms to run (default: the model's `allowed_transforms`), every name and
    parameter checked, and the options, before any work: a `ConfigError` for the first wrong."""
    if opts.steps < 1 or opts.random_samples < 0 or opts.refine < 0 or opts.batch_size < 1:
        raise ConfigError("steps and batch_size must be >= 1, random_samples and refine >= 0")
    specs: list[TransformSpec] = (
        list(transforms) if transforms is not None else [*allowed_transforms(model.meta)]
    )
    for spec in specs:
        kind, params = _split_spec(spec)
        resolve_params(get_transform(kind), params)
    return specs


def robustness(
    model: Model,
    images: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    transforms: Sequence[TransformSpec] | None = None,
    *,
    names: Sequence[str] | None = None,
    random_samples: int = 1,
    steps: int = 5,
    refine: int = 3,
    seed: int = 0,
    fragile: int = 12,
    batch_size: int = 64,
    out_dir: str | os.PathLike[str] | None = None,
    evaluated: str = "the given images",
    progress: bool = False,
) -> RobustnessReport:
    """How often ``model``'s class flips under each transform of uint8 ``images`` (N, H, W, C)
    at its input size, with true ``labels`` (N,) indexing ``classes`` (the model's).

    ``transforms``: names or ``(name, params)`` pairs (default: `allowed_transforms` of the
    model). Per transform: ``random_samples`` severities per image uniform in [-1, 1] (seeded by
    ``seed``); a grid of ``steps`` severities per direction up to the maximum; ``refine``
    bisection steps toward each image's mildest flip. ``out_dir``: where ``robustness.json``
    and ``fragile.png`` (the ``fragile`` most fragile images beside their variants) go.
    """
    images, lab = _check_inputs(model, images, labels, classes)
    opts = _Options(random_samples, steps, refine, seed, batch_size)
    specs = _checked_specs(model, transforms, opts)
    p0, typical = _predict_scored(model, images, batch_size)
    pred = p0.argmax(1)
    known = None if typical is None else typical >= model.unknown_threshold
    orig = _Originals(pred, p0[np.arange(len(images)), pred], known)
    results, draw_at = _all_transforms(model, images, orig, specs, opts, progress)
    listed = list(names) if names is not None else [f"#{i}" for i in range(len(images))]
    out = Path(out_dir) if out_dir is not None else None
    entries, figures = _fragile(model, images, lab, p0, results, draw_at, listed, fragile, out)
    report = RobustnessReport(
        classes=list(classes),
        count=len(images),
        originally_wrong=int((pred != lab).sum()),
        originally_unknown=None if known is None else int((~known).sum()),
        unknown_threshold=None if known is None else model.unknown_threshold,
        evaluated=evaluated,
        random_samples=random_samples,
        steps=steps,
        refine=refine,
        seed=seed,
        results=results,
        names=listed,
        fragile=entries,
        figures=figures,
    )
    if out is not None:
        report.figures["report"] = str(out / REPORT_JSON)
        atomic_write_bytes(out / REPORT_JSON, json.dumps(report.to_json(), indent=1).encode())
    return report


def _subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of up to ``limit`` of ``n`` images, a seeded random choice in their order."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def robustness_of(
    model_path: str | os.PathLike[str],
    data_path: str | os.PathLike[str],
    transforms: Sequence[TransformSpec] | None = None,
    *,
    limit: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    workers: int = 0,
    progress: bool = True,
    device: str = "auto",
    compile: str = "auto",
    **options: Any,
) -> RobustnessReport:
    """`robustness` of a model file on labelled data, loaded as `pawlab.inference.evaluate`
    loads it (the source's validation split, never the model's training images), for the CLI.
    ``limit``: a seeded random subset of that many images. ``out_dir``: default
    ``<model>-robustness/`` beside the model file. ``options``: `robustness`'s keywords."""
    m = load_model(model_path, device=device, compile=compile)
    ev = eval_set_for(m, data_path, workers=workers, progress=progress)
    keep = _subset(len(ev.images), limit, int(options.get("seed", 0)))
    described = ev.description if len(keep) == len(ev.images) else f"{len(keep)} drawn from {ev.description}"
    steps = int(options.get("steps", 5))
    m.prepare_for(len(keep) * (2 * steps + 2) * len(transforms or allowed_transforms(m.meta)))
    base = Path(model_path)
    out = Path(out_dir) if out_dir is not None else base.with_name(base.stem + "-robustness")
    out.mkdir(parents=True, exist_ok=True)
    return robustness(
        m,
        ev.images.images[keep],
        ev.images.labels[keep],
        m.classes,
        transforms,
        names=[ev.images.names[i] for i in keep],
        out_dir=out,
        evaluated=described,
        progress=progress,
        **options,
    )

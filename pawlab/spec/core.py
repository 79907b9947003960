"""Model specs: a spec validates with a discriminator and generates with a conditional
generator, and its strategy is a real Hypothesis strategy.

    odd_over_2 = model_spec("odd-over-2", labels(range(10), odd, lambda d: d > 2),
                            discriminate="discriminator.safetensors", generate="generator.safetensors")
    odd_over_2.is_valid(image)      # the discriminator reads an allowed label
    odd_over_2.is_valid(image, in_distribution=True)  # ... and the image is typical of its digits
    @given(odd_over_2.strategy())   # 28x28 uint8 digits of 3, 5, 7 or 9
    def test_...(image): ...

All of a strategy's randomness comes from Hypothesis: the label from ``sampled_from`` (it
shrinks toward the smallest allowed label) and each latent coordinate from an integer mapped
through the normal distribution's inverse CDF (it shrinks toward 0, the class's prototype,
and draws keep the prior's N(0, 1) spread). Examples replay from Hypothesis's database.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from hypothesis import event, note
from hypothesis import strategies as st

from pawlab import display, unknown
from pawlab.errors import ConfigError, DataError
from pawlab.figures import RIGHT, WRONG, captioned_grid
from pawlab.inference import Model, load_generator, load_model
from pawlab.registry import Registry
from pawlab.runtime import one_thread
from pawlab.spec.labels import Labels, labels

Discriminate = Callable[[np.ndarray], np.ndarray]  # uint8 (N, H, W) -> probabilities (N, K)
Generate = Callable[[np.ndarray, np.ndarray], np.ndarray]  # labels (N,), latents (N, L) -> uint8 (N, H, W)
ModelSource = str | os.PathLike[str]

LATENT_BYTES = 2  # each latent coordinate: one of 2**16 quantiles of N(0, 1), drawn as bytes
_NORMAL = NormalDist()


def latent_from_codes(codes: tuple[int, ...] | list[int]) -> np.ndarray:
    """Codes in [0, 2**16) -> a latent (L,). Code 0 is 0; codes 2k - 1 and 2k are the k-th
    quantiles above and below the median, so uniform codes give N(0, 1) coordinates and a
    smaller code is never farther from 0. Hypothesis draws bytes uniformly (its integers
    favour small and boundary values: 63% of coordinates within 0.1 of 0, against 8% for
    N(0, 1)) and shrinks them toward 0."""
    n = 2 ** (8 * LATENT_BYTES) + 2
    signed = [((c + 1) // 2) * (1 if c % 2 else -1) for c in codes]
    return np.array([_NORMAL.inv_cdf(0.5 + k / n) for k in signed], dtype=np.float32)


def _latent_coordinate() -> st.SearchStrategy[int]:
    return st.binary(min_size=LATENT_BYTES, max_size=LATENT_BYTES).map(lambda b: int.from_bytes(b, "big"))


@dataclass(frozen=True)
class Explanation:
    """Why an image is or is not valid, as ``s/explain`` says it."""

    spec: str
    valid: bool
    label: int  # the discriminator's reading
    probability: float
    probabilities: dict[int, float]
    failed: str | None  # the predicate the reading fails, or why the image is out of distribution
    # the share of the discriminator's validation images less typical than the image: None when
    # its model file has no in-distribution model (or it is a callable)
    typicality: float | None = None
    in_distribution: bool = False  # whether the image had to be typical to be valid
    unknown: bool = False  # invalid only because it is out of the discriminator's distribution

    def __str__(self) -> str:
        """``odd-over-2: invalid: read as 3 (p=0.990), but not a digit the discriminator
        knows: typicality 0.001``; otherwise the reading, the failed predicate with the top
        probabilities, then the typicality when known."""
        reading = f"read as {self.label} (p={self.probability:.3f})"
        typical = "" if self.typicality is None else f"; typicality {self.typicality:.3f}"
        if self.valid:
            return f"{self.spec}: valid: {reading}{typical}"
        if self.unknown:
            return f"{self.spec}: invalid: {reading}, but {self.failed}"
        top = sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:3]
        others = ", ".join(f"{k}: {v:.3f}" for k, v in top)
        return f"{self.spec}: invalid: {reading}; {self.failed} (probabilities {others}){typical}"

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "valid": self.valid,
            "label": self.label,
            "probability": self.probability,
            "probabilities": {str(k): v for k, v in self.probabilities.items()},
            "failed": self.failed,
            "typicality": self.typicality,
            "in_distribution": self.in_distribution,
        }


@dataclass(frozen=True, eq=False)
class SpecCheck(Mapping[str, Any]):
    """What `ModelSpec.check` found: whether the image is valid, and the discriminator's
    readings of generated samples, drawn in a PNG grid. Reads as the dict it was before
    (``result["valid"]``, ``dict(result)``); `to_json` is that dict."""

    spec: str
    valid: bool
    sample_values: tuple[int, ...]
    grid: str  # the PNG of the samples, captioned "asked -> read"
    typicality: float | None = None  # the image's, as `Explanation.typicality`
    in_distribution: bool = False  # whether the image had to be typical to be valid

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "valid": self.valid,
            "sample_values": list(self.sample_values),
            "grid": self.grid,
            "typicality": self.typicality,
            "in_distribution": self.in_distribution,
        }

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())

    def __repr__(self) -> str:
        verdict = "valid" if self.valid else "invalid"
        typical = "" if self.typicality is None else f" (typicality {self.typicality:.3f})"
        return (
            f"SpecCheck({self.spec}: {verdict}{typical}; samples read as {list(self.sample_values)}; "
            f"grid {self.grid})"
        )

    def _repr_html_(self) -> str:
        about = {
            "spec": self.spec,
            "the image": "valid" if self.valid else "invalid",
            "its typicality": "-" if self.typicality is None else f"{self.typicality:.3f}",
            f"readings of {len(self.sample_values)} samples": ", ".join(map(str, self.sample_values)),
            "grid": self.grid,
        }
        grid = display.embedded_image(self.grid, title=f"{self.spec}: samples, asked -> read")
        return display.section(f"pawlab SpecCheck: {self.spec}", display.fields(about), grid)


class Discriminator:
    """A classifier as the spec reads it: uint8 images (N, H, W) -> probabilities (N, K),
    output k meaning the label ``labels[k]``; `scored` adds each image's typicality when its
    model file has an in-distribution model."""

    def __init__(self, source: ModelSource | Discriminate) -> None:
        self.shape: tuple[int, int] | None = None  # (H, W) a model file expects
        self.model: Model | None = None
        if callable(source) and not isinstance(source, os.PathLike):
            self.fn: Discriminate = source
            self.labels: tuple[int, ...] | None = None  # output k is label k
            return
        model = load_model(source, precision="fp32", compile="off")
        if model.preprocessing.channels != 1:
            raise ConfigError(f"{os.fspath(source)}: a model spec's discriminator reads grayscale images")
        try:
            self.labels = tuple(int(c) for c in model.classes)
        except ValueError:
            raise ConfigError(
                f"{os.fspath(source)}: its classes {model.classes} are not integer labels"
            ) from None
        self.shape = model.preprocessing.size
        self.model = model
        self.fn = lambda images: model.predict_proba(images[..., None])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        probs = np.asarray(self.fn(images), dtype=np.float64)
        if probs.ndim != 2 or len(probs) != len(images):
            raise DataError(
                f"discriminator: expected probabilities (N, K) for {len(images)} images, got {probs.shape}"
            )
        return probs

    def scored(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities (N, K), typicality (N,) or None), from one pass."""
        if self.model is None or self.model.unknown is None:
            return self(images), None
        probs, typical = self.model.predict_scored(images[..., None])
        assert typical is not None
        return probs.astype(np.float64), typical

    def label(self, k: int) -> int:
        return self.labels[k] if self.labels is not None else k


class GeneratorFn:
    """A conditional generator as the spec uses it: labels (N,) and latents (N, L) -> uint8
    images (N, H, W)."""

    def __init__(self, source: ModelSource | Generate, latent: int | None) -> None:
        if callable(source) and not isinstance(source, os.PathLike):
            size = latent if latent is not None else getattr(source, "latent", None)
            if not isinstance(size, int) or size < 1:
                raise ConfigError("generate: a callable generator needs latent=N (the length of its latent)")
            self.fn: Generate = source
            self.latent = size
            self.index: dict[int, int] | None = None
            return
        gen = load_generator(source)
        try:
            self.index = {int(c): i for i, c in enumerate(gen.classes)}
        except ValueError:
            raise ConfigError(
                f"{os.fspath(source)}: its classes {gen.classes} are not integer labels"
            ) from None
        self.fn, self.latent = gen.generate, gen.latent

    def __call__(self, labels: np.ndarray, latents: np.ndarray) -> np.ndarray:
        y = labels if self.index is None else np.array([self.index[int(v)] for v in labels], np.int64)
        images = np.asarray(self.fn(y, latents.astype(np.float32)))
        if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(labels):
            raise DataError(f"generator: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
        return images

    def knows(self, label: int) -> bool:
        return self.index is None or label in self.index


def _is_final() -> bool:
    """Whether Hypothesis is replaying the minimal failing example, to report it."""
    from hypothesis.control import current_build_context

    try:
        return bool(current_build_context().is_final)
    except Exception:  # outside a test (strategy.example()): nothing to report
        return False


@dataclass(frozen=True)
class Samples:
    labels: np.ndarray  # (N,) the requested labels
    latents: np.ndarray  # (N, L)
    images: np.ndarray  # uint8 (N, H, W)


class ModelSpec:
    """A spec of images: valid when the discriminator reads an allowed label (and, with
    ``in_distribution``, the image is typical of its training images: typicality at least
    ``unknown_threshold``, default the discriminator model's); generated by the conditional
    generator from allowed labels. Models load on first use, once."""

    def __init__(
        self,
        name: str,
        labels: Labels,
        discriminate: ModelSource | Discriminate,
        generate: ModelSource | Generate,
        latent: int | None = None,
        in_distribution: bool = False,
        unknown_threshold: float | None = None,
    ) -> None:
        self.name, self.labels = name, labels
        self._sources = (discriminate, generate, latent)
        self.in_distribution = in_distribution
        self._threshold = unknown_threshold

    def __repr__(self) -> str:
        return (
            f"ModelSpec({self.name!r}, labels={self.labels.describe()}, allowed={list(self.labels.allowed)})"
        )

    @functools.cached_property
    def discriminator(self) -> Discriminator:
        return Discriminator(self._sources[0])

    @property
    def unknown_threshold(self) -> float:
        """The typicality below which an image required in distribution is invalid."""
        if self._threshold is not None:
            return self._threshold
        model = self.discriminator.model
        return model.unknown_threshold if model is not None else unknown.DEFAULT_THRESHOLD

    def _needs_typicality(self, in_distribution: bool | None) -> bool:
        """Whether a verdict requires the image in distribution (None: the spec's setting); a
        one-line `ConfigError` when it does and the discriminator gives no typicality."""
        if not (self.in_distribution if in_distribution is None else in_distribution):
            return False
        model = self.discriminator.model
        if model is None:
            raise ConfigError(
                f"{self.name}: requiring images in distribution needs a discriminator model file with "
                "an in-distribution model, not a callable"
            )
        if model.unknown is None:
            raise ConfigError(
                f"{self.name}: requiring images in distribution needs an in-distribution model, and "
                f"{model.path} has none (pawlab calibrate-unknown {model.path} DATA fits one)"
            )
        return True

    @functools.cached_property
    def generator(self) -> GeneratorFn:
        gen = GeneratorFn(self._sources[1], self._sources[2])
        unknown = [v for v in self.labels.allowed if not gen.knows(v)]
        if unknown:
            raise ConfigError(f"{self.name}: the generator cannot draw the labels {unknown}")
        return gen

    # -- validation
    def _image(self, x: object) -> np.ndarray:
        """``x`` as one uint8 image (H, W); a one-line `DataError` for anything else."""
        if not isinstance(x, np.ndarray):
            raise DataError(f"{self.name}: an image must be a NumPy uint8 array, got {type(x).__name__}")
        image = x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x
        shape = self.discriminator.shape
        if image.dtype != np.uint8 or image.ndim != 2 or (shape is not None and image.shape != tuple(shape)):
            want = "x".join(map(str, shape)) if shape is not None else "H x W"
            raise DataError(
                f"{self.name}: an image must be uint8 {want}, got {x.dtype} {'x'.join(map(str, x.shape))}"
            )
        return image

    def explain(self, x: np.ndarray, in_distribution: bool | None = None) -> Explanation:
        """What the discriminator reads in ``x`` and its typicality (when the discriminator has
        an in-distribution model) and, if it is invalid, which predicate fails or that it is out
        of the discriminator's distribution. ``in_distribution``: whether the image must be
        typical to be valid (None: the spec's setting)."""
        return self._verdict(self._image(x), self._needs_typicality(in_distribution), scored=True)

    def is_valid(self, x: np.ndarray, in_distribution: bool | None = None) -> bool:
        """Whether the discriminator reads an allowed label in ``x`` (and, if required, ``x`` is
        in its distribution); without that requirement, from probabilities alone (fast)."""
        required = self._needs_typicality(in_distribution)
        return self._verdict(self._image(x), required, scored=required).valid

    def _verdict(self, image: np.ndarray, required: bool, scored: bool) -> Explanation:
        """`explain` of one image (H, W); ``scored``: with its typicality (a costlier pass)."""
        d = self.discriminator
        with one_thread():
            all_probs, all_typical = d.scored(image[None]) if scored else (d(image[None]), None)
        probs, typical = all_probs[0], None if all_typical is None else float(all_typical[0])
        k = int(probs.argmax())
        label = d.label(k)
        failed = self.labels.failed(label)
        out = required and failed is None and typical is not None and typical < self.unknown_threshold
        if out:
            failed = f"not a digit the discriminator knows: typicality {typical:.3f}"
        readings = {d.label(i): float(p) for i, p in enumerate(probs)}
        return Explanation(
            self.name, failed is None, label, float(probs[k]), readings, failed, typical, required, out
        )

    # -- generation
    def generate(self, labels: np.ndarray | list[int], latents: np.ndarray) -> np.ndarray:
        """Images of the given labels from the given latents: uint8 (N, H, W)."""
        y = np.asarray(labels, dtype=np.int64)
        bad = sorted({int(v) for v in y} - set(self.labels.allowed))
        if bad:
            raise ConfigError(f"{self.name}: labels {bad} are not allowed by {self.labels.describe()}")
        z = np.asarray(latents, dtype=np.float32)
        if y.ndim != 1 or z.shape != (len(y), self.generator.latent):
            raise DataError(
                f"{self.name}: need labels (N,) and latents (N, {self.generator.latent}), "
                f"got {y.shape} and {z.shape}"
            )
        return self.generator(y, z)

    def sample(self, n: int, seed: int = 0) -> Samples:
        """``n`` images, the allowed labels in turn, latents from the prior (seeded)."""
        allowed = np.array(self.labels.allowed, dtype=np.int64)
        y = allowed[np.arange(n) % len(allowed)]
        z = np.random.default_rng(seed).standard_normal((n, self.generator.latent)).astype(np.float32)
        return Samples(y, z, self.generate(y, z))

    def readings(self, images: np.ndarray) -> list[int]:
        """The discriminator's label for each image (N, H, W)."""
        d = self.discriminator
        return [d.label(int(k)) for k in d(images).argmax(1)]

    # -- Hypothesis
    def warm(self) -> None:
        """Load both models and run each once, so that no example pays for it (Hypothesis's
        too_slow health check)."""
        images = self.generate([self.labels.allowed[0]], np.zeros((1, self.generator.latent), np.float32))
        self.readings(images)

    def draws(self) -> st.SearchStrategy[tuple[int, np.ndarray]]:
        """The (label, latent (L,)) pairs `strategy` renders: the label shrinks toward the
        smallest allowed one, the latent toward 0 (the class's prototype)."""
        codes = st.tuples(*[_latent_coordinate()] * self.generator.latent)
        return st.tuples(st.sampled_from(self.labels.allowed), codes.map(latent_from_codes))

    def strategy(
        self, valid_only: bool = False, strip_dir: str | os.PathLike[str] | None = None
    ) -> st.SearchStrategy[np.ndarray]:
        """Images (uint8 (H, W)) whose *requested* label is allowed; the generator draws them
        and nothing checks them, unless ``valid_only``: then only those the discriminator also
        reads as an allowed label, and that are in its distribution if the spec requires it
        (a filter: Hypothesis discards the rest and counts them in its statistics). A failing
        example's label and latent are reported, with an interpolation strip from the prototype
        (latent 0) written to ``strip_dir`` (default ``.hypothesis/pawlab``)."""
        self.warm()
        where = Path(strip_dir) if strip_dir is not None else Path(".hypothesis") / "pawlab"

        def render(draw: tuple[int, np.ndarray]) -> np.ndarray:
            label, z = draw
            with torch.inference_mode(), one_thread():
                image: np.ndarray = self.generate([label], z[None])[0]
            self._report(label, z, where)
            return image

        images = self.draws().map(render)
        if not valid_only:
            return images
        required = self._needs_typicality(None)

        def read_as_allowed_by_discriminator(image: np.ndarray) -> bool:
            explanation = self._verdict(image, required, scored=required)
            # counted in Hypothesis's statistics (--hypothesis-show-statistics)
            if explanation.unknown:
                event(
                    f"{self.name}: valid_only discarded a digit out of the discriminator's distribution "
                    f"(typicality below {self.unknown_threshold:g})"
                )
            elif not explanation.valid:
                event(f"{self.name}: valid_only discarded a digit read as {explanation.label}")
            return explanation.valid

        return images.filter(read_as_allowed_by_discriminator)

    def _report(self, label: int, z: np.ndarray, where: Path) -> None:
        """On Hypothesis's final replay of a failing example: its label and latent, and a strip."""
        if not _is_final():
            return
        shown = ", ".join(f"{v:.3f}" for v in z)
        note(f"{self.name}: requested label {label}, latent [{shown}] (|z| = {float(np.linalg.norm(z)):.3f})")
        try:
            path = self.interpolation_strip(label, z, where)
        except OSError as exc:
            note(f"{self.name}: could not write the interpolation strip ({exc})")
            return
        note(f"{self.name}: interpolation from the prototype (latent 0) to this image: {path}")

    def interpolation_strip(
        self, label: int, z: np.ndarray, folder: str | os.PathLike[str], steps: int = 8
    ) -> Path:
        """A PNG of ``steps`` images from latent 0 to ``z`` for ``label``, each captioned with the
        discriminator's reading."""
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
        images = self.generate([label] * steps, t * z[None])
        reads = self.readings(images)
        captions = [f"t={float(s):.2f}: {r}" for s, r in zip(t[:, 0], reads, strict=True)]
        colours = [RIGHT if self.labels.failed(r) is None else WRONG for r in reads]
        digest = hashlib.sha1(z.tobytes()).hexdigest()[:10]
        path = Path(folder) / f"{self.name}-label{label}-{digest}.png"
        return captioned_grid(images, captions, path, colours=colours, columns=steps)

    # -- the spec post's test-model-spec
    def check(
        self,
        x: np.ndarray,
        n: int = 10,
        grid: str | os.PathLike[str] | None = None,
        seed: int = 0,
        in_distribution: bool | None = None,
    ) -> SpecCheck:
        """Whether ``x`` is valid (``in_distribution`` as `explain`), and the discriminator's
        reading of ``n`` generated samples (not filtered: what the generator really draws), as
        a `SpecCheck` (it reads as the dict ``{"spec", "valid", "sample_values", "grid",
        "typicality", "in_distribution"}``). The samples are written as a PNG grid to ``grid``
        (default ``<name>-samples.png``)."""
        e = self.explain(x, in_distribution)
        s = self.sample(n, seed)
        reads = self.readings(s.images)
        path = self.write_grid(s, reads, Path(grid) if grid is not None else Path(f"{self.name}-samples.png"))
        return SpecCheck(self.name, e.valid, tuple(reads), str(path), e.typicality, e.in_distribution)

    def write_grid(
        self, samples: Samples, reads: list[int], path: str | os.PathLike[str], columns: int = 10
    ) -> Path:
        """Samples captioned "asked -> read", red where the reading is not the requested label."""
        captions = [f"{a} -> {r}" for a, r in zip(samples.labels.tolist(), reads, strict=True)]
        colours = [RIGHT if a == r else WRONG for a, r in zip(samples.labels.tolist(), reads, strict=True)]
        return captioned_grid(samples.images, captions, Path(path), colours=colours, columns=columns, tile=56)


SPECS: Registry[ModelSpec] = Registry("spec")


def model_spec(
    name: str,
    labels: Labels | list[int] | tuple[int, ...] | range,
    discriminate: ModelSource | Discriminate,
    generate: ModelSource | Generate,
    *,
    latent: int | None = None,
    in_distribution: bool = False,
    unknown_threshold: float | None = None,
) -> ModelSpec:
    """Define (or, as ``s/def`` does, redefine) the spec ``name``. ``labels``: a `Labels`
    (``labels(range(10), odd)``) or plain allowed labels; ``discriminate`` and ``generate``:
    pawlab model files, or callables (a callable generator needs ``latent``).
    ``in_distribution``: an image is valid only if it is also typical of the discriminator's
    training images, its typicality at least ``unknown_threshold`` (default: the model's,
    0.05); that needs a discriminator model file with an in-distribution model (``pawlab
    calibrate-unknown`` fits one into an older file)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"spec name must be a non-empty string, got {name!r}")
    if unknown_threshold is not None:
        unknown.check_threshold(unknown_threshold, f"{name}: unknown_threshold")
    refined = labels if isinstance(labels, Labels) else _plain(labels, name)
    spec = ModelSpec(name, refined, discriminate, generate, latent, in_distribution, unknown_threshold)
    if in_distribution and callable(discriminate) and not isinstance(discriminate, os.PathLike):
        spec._needs_typicality(True)  # a callable never gives typicalities: said now, not at first use
    SPECS.register(name, replace=True)(spec)
    return spec


def _plain(values: list[int] | tuple[int, ...] | range, name: str) -> Labels:
    return labels(values, name=name)


def get(name: str) -> ModelSpec:
    """The spec registered as ``name``."""
    try:
        return SPECS.get(name)
    except KeyError:
        raise ConfigError(f"unknown spec {name!r} (known: {', '.join(SPECS.names()) or 'none'})") from None

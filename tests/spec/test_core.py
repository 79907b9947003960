"""Model specs on a small trained digit pair: validation, explanation, generation, and the
Hypothesis strategy for real (replay, shrinking, reporting)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from PIL import Image

import pawlab.spec as ps
from pawlab.data.embedded import mnist_5k
from pawlab.errors import ConfigError, DataError, ModelFileError
from pawlab.inference.model import Model
from pawlab.spec import DigitModels, labels, odd
from pawlab.spec.core import Explanation, SpecCheck, latent_from_codes
from tests.inference.test_unknowns import stripped
from tests.test_display import assert_self_contained

SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


@pytest.fixture
def odd_over_2(builtin: DigitModels) -> ps.ModelSpec:
    return ps.get("odd-over-2-mnist-image")


# --- the property test the issue asks for, run by Hypothesis with its default settings but deadline
_BUILT: dict[str, ps.ModelSpec] = {}


def test_generated_odd_digits_over_2_are_28x28_digits_the_discriminator_reads(
    odd_over_2: ps.ModelSpec,
) -> None:
    seen: set[int] = set()

    @settings(deadline=None)
    @given(odd_over_2.strategy())
    def prop(image: np.ndarray) -> None:
        assert image.dtype == np.uint8 and image.shape == (28, 28)
        explanation = odd_over_2.explain(image)
        assert explanation.label in range(10)
        assert explanation.valid == (explanation.label in (3, 5, 7, 9))
        seen.add(explanation.label)

    prop()
    assert len(seen) >= 2  # the generator's images are not all one thing


@pytest.mark.parametrize("name", sorted(ps.BUILTIN))
def test_every_builtin_spec_draws_its_allowed_labels(name: str, builtin: DigitModels) -> None:
    spec = ps.get(name)
    samples = spec.sample(12, seed=1)
    assert set(samples.labels.tolist()) <= set(spec.labels.allowed)
    assert samples.images.shape == (12, 28, 28) and samples.images.dtype == np.uint8
    label, z = find(spec.draws(), lambda d: True)
    assert label == min(spec.labels.allowed) and not z.any()


def test_latent_codes_map_onto_the_normal_prior() -> None:
    assert latent_from_codes([0, 0]).tolist() == [0.0, 0.0]
    codes = np.random.default_rng(0).integers(0, 2**16, 20000)
    z = latent_from_codes(codes.tolist())
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03
    assert np.all(
        np.diff(np.abs(latent_from_codes(sorted(codes.tolist())))) >= -1e-6
    )  # smaller codes: nearer 0


def test_hypothesis_draws_keep_the_priors_spread(odd_over_2: ps.ModelSpec) -> None:
    drawn: list[np.ndarray] = []

    @settings(max_examples=300, database=None, phases=[Phase.generate], deadline=None)
    @given(odd_over_2.draws())
    def collect(draw: tuple[int, np.ndarray]) -> None:
        drawn.append(draw[1])

    collect()
    near_0 = float(np.mean(np.abs(np.concatenate(drawn)) < 0.5))
    assert 0.3 < near_0 < 0.5  # N(0, 1): 0.38 within 0.5 of 0


def test_shrinking_goes_to_the_smallest_label_and_a_latent_near_0(odd_over_2: ps.ModelSpec) -> None:
    label, z = find(odd_over_2.draws(), lambda d: float(np.abs(d[1]).max()) > 1.0)
    assert label == 3
    assert np.count_nonzero(z) == 1 and 1.0 < float(np.abs(z).max()) < 1.01


def test_a_failure_replays_from_the_database_and_reports_label_latent_and_strip(
    odd_over_2: ps.ModelSpec, tmp_path: Path
) -> None:
    db = DirectoryBasedExampleDatabase(str(tmp_path / "db"))
    threshold = float(np.median([im.mean() for im in odd_over_2.sample(40, seed=3).images]))
    calls: list[np.ndarray] = []

    def run() -> None:
        @settings(database=db, deadline=None, phases=[Phase.reuse, Phase.generate, Phase.shrink])
        @given(odd_over_2.strategy(strip_dir=tmp_path / "strips"))
        def prop(image: np.ndarray) -> None:
            calls.append(image)
            assert image.mean() < threshold  # false for about half the digits

        prop()

    with pytest.raises(AssertionError) as first:
        run()
    failing = calls[-1]
    notes = "\n".join(getattr(first.value, "__notes__", []))
    assert "requested label" in notes and "latent [" in notes
    strips = list((tmp_path / "strips").glob("odd-over-2-mnist-image-label*.png"))
    assert len(strips) == 1 and str(strips[0]) in notes
    calls.clear()
    with pytest.raises(AssertionError):
        run()
    assert np.array_equal(calls[0], failing)  # the saved failure is the first example tried


def test_valid_only_filters_through_the_discriminator(odd_over_2: ps.ModelSpec) -> None:
    @settings(deadline=None, max_examples=20, suppress_health_check=[HealthCheck.filter_too_much])
    @given(odd_over_2.strategy(valid_only=True))
    def prop(image: np.ndarray) -> None:
        assert odd_over_2.is_valid(image)

    prop()


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="the MNIST test set is not in ../shared/data")
def test_is_valid_on_real_test_digits_agrees_with_their_labels(builtin: DigitModels) -> None:
    from pawlab.data.embedded import mnist_test

    x, y = mnist_test(SHARED_MNIST)
    x, y = x[:400], y[:400]
    spec = ps.get("odd-mnist-image")
    accuracy = float(np.mean(np.array(spec.readings(x)) == y))
    agree = float(np.mean([spec.is_valid(im) == (label % 2 == 1) for im, label in zip(x, y, strict=True)]))
    assert accuracy > 0.5  # the small pair reads digits, if not well
    assert agree >= accuracy  # every right reading is a right verdict


def test_explain_says_which_predicate_fails(odd_over_2: ps.ModelSpec) -> None:
    for image in odd_over_2.sample(10).images:
        e = odd_over_2.explain(image)
        assert e.valid == (e.failed is None)
        if not e.valid:
            assert f"{e.label} fails" in str(e) or "not in the label space" in str(e)
        assert abs(sum(e.probabilities.values()) - 1) < 1e-4


def test_check_returns_the_spec_post_result_and_writes_a_grid(
    odd_over_2: ps.ModelSpec, tmp_path: Path
) -> None:
    image = odd_over_2.sample(1).images[0]
    result = odd_over_2.check(image, n=7, grid=tmp_path / "grid.png")
    assert result["spec"] == "odd-over-2-mnist-image" and result["valid"] == odd_over_2.is_valid(image)
    assert len(result["sample_values"]) == 7 and all(v in range(10) for v in result["sample_values"])
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert isinstance(result, SpecCheck) and result.to_json() == dict(result)
    assert "data:image/png;base64," in result._repr_html_()


def test_a_spec_check_reads_as_its_dict_and_shows_its_grid(tmp_path: Path) -> None:
    grid = tmp_path / "<grid>.png"
    Image.new("RGB", (560, 56), "white").save(grid)
    result = SpecCheck("odd-<spec>", False, (3, 5, 4), str(grid))
    as_dict = {
        "spec": "odd-<spec>",
        "valid": False,
        "sample_values": [3, 5, 4],
        "grid": str(grid),
        "typicality": None,
        "in_distribution": False,
    }
    assert result.to_json() == as_dict and list(result.to_json()) == list(as_dict)  # the JSON's order
    assert result == as_dict and dict(result) == as_dict and result["sample_values"] == [3, 5, 4]
    assert "valid" in result and len(result) == 6 and result.get("nope") is None
    assert json.dumps(result.to_json()) == json.dumps(as_dict)
    assert repr(result) == f"SpecCheck(odd-<spec>: invalid; samples read as [3, 5, 4]; grid {grid})"
    html = result._repr_html_()
    assert "odd-&lt;spec&gt;" in html and "<spec>" not in html and ">invalid<" in html
    assert ">3, 5, 4<" in html and "readings of 3 samples" in html
    match = re.search(r'<img src="data:image/png;base64,([^"]+)"', html)
    assert match and base64.b64decode(match.group(1)) == grid.read_bytes()
    assert_self_contained(html)


def test_a_user_spec_from_callables_and_model_files(digit_models: DigitModels) -> None:
    def discriminate(images: np.ndarray) -> np.ndarray:  # reads every image as a 4
        return np.tile(np.eye(10)[4], (len(images), 1))

    def generate(labels: np.ndarray, latents: np.ndarray) -> np.ndarray:
        return np.full((len(labels), 28, 28), 7, np.uint8)

    spec = ps.model_spec(
        "always-four", labels(range(10), lambda d: d % 4 == 0), discriminate, generate, latent=3
    )
    assert ps.get("always-four") is spec and spec.labels.allowed == (0, 4, 8)
    assert spec.is_valid(np.zeros((28, 28), np.uint8))
    mixed = ps.model_spec("mixed", [1, 2], digit_models.discriminator, generate, latent=2)
    assert mixed.sample(2).images.shape == (2, 28, 28)


def test_bad_inputs_are_one_line_errors(odd_over_2: ps.ModelSpec, digit_models: DigitModels) -> None:
    with pytest.raises(DataError, match="uint8 28x28, got float64 28x28"):
        odd_over_2.is_valid(np.zeros((28, 28)))
    with pytest.raises(DataError, match="got uint8 32x32"):
        odd_over_2.is_valid(np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match="NumPy uint8 array"):
        odd_over_2.is_valid([[0]])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown spec 'nope'"):
        ps.get("nope")
    with pytest.raises(ConfigError, match="no label satisfies"):
        labels(range(10), odd, lambda d: d % 2 == 0)
    with pytest.raises(ConfigError, match="not allowed"):
        odd_over_2.generate([2], np.zeros((1, 8)))
    wrong = ps.model_spec("wrong-kind", [1], digit_models.generator, digit_models.discriminator)
    with pytest.raises(ModelFileError, match="not a classifier"):
        wrong.is_valid(np.zeros((28, 28), np.uint8))
    with pytest.raises(ModelFileError, match="not a generator"):
        wrong.sample(1)
    with pytest.raises(ConfigError, match="needs latent") as error:
        ps.model_spec("no-latent", [1], digit_models.discriminator, lambda y, z: z).sample(1)
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match=r"latents \(N, 8\), got \(1,\) and \(1, 3\)") as data_error:
        odd_over_2.generate([3], np.zeros((1, 3)))
    assert "\n" not in str(data_error.value)


# --- images the discriminator does not know (issue 24)
def real_digits(digit: int, n: int) -> np.ndarray:
    x, y = mnist_5k()
    return x[y == digit][:n]


def test_in_distribution_refuses_an_inverted_digit_and_accepts_real_ones(builtin: DigitModels) -> None:
    spec = ps.get("mnist-image")  # every reading allowed: only typicality can refuse
    inverted = 255 - real_digits(3, 1)[0]
    assert spec.is_valid(inverted) and not spec.is_valid(inverted, in_distribution=True)
    e = spec.explain(inverted, in_distribution=True)
    assert e.typicality is not None and e.typicality < spec.unknown_threshold == 0.05
    assert not e.valid and e.unknown and e.in_distribution
    shape = r"mnist-image: invalid: read as \d \(p=\d\.\d{3}\), but not a digit the discriminator knows: "
    assert re.fullmatch(shape + r"typicality 0\.0\d\d", str(e)), str(e)
    assert e.to_json()["typicality"] == e.typicality and e.to_json()["in_distribution"] is True
    plain = spec.explain(inverted)  # not required: valid, its typicality still said
    assert plain.valid and plain.typicality == e.typicality and not plain.in_distribution
    assert str(plain).endswith(f"; typicality {e.typicality:.3f}")
    threes = [spec.explain(im, in_distribution=True) for im in real_digits(3, 20)]
    assert sum(t.valid for t in threes) >= 16  # about 95% of real digits are typical
    assert all(t.valid == (t.typicality is not None and t.typicality >= 0.05) for t in threes)


def test_a_spec_that_requires_digits_in_distribution(digit_models: DigitModels, tmp_path: Path) -> None:
    d, g = digit_models.discriminator, digit_models.generator
    known = ps.model_spec("known-digit", range(10), d, g, in_distribution=True)
    inverted, three = 255 - real_digits(3, 1)[0], real_digits(3, 1)[0]
    assert not known.is_valid(inverted) and known.is_valid(inverted, in_distribution=False)
    assert (
        known.explain(inverted).in_distribution
        and not known.check(inverted, n=2, grid=tmp_path / "g.png")["valid"]
    )
    lenient = ps.model_spec("any-digit", range(10), d, g, in_distribution=True, unknown_threshold=0.0)
    assert lenient.is_valid(inverted)  # no typicality is below 0
    with pytest.raises(ConfigError, match="unknown_threshold: a typicality between 0 and 1"):
        ps.model_spec("bad", range(10), d, g, unknown_threshold=1.5)
    with pytest.raises(ConfigError, match="callable") as error:
        ps.model_spec("by-hand", range(10), lambda x: np.eye(10)[[0] * len(x)], g, in_distribution=True)
    assert "\n" not in str(error.value)
    old = stripped(d, tmp_path / "old.safetensors")  # a model file from before in-distribution models
    older = ps.model_spec("older", range(10), old, g)
    assert older.explain(three).typicality is None and "typicality" not in str(older.explain(three))
    with pytest.raises(ConfigError) as error:
        older.is_valid(three, in_distribution=True)
    message = str(error.value)
    assert message.startswith("older: requiring images in distribution needs an in-distribution model")
    assert f"{old} has none" in message and "\n" not in message
    assert f"pawlab calibrate-unknown {old} DATA" in message


def test_valid_only_draws_digits_in_distribution_when_the_spec_requires_it(
    digit_models: DigitModels,
) -> None:
    spec = ps.model_spec(
        "typical-digit",
        range(10),
        digit_models.discriminator,
        digit_models.generator,
        in_distribution=True,
        unknown_threshold=0.3,
    )
    drawn: list[float] = []

    @settings(deadline=None, max_examples=10, database=None, suppress_health_check=list(HealthCheck))
    @given(spec.strategy(valid_only=True))
    def prop(image: np.ndarray) -> None:
        typicality = spec.explain(image).typicality
        assert typicality is not None
        drawn.append(typicality)

    prop()
    assert drawn and min(drawn) >= 0.3


def test_specs_not_requiring_it_never_compute_typicality(
    odd_over_2: ps.ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("predict_scored called")

    image = real_digits(3, 1)[0]
    odd_over_2.is_valid(image)  # loads the discriminator before the patch
    monkeypatch.setattr(Model, "predict_scored", refuse)
    assert odd_over_2.is_valid(image) in (True, False)

    @settings(deadline=None, max_examples=5, database=None, suppress_health_check=list(HealthCheck))
    @given(odd_over_2.strategy(valid_only=True))
    def prop(image: np.ndarray) -> None:
        pass

    prop()
    with pytest.raises(AssertionError, match="predict_scored called"):
        odd_over_2.explain(image)  # one image explained: with its typicality


def test_an_explanation_says_why_an_image_is_refused() -> None:
    refused = Explanation(
        "odd-over-2",
        False,
        3,
        0.99,
        {3: 0.99, 5: 0.01},
        "not a digit the discriminator knows: typicality 0.001",
        0.001,
        True,
        True,
    )
    assert str(refused) == (
        "odd-over-2: invalid: read as 3 (p=0.990), but not a digit the discriminator knows: typicality 0.001"
    )
    failed = Explanation("odd", False, 4, 0.9, {4: 0.9, 5: 0.1}, "4 fails odd", 0.5, False)
    reason = "4 fails odd (probabilities 4: 0.900, 5: 0.100)"
    assert str(failed) == f"odd: invalid: read as 4 (p=0.900); {reason}; typicality 0.500"
    assert str(Explanation("odd", True, 5, 0.9, {5: 0.9}, None)) == "odd: valid: read as 5 (p=0.900)"

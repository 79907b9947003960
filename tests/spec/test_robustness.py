from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pawlab.config import AugmentConfig, RuntimeConfig, TrainConfig
from pawlab.data import load_eval_set
from pawlab.errors import ConfigError, DataError
from pawlab.inference import Model, load_model
from pawlab.spec.metamorphic import FLIP, TRANSFORMS
from pawlab.spec.robustness import (
    FRAGILE_PNG,
    REPORT_JSON,
    RobustnessReport,
    robustness,
    robustness_of,
    search_grid,
)
from pawlab.training import train
from tests.conftest import TINY, write_tree
from tests.inference.test_unknowns import stripped


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model file, an unseen labelled tree) for the toy task: 'cat' is bright on the left,
    'dog' on the right, so a mirror image swaps the class and must show up as fragile."""
    root = tmp_path_factory.mktemp("robust")
    model = root / "model.safetensors"
    train(
        write_tree(root / "src", {"cat": 20, "dog": 20}),
        model,
        TINY,
        TrainConfig(epochs=8, lr=3e-3, batch_size=8, augment=AugmentConfig(flip=True)),
        workers=1,
        stream=io.StringIO(),
        runtime=RuntimeConfig(progress=False),
    )
    return model, write_tree(root / "test", {"cat": 8, "dog": 8}, start=100)


@pytest.fixture(scope="module")
def model(trained: tuple[Path, Path]) -> Model:
    return load_model(trained[0], compile="off")


def eval_images(model: Model, path: Path) -> tuple[np.ndarray, np.ndarray]:
    pre = model.preprocessing
    ev = load_eval_set(path, pre.size, pre.channels, model.classes, progress=False)
    return ev.images.images, ev.images.labels


def test_robustness_of_a_tiny_model(trained: tuple[Path, Path], tmp_path: Path) -> None:
    report = robustness_of(trained[0], trained[1], out_dir=tmp_path, progress=False, steps=2, refine=2)
    assert isinstance(report, RobustnessReport) and report.count == 16
    assert {r.transform for r in report.results} == set(TRANSFORMS.names()), (
        "trained with flips: flip allowed"
    )
    for r in report.results:
        shares = (r.random_flip_share, r.worst_case_flip_share, r.worst_severity_share)
        assert all(0.0 <= s <= 1.0 for s in shares)
        assert r.worst_case_flip_share >= r.worst_severity_share
        assert len(r.mildest) == len(r.prob_drop) == 16
        assert all(m is None or 0 < abs(m) <= 1 for m in r.mildest)
        assert r.left_distribution_share is not None and 0.0 <= r.left_distribution_share <= 1.0
    flip = next(r for r in report.results if r.transform == FLIP)
    assert flip.worst_case_flip_share > 0.5, "mirroring swaps the toy classes"
    assert 0 <= report.originally_wrong <= 16
    assert report.originally_unknown is not None and 0 <= report.originally_unknown <= 16
    saved = json.loads((tmp_path / REPORT_JSON).read_text())
    assert saved["flips_relative_to"] == "the model's prediction on the original image"
    assert saved["count"] == 16 and len(saved["results"]) == len(report.results)
    assert saved["unknown_threshold"] == 0.05 and saved["originally_unknown"] == report.originally_unknown
    assert saved["fragile"] and {"name", "transform", "severity", "words", "original", "variant"} <= set(
        saved["fragile"][0]
    )
    grid = Image.open(tmp_path / FRAGILE_PNG)
    assert grid.size[0] > 2 * 128 and grid.size[1] > 128
    table = report.table()
    assert len(table.splitlines()) == 5 + len(report.results) + len(report.figures)
    assert "already wrong" in table and "flip" in table
    assert f"{report.originally_unknown} out of distribution" in table.splitlines()[0]
    assert "typicality is below 0.05" in table and "out of dist" in table.splitlines()[4]


def test_same_seed_same_report_and_mildest_flips_do_flip(model: Model, trained: tuple[Path, Path]) -> None:
    images, labels = eval_images(model, trained[1])
    kinds = ["brightness", ("rotate", {"max_degrees": 40.0}), FLIP]
    a = robustness(model, images, labels, model.classes, kinds, steps=2, refine=2, random_samples=2, seed=3)
    b = robustness(model, images, labels, model.classes, kinds, steps=2, refine=2, random_samples=2, seed=3)
    assert a.to_json() == b.to_json()
    assert [r.transform for r in a.results] == ["brightness", "rotate", FLIP]
    assert a.results[1].params == {"max_degrees": 40.0}
    assert a.figures == {} and a.fragile, "no out_dir: nothing written, fragile images still listed"
    pred = model.predict_proba(images).argmax(1)
    from pawlab.spec.metamorphic import apply

    for r in a.results:
        for i, m in enumerate(r.mildest):
            if m is not None:
                varied = apply(images[i], r.transform, m, **r.params)
                assert model.predict_proba(varied[None]).argmax(1)[0] != pred[i]


def test_search_grid() -> None:
    assert search_grid("rotate", 2) == [0.5, -0.5, 1.0, -1.0]
    assert search_grid("blur", 4) == [0.25, 0.5, 0.75, 1.0]
    assert search_grid(FLIP, 5) == [1.0]


def test_bad_inputs_are_one_line_errors(model: Model, trained: tuple[Path, Path]) -> None:
    images, labels = eval_images(model, trained[1])
    cases = [
        (lambda: robustness(model, images.astype(np.float32), labels, model.classes), DataError, "uint8"),
        (
            lambda: robustness(model, images[:, :8], labels, model.classes),
            DataError,
            "16x16x3 for this model",
        ),
        (lambda: robustness(model, images, labels[:3], model.classes), DataError, "one per image"),
        (lambda: robustness(model, images, labels, ["a", "b"]), DataError, "differ from the model's"),
        (
            lambda: robustness(model, images, labels, model.classes, ["spin"]),
            ConfigError,
            "unknown transform",
        ),
        (
            lambda: robustness(model, images, labels, model.classes, [("blur", {"sigma": 1.0})]),
            ConfigError,
            "unknown parameter 'sigma'",
        ),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match) as info:
            call()
        assert "\n" not in str(info.value)


def test_out_of_distribution_variants_are_counted_from_the_random_pass(
    model: Model, trained: tuple[Path, Path], tmp_path: Path
) -> None:
    images, labels = eval_images(model, trained[1])
    noisy = [("noise", {"max_std": 1.0})]  # pixel noise this strong makes none of the toy images
    report = robustness(model, images, labels, model.classes, noisy, steps=1, refine=0, random_samples=3)
    assert report.originally_unknown is not None and report.originally_unknown < 16
    share = report.results[0].left_distribution_share
    assert share is not None and share > 0.5
    old = load_model(stripped(trained[0], tmp_path / "old.safetensors"), compile="off")
    before = robustness(old, images, labels, old.classes, noisy, steps=1, refine=0)
    assert before.originally_unknown is None and before.results[0].left_distribution_share is None
    as_json = json.loads(json.dumps(before.to_json()))
    assert as_json["originally_unknown"] is None and as_json["results"][0]["left_distribution_share"] is None
    table = before.table().splitlines()
    assert "out of distribution" not in table[0] and "no in-distribution model" in table[2]
    assert table[4].endswith("out of dist") and table[5].endswith("  -")

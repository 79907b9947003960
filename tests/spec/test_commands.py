"""``pawlab spec ...`` through the real entry point, on the small digit pair."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from pawlab.data.embedded import mnist_5k
from pawlab.spec import DigitModels
from tests.inference.test_unknowns import stripped
from tests.test_cli import assert_one_line_error, pawlab


def test_list_names_every_builtin_spec(digit_models: DigitModels) -> None:
    proc = pawlab("spec", "list", "--models", digit_models.folder)
    assert proc.returncode == 0, proc.stderr
    for name in ("mnist-image", "even-mnist-image", "odd-mnist-image", "odd-over-2-mnist-image"):
        assert name in proc.stdout
    assert "[3, 5, 7, 9]" in proc.stdout and "trained" in proc.stdout


def test_list_says_how_missing_models_are_trained(tmp_path: Path) -> None:
    named = pawlab("spec", "list", "--models", tmp_path / "none")
    assert named.returncode == 0, named.stderr
    assert f"not trained: pawlab spec train-digits --out {tmp_path / 'none'} trains them" in named.stdout
    assert "first use" not in named.stdout  # a folder the user names is never trained into
    cached = pawlab("spec", "list", env={"PAWLAB_CACHE_DIR": str(tmp_path / "cache")})
    assert "not trained yet: trained on first use, or by pawlab spec train-digits" in cached.stdout
    assert not (tmp_path / "cache").exists()  # listing makes nothing


def test_check_prints_the_spec_post_result(digit_models: DigitModels, tmp_path: Path) -> None:
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8), "L").save(image)
    grid = tmp_path / "grid.png"
    proc = pawlab(
        "spec",
        "check",
        "odd-mnist-image",
        image,
        "--json",
        "-n",
        6,
        "--grid",
        grid,
        "--models",
        digit_models.folder,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert list(result) == ["spec", "valid", "sample_values", "grid", "typicality", "in_distribution"]
    assert result["spec"] == "odd-mnist-image" and isinstance(result["valid"], bool)
    assert len(result["sample_values"]) == 6 and grid.is_file()
    text = pawlab("spec", "check", "odd-mnist-image", image, "--grid", grid, "--models", digit_models.folder)
    assert "odd-mnist-image: " in text.stdout and "sample values" in text.stdout


def test_sample_writes_a_grid(digit_models: DigitModels, tmp_path: Path) -> None:
    out = tmp_path / "samples.png"
    proc = pawlab(
        "spec", "sample", "even-mnist-image", "-n", 20, "--out", out, "--models", digit_models.folder
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size[0] > 10 * 56 and "20 samples of even-mnist-image" in proc.stdout


def test_bad_spec_commands_are_one_line_errors(digit_models: DigitModels, tmp_path: Path) -> None:
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8), "L").save(image)
    assert_one_line_error(
        pawlab("spec", "check", "nope", image, "--models", digit_models.folder), "unknown spec 'nope'"
    )
    assert_one_line_error(
        pawlab("spec", "check", "mnist-image", tmp_path / "missing.png", "--models", digit_models.folder),
        "missing.png",
    )
    assert_one_line_error(
        pawlab("spec", "sample", "mnist-image", "--out", tmp_path / "g.png", "--models", tmp_path),
        "no digit models",
    )
    assert pawlab("spec", "sample", "mnist-image").returncode == 2  # --out is required


def test_check_notes_an_image_far_smaller_than_the_discriminators_input_on_stderr(
    digit_models: DigitModels, tmp_path: Path
) -> None:
    dot = tmp_path / "dot.png"
    Image.new("L", (1, 1), 128).save(dot)
    note = f"pawlab spec: note: {dot}: 1x1 pixels, far smaller than the model's 28x28 input (upscaled 28x)"
    args = (
        "spec",
        "check",
        "mnist-image",
        dot,
        "-n",
        2,
        "--grid",
        tmp_path / "g.png",
        "--models",
        digit_models.folder,
    )
    as_json = pawlab(*args, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["spec"] == "mnist-image"  # stdout: the one JSON object
    assert as_json.stderr.splitlines() == [note]
    text = pawlab(*args)
    assert text.stdout.startswith("mnist-image: ") and text.stderr.splitlines() == [note]


def test_check_in_distribution_refuses_a_digit_the_discriminator_does_not_know(
    digit_models: DigitModels, tmp_path: Path
) -> None:
    x, y = mnist_5k()
    inverted = tmp_path / "inverted.png"
    Image.fromarray(255 - x[y == 3][0], "L").save(inverted)
    args = ("spec", "check", "mnist-image", inverted, "-n", 2, "--grid", tmp_path / "g.png")
    models = ("--models", digit_models.folder)
    proc = pawlab(*args, "--in-distribution", "--json", *models)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["valid"] is False and result["in_distribution"] is True
    assert 0.0 <= result["typicality"] < 0.05
    text = pawlab(*args, "--in-distribution", *models).stdout.splitlines()[0]
    assert text.startswith("mnist-image: invalid: read as ") and text.endswith(
        f"), but not a digit the discriminator knows: typicality {result['typicality']:.3f}"
    )
    lenient = pawlab(*args, *models).stdout.splitlines()[0]  # not required: valid, typicality said
    assert lenient.startswith("mnist-image: valid: ") and lenient.endswith(
        f"; typicality {result['typicality']:.3f}"
    )
    older = DigitModels(tmp_path / "older")  # a discriminator from before in-distribution models
    older.folder.mkdir()
    stripped(digit_models.discriminator, older.discriminator)
    for role in ("guide", "generator"):
        shutil.copyfile(getattr(digit_models, role), getattr(older, role))
    assert_one_line_error(
        pawlab(*args, "--in-distribution", "--models", older.folder),
        f"mnist-image: requiring images in distribution needs an in-distribution model, and "
        f"{older.discriminator} has none (pawlab calibrate-unknown {older.discriminator} DATA fits one)",
    )

"""Models named on the command line."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest

from pawlab.errors import ConfigError
from pawlab.serve.models import Loading, Version, model_names, run_model_file


def test_a_model_is_named_by_its_stem_or_by_name_equals_path() -> None:
    named = model_names(["runs/cats.safetensors", "fast=m/b.safetensors", "runs/a=b/model.safetensors"])
    assert named == [
        ("cats", Path("runs/cats.safetensors")),
        ("fast", Path("m/b.safetensors")),
        ("model", Path("runs/a=b/model.safetensors")),
    ]


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["a/model.safetensors", "b/model.safetensors"], "a second model named 'model'; name one NAME=PATH"),
        (["my model.safetensors"], "name the model NAME=my model.safetensors"),
        ([], "no model to serve"),
    ],
)
def test_names_that_cannot_be_used_are_refused(specs: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        model_names(specs)


def test_a_version_with_other_classes_or_another_input_cannot_take_over(models: dict[str, Path]) -> None:
    served = Version.load(models["first"], Loading(compile="off", precision="fp32"))
    assert served.misfit(Version.load(models["second"], Loading(compile="off", precision="fp32"))) is None

    def like(**changes: object) -> Version:
        model = copy.copy(served.model)
        for name, value in changes.items():
            setattr(model, name, value)
        return replace(served, model=model)

    three = like(classes=["cat", "dog", "fox"])
    assert served.misfit(three) == "classes ['cat', 'dog', 'fox'] differ from the served ['cat', 'dog']"
    pre = served.model.preprocessing
    larger = like(preprocessing=replace(pre, size=(pre.size[0] * 2, pre.size[1] * 2)))
    h, w = pre.size
    assert served.misfit(larger) == (
        f"input {2 * h}x{2 * w}x{pre.channels} ({pre.resize}) differs from the served "
        f"{h}x{w}x{pre.channels} ({pre.resize})"
    )


def test_a_run_directory_s_model_file_is_the_one_its_config_names(tmp_path: Path) -> None:
    assert run_model_file(tmp_path) == tmp_path / "model.safetensors"
    (tmp_path / "config.json").write_text(json.dumps({"model": "/elsewhere/cats.safetensors"}))
    assert run_model_file(tmp_path) == Path("/elsewhere/cats.safetensors")
    assert model_names([tmp_path, f"pets={tmp_path}"]) == [(tmp_path.name, tmp_path), ("pets", tmp_path)]

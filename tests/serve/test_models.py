"""Models named on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pawlab.errors import ConfigError
from pawlab.serve.models import model_names


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

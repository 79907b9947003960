from __future__ import annotations

from collections.abc import Iterator

import pytest

from pawlab.config import RuntimeConfig
from pawlab.spec import DigitModels, DigitRecipe, train_digits, use_digit_models

# A small digit pair, trained once per test session: enough to read and draw digits badly,
# which is all the behaviour tests need (bench/spec.py measures the shipped recipe).
QUICK = DigitRecipe(
    discriminator_epochs=2, guide_epochs=1, vae_epochs=2, guided_epochs=1, latent=8, digits=1500, seed=0
)


@pytest.fixture(scope="session")
def digit_models(tmp_path_factory: pytest.TempPathFactory) -> DigitModels:
    folder = tmp_path_factory.mktemp("digit-models")
    return train_digits(
        folder, QUICK, runtime=RuntimeConfig(precision="fp32", progress=False), stream=_Null()
    )


@pytest.fixture
def builtin(digit_models: DigitModels) -> Iterator[DigitModels]:
    """The built-in specs on the small pair (never the cache's: that would train for minutes)."""
    use_digit_models(digit_models.folder)
    yield digit_models
    use_digit_models()


class _Null:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

"""Model specs: Hypothesis strategies backed by models, and metamorphic robustness specs.

labels.py      label spaces refined by predicates (``s/and``): `labels`, `even`, `odd`
core.py        `model_spec`, `ModelSpec` (is_valid, explain, strategy, check), `get`
builtin.py     mnist-image, even-/odd-/odd-over-2-mnist-image, on the digit models
training.py    `train_digits`: the discriminator, guide and generator, with pawlab's loop
metamorphic.py label-preserving transforms and `variants(image, kind)` strategies
robustness.py  how often a classifier's answer flips under those transforms
commands.py    ``pawlab spec ...``
"""

from pawlab.spec.builtin import BUILTIN, use_digit_models
from pawlab.spec.core import SPECS, Explanation, ModelSpec, Samples, SpecCheck, get, model_spec
from pawlab.spec.labels import DIGIT_LABELS, Labels, even, greater_than, labels, odd
from pawlab.spec.metamorphic import TRANSFORMS, allowed_transforms, variants
from pawlab.spec.robustness import RobustnessReport, robustness, robustness_of
from pawlab.spec.training import DigitModels, DigitRecipe, digit_models, train_digits


def names() -> list[str]:
    """The registered specs' names."""
    return SPECS.names()


__all__ = [
    "BUILTIN",
    "DIGIT_LABELS",
    "DigitModels",
    "DigitRecipe",
    "Explanation",
    "Labels",
    "ModelSpec",
    "RobustnessReport",
    "SPECS",
    "TRANSFORMS",
    "Samples",
    "SpecCheck",
    "allowed_transforms",
    "digit_models",
    "even",
    "get",
    "greater_than",
    "labels",
    "model_spec",
    "names",
    "odd",
    "robustness",
    "robustness_of",
    "train_digits",
    "use_digit_models",
    "variants",
]

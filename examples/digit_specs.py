"""Model specs in a minute: a digit spec that validates with a classifier and generates with a
conditional generator, used as a Hypothesis strategy.

    .venv/bin/python examples/digit_specs.py

The first run trains the digit models into the pawlab cache (a few minutes on 2 cores; or
``pawlab spec train-digits`` beforehand); later runs take seconds.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings

import pawlab.spec as ps

# s/and of a label space and predicates: (and digit odd? #(> % 2)) -> 3, 5, 7, 9
odd_over_2 = ps.model_spec(
    "my-odd-over-2",
    ps.labels(range(10), ps.odd, lambda d: d > 2),
    discriminate=ps.digit_models().discriminator,  # pawlab model files (or any callables)
    generate=ps.digit_models().generator,
)


@settings(deadline=None, max_examples=50)  # deadline: the first example may warm caches
@given(odd_over_2.strategy())
def generated_digits_are_28x28_with_ink(image: np.ndarray) -> None:
    assert image.shape == (28, 28) and image.dtype == np.uint8 and image.max() > 128


@settings(deadline=None, max_examples=50, database=None)
@given(odd_over_2.strategy())
def every_odd_digit_over_2_reads_as_3(image: np.ndarray) -> None:
    """False on purpose: Hypothesis shrinks the failure to the smallest label and the latent
    nearest the prototype, and reports both with an interpolation strip."""
    assert odd_over_2.explain(image).label == 3


if __name__ == "__main__":
    generated_digits_are_28x28_with_ink()
    print("property held for 50 generated digits")
    try:
        every_odd_digit_over_2_reads_as_3()
    except AssertionError as failure:
        print("a false property, as Hypothesis reports it:")
        print("\n".join(getattr(failure, "__notes__", [])))
    image = odd_over_2.sample(1, seed=7).images[0]
    print(odd_over_2.explain(image))  # "valid: read as 3 (p=...)", or which predicate fails
    print(
        odd_over_2.check(image, n=10, grid="pawlab-demo/my-odd-over-2.png")
    )  # {spec, valid, sample_values, grid}

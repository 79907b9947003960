"""Label spaces refined by predicates, as clojure.spec's ``s/and`` composes them.

    odd_over_2 = labels(range(10), odd, lambda d: d > 2)   # allowed: (3, 5, 7, 9)

The allowed set is computed once, when the labels are defined; a refinement that no label
satisfies is an error there, not a strategy that can never draw.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pawlab.errors import ConfigError

Predicate = Callable[[int], bool]


def even(d: int) -> bool:
    return d % 2 == 0


def odd(d: int) -> bool:
    return d % 2 == 1


def greater_than(n: int) -> Predicate:
    """``d > n``, named so for `Labels.explain`."""

    def above(d: int) -> bool:
        return d > n

    above.__name__ = f"> {n}"
    return above


def describe(predicate: Predicate) -> str:
    """A predicate's name, or a lambda's own source text (``lambda d: d > 2``)."""
    name: str | None = getattr(predicate, "__name__", None)
    if name and name != "<lambda>":
        return name
    try:
        source = inspect.getsource(predicate)
    except (OSError, TypeError):
        return name or repr(predicate)
    found = re.search(r"lambda[^:]*:.*?(?=,\s*(?:lambda|name=|\w+\s*=)|\)\s*(?:$|,)|$)", source.strip())
    return found.group(0).strip() if found else "<lambda>"


@dataclass(frozen=True)
class Labels:
    """A label space refined by predicates; ``allowed`` is the exact set that satisfies all."""

    space: tuple[int, ...]
    predicates: tuple[Predicate, ...] = ()
    name: str = "labels"

    @property
    def allowed(self) -> tuple[int, ...]:
        return tuple(v for v in self.space if all(p(v) for p in self.predicates))

    def refine(self, *predicates: Predicate, name: str | None = None) -> Labels:
        """These labels and ``predicates`` (``s/and``)."""
        return labels(self.space, *self.predicates, *predicates, name=name or self.name)

    def failed(self, label: int) -> str | None:
        """Why ``label`` is not allowed (the first predicate it fails), or None."""
        if label not in self.space:
            return f"{label} is not in the label space {self.space[0]}..{self.space[-1]}"
        bad = next((p for p in self.predicates if not p(label)), None)
        return None if bad is None else f"{label} fails {describe(bad)}"

    def describe(self) -> str:
        """``(and digit odd (lambda d: d > 2))``, in the spec's own terms."""
        parts = [f"{self.space[0]}..{self.space[-1]}", *(describe(p) for p in self.predicates)]
        return f"({' and '.join(parts)})"


def labels(space: Iterable[int], *predicates: Predicate, name: str = "labels") -> Labels:
    """The labels of ``space`` that satisfy every predicate; a `ConfigError` if none does."""
    values = tuple(sorted({int(v) for v in space}))
    if not values:
        raise ConfigError(f"{name}: the label space is empty")
    for p in predicates:
        if not callable(p):
            raise ConfigError(f"{name}: a predicate must be callable, got {p!r}")
    refined = Labels(values, tuple(predicates), name)
    if not refined.allowed:
        raise ConfigError(f"{name}: no label satisfies {refined.describe()}")
    return refined


DIGIT_LABELS = labels(range(10), name="mnist-number")

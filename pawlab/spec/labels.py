"""Label spaces refined by predicates, as clojure.spec's ``s/and`` composes them.

    odd_over_2 = labels(range(10), odd, lambda d: d > 2)   # allowed: (3, 5, 7, 9)

The allowed set is computed once, when the labels are defined; a refinement that no label
satisfies is an error there, not a strategy that can never draw.
"""

from __future__ import annotations

import ast
import inspect
import linecache
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
    return _lambda_source(predicate) or name or repr(predicate)


def _lambda_source(predicate: Predicate) -> str | None:
    """The source text of the lambda ``predicate`` is: of those on its first line, the one
    whose body holds the column where its code starts."""
    code = getattr(predicate, "__code__", None)
    try:
        path = inspect.getsourcefile(predicate)
        source = "".join(linecache.getlines(path)) if path else ""
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, ValueError):
        return None
    if code is None:
        return None
    start = next(
        (col for line, _, col, _ in code.co_positions() if line == code.co_firstlineno and col), None
    )
    for node in ast.walk(tree):
        if isinstance(node, ast.Lambda) and node.lineno == code.co_firstlineno:
            body = node.body
            if start is None or (
                body.lineno == code.co_firstlineno
                and body.col_offset <= start <= (body.end_col_offset or start)
            ):
                return ast.get_source_segment(source, node)
    return None


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
            return f"{label} is not in the label space {self._space()}"
        bad = next((p for p in self.predicates if not p(label)), None)
        return None if bad is None else f"{label} fails {describe(bad)}"

    def describe(self) -> str:
        """``(and digit odd (lambda d: d > 2))``, in the spec's own terms."""
        parts = [self._space(), *(describe(p) for p in self.predicates)]
        return f"({' and '.join(parts)})"

    def _space(self) -> str:
        """``0..9`` for consecutive labels, else the set ``{0, 4, 8}``."""
        lo, hi = self.space[0], self.space[-1]
        consecutive = len(self.space) == hi - lo + 1 and len(self.space) > 2
        return f"{lo}..{hi}" if consecutive else "{" + ", ".join(map(str, self.space)) + "}"


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

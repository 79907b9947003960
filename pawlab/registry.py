"""String-named registries (timm's ``@register_model``): layers and architectures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    @staticmethod
    def normalise(name: str) -> str:
        """Lookups ignore case and treat ``_`` as ``-``: ``Max_Pool`` is ``max-pool``."""
        return name.strip().lower().replace("_", "-")

    def register(self, name: str, *aliases: str, replace: bool = False) -> Callable[[T], T]:
        """Register under ``name`` (and ``aliases``); a name taken is an error unless
        ``replace`` (a redefinition, as clojure.spec's ``s/def``)."""
        key = self.normalise(name)
        keys = [key, *(self.normalise(a) for a in aliases)]
        taken = [k for k in keys if (k in self._items or k in self._aliases) and not replace]
        if taken or len(set(keys)) != len(keys):
            raise ValueError(f"{self.kind} name {(taken or keys)[0]!r} is registered twice")

        def deco(obj: T) -> T:
            self._items[key] = obj
            for a in keys[1:]:
                self._aliases[a] = key
            return obj

        return deco

    def canonical(self, name: str) -> str | None:
        key = self.normalise(name)
        if key in self._items:
            return key
        return self._aliases.get(key)

    def get(self, name: str) -> T:
        key = self.canonical(name)
        if key is None:
            raise KeyError(name)
        return self._items[key]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.canonical(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

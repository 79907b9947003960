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

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items or name in self._aliases:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            for a in aliases:
                self._aliases[a] = name
            return obj

        return deco

    def canonical(self, name: str) -> str | None:
        key = name.strip().lower().replace("_", "-")
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

"""A tiny name -> factory registry, so that adding a model, method or encoder is one file plus one line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from histokd.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories. ``@REG.register("name")`` decorates a class or function."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise InputError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

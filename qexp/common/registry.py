"""Registries: a decorator, a dict, and an error that lists what exists (STYLE 5).

YAML names registry keys, never module paths, so renaming a class breaks neither configs nor result records.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class UnknownChoiceError(KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class Registry(Generic[T]):
    """``kind`` names the entries in messages; ``error`` is what an unknown name raises (a domain's own error type,
    so callers catch one class per domain; the message always lists the valid choices)."""

    def __init__(self, kind: str, error: type[Exception] = UnknownChoiceError):
        self.kind, self.error = kind, error
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
            raise self.error(
                f"unknown {self.kind} {name!r}; valid choices: {', '.join(sorted(self._items))}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())


def name_and_kwargs(spec, kind: str) -> tuple[str, dict]:
    """A config value naming a registry entry: ``"name"`` or ``{name: ..., **kwargs}`` (None kwargs dropped)."""
    if isinstance(spec, str):
        return spec, {}
    kwargs = {k: v for k, v in dict(spec).items() if v is not None}
    if "name" not in kwargs:
        raise UnknownChoiceError(f"{kind} {dict(spec)} has no 'name'")
    return kwargs.pop("name"), kwargs

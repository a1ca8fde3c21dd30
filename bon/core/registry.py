"""A generic name -> object registry with lazy imports and did-you-mean errors."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Generic, TypeVar

from bon.core.errors import BonError, did_you_mean

T = TypeVar("T")


class UnknownNameError(BonError, KeyError):
    """A name that is not registered; the message lists close matches and every choice."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to ``"module:attribute"`` targets that are imported only when looked up."""

    def __init__(self, what: str, targets: dict[str, str] | None = None):
        self.what = what
        self._targets: dict[str, str] = dict(targets or {})
        self._loaded: dict[str, T] = {}

    def names(self) -> list[str]:
        return sorted(self._targets)

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def check(self, name: str) -> str:
        """Return ``name`` if registered, else raise with suggestions (no import happens)."""
        if name not in self._targets:
            hint = did_you_mean(name, self._targets, n=3, cutoff=0.5)
            hint = f" {hint[:1].upper()}{hint[1:]}" if hint else ""
            raise UnknownNameError(f"unknown {self.what} {name!r}.{hint} Choices: {', '.join(self.names())}")
        return name

    def get(self, name: str) -> T:
        """The registered object, imported on first use."""
        self.check(name)
        if name not in self._loaded:
            module_name, _, attr = self._targets[name].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module_name), attr)
        return self._loaded[name]

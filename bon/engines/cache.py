"""Loaded models, owned: one `EngineCache` holds every model a process loads, by what loaded it.

A policy and a judge on the same weights share one load. Work that loads models for a while and
then no more (each judge of `bon compare`) runs inside `scope()`: what was first loaded inside the
scope is released when it ends, so the peak is the largest scope's models, not the sum. Models
loaded outside any scope (a run's policy and judge, a test session's SmolLM2) stay until `close`.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import weakref
from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class EngineCache:
    """Models by key (kind, config fields); the one owner of loaded weights in a process."""

    def __init__(self) -> None:
        self._held: dict[Hashable, Any] = {}
        self._scopes: list[list[Hashable]] = []  # keys first loaded in each open scope, innermost last
        self.loads = 0  # models loaded so far (a shared load counts once)
        self._alive: weakref.WeakSet[Any] = weakref.WeakSet()

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        """The model for ``key``, loaded by ``make`` on first use."""
        if key not in self._held:
            model = make()
            self._held[key] = model
            self.loads += 1
            if self._scopes:
                self._scopes[-1].append(key)
            with contextlib.suppress(TypeError):  # an object that cannot be weakly referenced is not counted
                self._alive.add(model)
        return self._held[key]

    def alive(self) -> list[Any]:
        """Models loaded here that still exist (a released one lives on while anything else holds it)."""
        return list(self._alive)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Models first loaded inside are released when it ends (those loaded before it stay shared)."""
        self._scopes.append([])
        try:
            yield
        finally:
            self._release(self._scopes.pop())

    def close(self) -> None:
        """Release every model held."""
        self._release(list(self._held))

    def _release(self, keys: list[Hashable]) -> None:
        if not keys:
            return
        for key in keys:
            self._held.pop(key, None)
        gc.collect()  # models hold reference cycles (modules and their parents)
        torch = sys.modules.get("torch")  # only where a model was loaded with it
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


ENGINES = EngineCache()  # this process's loaded models

"""A generic name -> object registry with lazy imports and did-you-mean errors.

Names come three ways: bon's own (``"module:attribute"`` targets given here), an installed package's entry point
(the registry's ``group``, e.g. ``bon.judges``), and an import path given as the name itself (``"my_pkg.rm:MyJudge"``,
as vLLM and lm-eval take plugins). Nothing is imported until a name is looked up; an object from outside bon goes
through ``adapt`` (the judges' contract checks) before it is handed out.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from bon.core.errors import BonError, did_you_mean

T = TypeVar("T")
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")  # module.path:Attribute


class UnknownNameError(BonError, KeyError):
    """A name that is not registered; the message lists close matches and every choice."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


class PluginImportError(BonError, ImportError):
    """A name given by import path or entry point that cannot be imported; the message names it and why."""


class Registry(Generic[T]):
    """Maps names to ``"module:attribute"`` targets that are imported only when looked up."""

    def __init__(
        self,
        what: str,
        targets: dict[str, str] | None = None,
        group: str | None = None,
        adapt: Callable[[str, Any], T] | None = None,
    ):
        self.what = what
        self._own: dict[str, str] = dict(targets or {})
        self._group, self._adapt = group, adapt
        self._plugins: dict[str, tuple[str, str]] = {}  # entry point name -> (target, where it comes from)
        self._seen_path: tuple[str, ...] | None = None  # sys.path when entry points were last read
        self._loaded: dict[str, T] = {}

    def _scan(self) -> None:
        """Read the group's entry points (names and targets only: nothing is imported) when sys.path changed."""
        if self._group is None or self._seen_path == tuple(sys.path):
            return
        self._seen_path = tuple(sys.path)
        self._plugins = {}
        for ep in importlib.metadata.entry_points(group=self._group):
            if ep.name in self._own or ep.name in self._plugins:
                continue  # bon's own names, and the first package found, keep a name
            dist = getattr(ep, "dist", None)
            where = f"entry point of {dist.name} {dist.version}" if dist is not None else "entry point"
            self._plugins[ep.name] = (ep.value, where)

    def names(self) -> list[str]:
        self._scan()
        return sorted({*self._own, *self._plugins})

    def own(self) -> list[str]:
        """bon's own names (no package's), which import nothing from outside when looked up."""
        return sorted(self._own)

    def __contains__(self, name: object) -> bool:
        self._scan()
        return isinstance(name, str) and (name in self._own or name in self._plugins or is_import_path(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def source(self, name: str) -> str:
        """Where a name comes from: "bon", "entry point of PKG VERSION" or "import path"."""
        self._scan()
        if name in self._own:
            return "bon"
        return self._plugins[name][1] if name in self._plugins else "import path"

    def check(self, name: str) -> str:
        """Return ``name`` if registered (an import path is imported to be sure), else raise with suggestions."""
        self._scan()
        if name in self._own or name in self._plugins:
            return name
        if is_import_path(name):
            self.get(name)
            return name
        hint = did_you_mean(name, self.names(), n=3, cutoff=0.5)
        hint = f" {hint[:1].upper()}{hint[1:]}" if hint else ""
        raise UnknownNameError(
            f"unknown {self.what} {name!r}.{hint} Choices: {', '.join(self.names())}, or an import path module:Name"
        )

    def get(self, name: str) -> T:
        """The registered object, imported on first use (an outside one adapted)."""
        self._scan()
        if name not in self._loaded:
            if name in self._own:
                self._loaded[name] = _import(self._own[name], self.what, name)
            else:
                if name not in self._plugins and not is_import_path(name):
                    self.check(name)  # unknown: raises with the close names
                target = self._plugins[name][0] if name in self._plugins else name
                found = _import(target, self.what, name)
                self._loaded[name] = self._adapt(name, found) if self._adapt else found
        return self._loaded[name]


def is_import_path(name: str) -> bool:
    """Whether ``name`` reads as ``module.path:Attribute``."""
    return bool(IMPORT_PATH.match(name))


def _import(target: str, what: str, name: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as e:  # a user's module failing to import (missing, a syntax error, a failed import inside)
        where = ""
        if isinstance(e, ModuleNotFoundError) and e.name == module_name.split(".")[0]:
            where = "; install its package, or put the folder that holds it on PYTHONPATH"
        raise PluginImportError(
            f"{what} {name!r}: cannot import {module_name} ({type(e).__name__}: {e}){where}"
        ) from None
    for part in attr.split("."):
        if not hasattr(found, part):
            raise PluginImportError(f"{what} {name!r}: {module_name} has no {attr!r}") from None
        found = getattr(found, part)
    return found

"""One base class for every error a user's input can cause, and one formatter for validation errors."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from typing import Any


class BonError(Exception):
    """Bad input or a missing resource: the CLI prints the message on one line and exits 2.

    Subclasses also derive from the builtin that fits (ValueError, KeyError, RuntimeError), so
    library callers may catch either.
    """


class ConfigError(BonError, ValueError):
    """A configuration is invalid; the message names the file, line and key."""


class SizeError(BonError, ValueError):
    """Work or memory beyond what this machine and model can hold; the message names the key and the bound."""


def problems(err: Any, model: Any = None) -> list[tuple[str, str]]:
    """(dotted key, what is wrong) for each error of a pydantic ``ValidationError``.

    Every config, option and manifest message is built from these pairs, so they all read alike:
    ``unknown key`` (with the close keys of ``model`` at that place, or its keys when none is close),
    or pydantic's message with the offending value (unless it is a whole section).
    """
    out = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        if e["type"] == "extra_forbidden":
            out.append((key, "unknown key" + _known_keys(model, e["loc"])))
            continue
        msg = e["msg"].removeprefix("Value error, ")
        whole = isinstance(e.get("input"), dict) or len(repr(e.get("input"))) > 120  # a section: its keys are named
        shown = "" if e["type"] == "missing" or whole else f" (got {e.get('input')!r})"
        out.append((key, msg + shown))
    return out


def _known_keys(model: Any, loc: tuple) -> str:
    """'; did you mean ...?' or '; known keys here: ...' for an unknown key at ``loc`` of ``model``."""
    fields = _fields_at(model, loc[:-1])
    if not fields:
        return "; nothing can be set here" if model is not None and not loc[:-1] and not model.model_fields else ""
    hint = did_you_mean(str(loc[-1]), fields)
    return f"; {hint}" if hint else "; known keys here: " + ", ".join(fields)


def did_you_mean(value: str, known: Iterable[str], n: int = 2, cutoff: float = 0.6) -> str:
    """The hint "did you mean 'a' or 'b'?" naming the known names closest to ``value`` (at most ``n``); "" if none."""
    close = difflib.get_close_matches(value, list(known), n=n, cutoff=cutoff)
    return "did you mean " + " or ".join(repr(c) for c in close) + "?" if close else ""


def _fields_at(model: Any, loc: tuple) -> list[str]:
    """The field names of the pydantic model found at ``loc`` inside ``model`` ([] where there is none)."""
    current = model
    for part in loc:
        if isinstance(part, int):  # a list index: the item's model was taken with the list's annotation
            continue
        field = getattr(current, "model_fields", {}).get(part)
        current = _model_in(field.annotation) if field is not None else None
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> Any:
    """The pydantic model an annotation holds (directly, in a list, or in an optional), else None."""
    if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        return annotation
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None

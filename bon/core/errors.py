"""One base class for every error a user's input can cause, and one formatter for validation errors."""

from __future__ import annotations

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


def problems(err: Any) -> list[tuple[str, str]]:
    """(dotted key, what is wrong) for each error of a pydantic ``ValidationError``.

    Every config, option and manifest message is built from these pairs, so they all read alike:
    ``unknown key``, or pydantic's message with the offending value (unless it is a whole section).
    """
    out = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        if e["type"] == "extra_forbidden":
            out.append((key, "unknown key"))
            continue
        msg = e["msg"].removeprefix("Value error, ")
        shown = "" if e["type"] == "missing" or len(repr(e.get("input"))) > 120 else f" (got {e.get('input')!r})"
        out.append((key, msg + shown))
    return out

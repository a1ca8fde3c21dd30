"""User-given names that become file or folder names, or lines of files: one rule for all of them.

Benchmark names and judge labels of `bon compare`, `bon judge --label`, a run's generator name
and `bon export --name` all end up as path components (and in report lines), so a name that
leaves its folder (``..``, ``a/b``), hides (``.x``), reads as an option (``-x``) or breaks a line
is refused where it enters, naming what it was given as.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from bon.core.errors import ConfigError

NAME_RULE = "1 to 100 letters, digits, '.', '_', '-' or '+', not starting with '.' or '-'"
_NAME = re.compile(r"(?![.-])[\w.+-]{1,100}")


def name_problem(value: object) -> str | None:
    """Why ``value`` cannot be a name (None: it can)."""
    if isinstance(value, str) and _NAME.fullmatch(value):
        return None
    return f"{value!r} is not a usable name: it becomes a file or folder name, so it is {NAME_RULE}"


def check_name(value: str, what: str) -> str:
    """``value`` when it is a usable name; a `ConfigError` naming ``what`` (e.g. "--label") otherwise."""
    problem = name_problem(value)
    if problem:
        raise ConfigError(f"{what} {problem}")
    return value


def _validated(value: str) -> str:
    problem = name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Name = Annotated[str, AfterValidator(_validated)]  # a config field holding such a name

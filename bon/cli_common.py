"""What the CLI modules share: consoles, the user-error boundary, option parsing."""

from __future__ import annotations

import contextlib
from typing import Iterator

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or a missing resource: one red line, exit 2, no traceback."""
    from bon.config import ConfigError
    from bon.engines.base import EngineError
    from bon.executors import ExecutorError
    from bon.io import DataFileError
    from bon.models import ModelLoadError
    from bon.prompts import PromptSourceError
    from bon.registry import UnknownNameError
    from bon.rundir import RunDirError
    from bon.selection import TieBreakError
    from bon.tokens import ContextLengthError, PromptFormatError
    from eval.export import ExportError

    return (ConfigError, ExecutorError, DataFileError, ModelLoadError, PromptSourceError, UnknownNameError,
            RunDirError, TieBreakError, ExportError, ContextLengthError, PromptFormatError, EngineError)


@contextlib.contextmanager
def fail_clearly() -> Iterator[None]:
    try:
        yield
    except user_errors() as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def options_from(assignments: list[str] | None) -> dict:
    """Judge options from ``key=value`` strings (values parsed as YAML)."""
    from bon.config import apply_override

    options: dict = {}
    for a in assignments or []:
        apply_override(options, a)
    return options

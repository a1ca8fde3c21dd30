"""What the CLI modules share: consoles, the user-error boundary, option parsing."""

from __future__ import annotations

import contextlib
import errno
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bon.core.errors import BonError

# No markup: paths, instructions, judge names and messages are user text ("[/]" in one would crash rich);
# the few styled words go through `tagged`.
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def show(table: Table) -> None:
    """A table under its title, the title a line of its own wrapped to the terminal (rich wraps a table's title
    to the table's width, which breaks a long title over lines beside a narrow table)."""
    title, table.title = table.title, None
    if title:
        console.print(title, highlight=False)
    try:
        console.print(table)
    finally:
        table.title = title  # the caller's table is left as it was given


def tagged(tag: str, style: str, text: object) -> Text:
    """``tag`` in ``style``, then ``text`` verbatim."""
    return Text.assemble((tag, style), " ", str(text))


_OS_HINTS = {
    errno.ENOSPC: (
        "the disk is full: everything written so far is kept; free space and rerun the same command to resume"
    ),
    errno.EDQUOT: "the disk quota is used up: everything written so far is kept; free space and rerun to resume",
    errno.EFBIG: "a file size limit was hit: everything written so far is kept; raise the limit and rerun to resume",
    errno.EROFS: "the file system is read-only: choose a writable location (e.g. --set output_dir=...)",
    errno.EACCES: "permission denied: choose a location you can write to",
    errno.EEXIST: "a file stands where a directory is needed: choose another output directory",
    errno.ENOTDIR: "a file stands where a directory is needed: choose another output directory",
    errno.EISDIR: "a directory was given where a file is needed",
}


def os_error_message(e: OSError) -> str:
    """One line for an operating-system error: the file, what happened, and what to do."""
    where = f"{e.filename}: " if e.filename else ""
    hint = _OS_HINTS.get(e.errno) if e.errno is not None else None
    return f"{where}{e.strerror or e}" + (f" ({hint})" if hint else "")


def user_error(e: BaseException) -> str | None:
    """The one line for an exception user input or the machine can cause; None for anything else (a bug)."""
    if isinstance(e, BonError):  # every error user input can cause derives from it
        return str(e)
    if isinstance(e, OSError):  # the machine said no (disk full, read-only, a file in the way)
        return os_error_message(e)
    from pydantic import ValidationError  # pydantic is loaded by then: configs are pydantic models

    if isinstance(e, ValidationError):  # a model built from user input outside `problems()`: still one line
        from bon.core.errors import problems

        return f"invalid {e.title}: " + "; ".join(f"{key}: {what}" for key, what in problems(e))
    return None


def interrupted(writes: Any = None) -> str:
    """The line for Ctrl-C: what is kept (records are appended as they are made) and the command that resumes."""
    kept = "everything finished so far is kept"
    target = writes() if callable(writes) else writes
    path = Path(target) if target is not None else None
    if path is not None:
        counts = [
            f"{sum(1 for _ in open(path / name, 'rb'))} {name.removesuffix('s.jsonl')}s"
            for name in ("candidates.jsonl", "judgements.jsonl", "selections.jsonl")
            if (path / name).is_file()
        ]
        kept = f"{', '.join(counts)} kept in {path}" if counts else f"everything finished so far is kept in {path}"
    return f"{kept}; rerun `{shlex.join(invoked())}` to resume"


def invoked() -> list[str]:
    """The command line as the user typed it, runnable as printed: ``.venv/bin/bon run ...`` (argv[0] as given, not
    a bare ``bon`` a fresh clone has not on PATH), or ``.venv/bin/python -m bon run ...``."""
    if sys.argv[0].endswith("__main__.py"):  # python -m bon: the interpreter and -m as typed
        original = list(sys.orig_argv)
        if "-m" in original:
            cut = original.index("-m") + 2
            return original[:cut] + sys.argv[1:]
        return [sys.executable, "-m", "bon", *sys.argv[1:]]
    return list(sys.argv)


def say_stopped(e: BaseException, writes: Any = None) -> int:
    """Print the one line for a user error (exit code 2) or Ctrl-C (130, naming what ``writes`` keeps)."""
    if isinstance(e, KeyboardInterrupt):
        err_console.print(tagged("interrupted:", "bold yellow", interrupted(writes)), highlight=False, soft_wrap=True)
        return 130
    err_console.print(tagged("error:", "bold red", user_error(e)), highlight=False, soft_wrap=True)
    return 2


@contextlib.contextmanager
def fail_clearly(writes: Any = None) -> Iterator[None]:
    """One line and exit 2 for a user error; one line and exit 130 for Ctrl-C, naming what ``writes`` (a
    directory, or a callable giving it) keeps and the command that resumes."""
    try:
        yield
    except (BonError, OSError, KeyboardInterrupt) as e:
        raise typer.Exit(say_stopped(e, writes)) from None
    except ValueError as e:  # pydantic's ValidationError is one; any other ValueError is a bug, shown whole
        if user_error(e) is None:
            raise
        raise typer.Exit(say_stopped(e, writes)) from None


class BonApp(typer.Typer):
    """The command line; whatever a command leaves outside its `fail_clearly` block still ends in one line."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except (BonError, OSError, KeyboardInterrupt) as e:
            sys.exit(say_stopped(e))
        except ValueError as e:
            if user_error(e) is None:
                raise
            sys.exit(say_stopped(e))


def load(path: Any, overrides: list[str] | None, model: Any = None) -> Any:
    """`load_config`, printing what the overrides changed beyond their own keys (a judge's options dropped)."""
    from bon.core.config import RunConfig, load_config

    notes: list[str] = []
    cfg = load_config(path, overrides, model or RunConfig, notes)
    for note in notes:
        err_console.print(tagged("note:", "yellow", note), highlight=False, soft_wrap=True)
    return cfg


def options_from(assignments: list[str] | None) -> dict:
    """Judge options from ``key=value`` strings (values parsed as YAML)."""
    from bon.core.config import apply_override

    options: dict = {}
    for a in assignments or []:
        apply_override(options, a)
    return options

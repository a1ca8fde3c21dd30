"""mkdocs hook: the CLI reference page is generated from the `bon` commands themselves (their typer/click
definitions: help, usage, arguments and options with types and defaults), so it cannot drift from the code."""

from __future__ import annotations

import re
from typing import Any

CLI = "<!-- bon-cli-reference -->"
CONFIG = "<!-- bon-config-reference -->"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    return "`" + " ".join(text.split()) + "`"  # Python-Markdown's tables keep a | inside backticks


def _type(annotation: Any) -> str:
    """A field's type as a user writes it in YAML terms: validators dropped, unions and literals spelled out."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _subcommands(group: Any, ctx: Any, path: str, out: list[str]) -> None:
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        if sub is not None and not sub.hidden:
            _command(sub, f"{path} {name}", sub.make_context(name, [], parent=ctx, resilient_parsing=True), out)


def _command(cmd: Any, path: str, ctx: Any, out: list[str]) -> None:
    from typer.core import TyperGroup

    out.append(f"{'#' * min(4, path.count(' ') + 2)} `{path}`\n")
    if cmd.help:
        out.append(cmd.help.strip() + "\n")
    if isinstance(cmd, TyperGroup):
        _subcommands(cmd, ctx, path, out)
        return
    usage = " ".join(re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), p) for p in cmd.collect_usage_pieces(ctx))
    out.append(f"```\nUsage: {path} {usage}\n```\n")
    rows = []
    for param in cmd.get_params(ctx):
        record = None if param.hidden or param.name == "help" else param.get_help_record(ctx)
        if record is not None:
            names, what = record
            rows.append(f"| {_code(names)} | {_cell(what)} |")
    if rows:
        out += ["| name | what |", "|---|---|", *rows, ""]


def cli_reference() -> str:
    """Markdown for every `bon` command, in the order `bon --help` lists them."""
    import typer

    from bon.cli import app

    root = typer.main.get_command(app)
    out: list[str] = []
    _subcommands(root, root.make_context("bon", [], resilient_parsing=True), "bon", out)
    return "\n".join(out)


def _fields(model: Any, prefix: str, out: list[str]) -> None:
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = field.annotation if isinstance(field.annotation, type) else None
        if nested is not None and issubclass(nested, BaseModel):
            _fields(nested, f"{key}.", out)
            continue
        default = "required" if field.is_required() else _code(repr(field.get_default(call_default_factory=True)))
        out.append(f"| `{key}` | {_code(_type(field.annotation))} | {default} | {_cell(field.description or '')} |")


def config_reference() -> str:
    """A table of every key of a run config (`bon.RunConfig`), nested keys dotted, from the pydantic models."""
    from bon.core.config import RunConfig

    out = ["| key | type | default | what |", "|---|---|---|---|"]
    _fields(RunConfig, "", out)
    return "\n".join(out) + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if CLI in markdown:
        markdown = markdown.replace(CLI, cli_reference())
    if CONFIG in markdown:
        markdown = markdown.replace(CONFIG, config_reference())
    return markdown

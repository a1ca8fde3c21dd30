"""Policy prompt formats: the tokenizer's chat template, a named format, or an explicit template.

Many checkpoints users rerank ship no chat template (WizardLM-13B-V1.2 is prompted in the Vicuna
v1.1 format); the named formats are data (`bon/data/prompt_formats.json`). A format with an
``exchange`` renders earlier turns of a conversation at its ``{history}`` field, as FastChat's
conversation templates do (vicuna_v1.1: ``USER: q ASSISTANT: a</s>``); the others take one turn.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from bon.core.errors import BonError

CHAT = "chat"  # the tokenizer's own chat template
FIELDS = {"instruction", "system", "history"}


class PromptFormatError(BonError, ValueError):
    """A prompt cannot be put in a model's format or tokens (no chat template, a conversation in a one-turn
    format, no single-token digits). The message says what to set."""


@dataclass(frozen=True)
class PromptFormat:
    name: str
    template: str  # str.format template with {instruction} and optionally {system} and {history}
    system: str  # the default system text for {system}
    exchange: str = ""  # one earlier turn at {history}, with {user} and {assistant}; "" = one-turn format


@lru_cache(maxsize=1)
def named_formats() -> dict[str, PromptFormat]:
    data = json.loads(resources.files("bon").joinpath("data", "prompt_formats.json").read_text(encoding="utf-8"))
    return {name: PromptFormat(name, d["template"], d["system"], d.get("exchange", "")) for name, d in data.items()}


def template_fields(template: str) -> set[str]:
    """The replacement fields of a template; a malformed template raises ValueError."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def check_format(value: str, system_prompt: str | None) -> str:
    """``value`` if it is chat, a named format, or a template with {instruction}; else a ValueError saying which."""
    if value == CHAT or value in named_formats():
        fmt = None if value == CHAT else named_formats()[value]
    else:
        try:
            fields = template_fields(value)
        except ValueError as e:
            raise ValueError(
                f"not a valid template ({e}); use 'chat', one of "
                f"{', '.join(named_formats())}, or a template with {{instruction}}"
            ) from None
        if "instruction" not in fields or fields - FIELDS:
            raise ValueError(
                f"expected 'chat', a named format ({', '.join(named_formats())}) or a template whose fields are "
                f"{{instruction}} and optionally {{system}}; found fields {sorted(fields)}"
            )
        fmt = PromptFormat("custom", value, "")
    if fmt is not None and system_prompt and "system" not in template_fields(fmt.template):
        raise ValueError(f"format {value!r} has no {{system}} field, so system_prompt cannot be used with it")
    return value


def takes_conversations(value: str) -> bool:
    """Whether prompts with earlier turns can be written in format ``value``."""
    fmt = named_formats().get(value)
    return value == CHAT or (fmt is not None and bool(fmt.exchange))


def conversation_formats() -> list[str]:
    return [CHAT] + [name for name in named_formats() if takes_conversations(name)]


def render(value: str, instruction: str, system_prompt: str | None, history: Sequence[Any] = ()) -> str:
    """The prompt text of a non-chat format (``value`` already checked by `check_format`).

    ``history`` is the conversation before ``instruction`` (`bon.core.records.Message`s): a system
    message, then user/assistant pairs.
    """
    fmt = named_formats().get(value) or PromptFormat("custom", value, "")
    turns = [m for m in history if m.role != "system"]
    system = next((m.content for m in history if m.role == "system"), system_prompt)
    system = fmt.system if system is None else system
    if turns and not fmt.exchange:
        raise PromptFormatError(
            f"prompt format {value if value in named_formats() else 'custom'!r} takes one turn, and this prompt "
            f"continues a conversation; use one of {', '.join(conversation_formats())}"
        )
    roles = [m.role for m in turns]
    if roles != ["user", "assistant"] * (len(turns) // 2):
        raise PromptFormatError(f"a conversation's earlier turns must alternate user, assistant; found {roles}")
    past = "".join(fmt.exchange.format(user=u.content, assistant=a.content) for u, a in zip(turns[::2], turns[1::2]))
    fields = {"instruction": instruction, "system": system, "history": past}
    return fmt.template.format(**{k: v for k, v in fields.items() if k in template_fields(fmt.template)})

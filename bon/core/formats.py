"""Policy prompt formats: the tokenizer's chat template, a named format, or an explicit template.

Many checkpoints users rerank ship no chat template (WizardLM-13B-V1.2 is prompted in the Vicuna
v1.1 format); the named formats are data (`bon/data/prompt_formats.json`).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

CHAT = "chat"  # the tokenizer's own chat template
FIELDS = {"instruction", "system"}


@dataclass(frozen=True)
class PromptFormat:
    name: str
    template: str  # str.format template with {instruction} and optionally {system}
    system: str  # the default system text for {system}


@lru_cache(maxsize=1)
def named_formats() -> dict[str, PromptFormat]:
    data = json.loads(resources.files("bon").joinpath("data", "prompt_formats.json").read_text(encoding="utf-8"))
    return {name: PromptFormat(name, d["template"], d["system"]) for name, d in data.items()}


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


def render(value: str, instruction: str, system_prompt: str | None) -> str:
    """The prompt text of a non-chat format (``value`` already checked by `check_format`)."""
    fmt = named_formats().get(value) or PromptFormat("custom", value, "")
    system = fmt.system if system_prompt is None else system_prompt
    return fmt.template.format(instruction=instruction, system=system)

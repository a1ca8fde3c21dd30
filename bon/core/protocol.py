"""What a judge is: the `Judge` protocol, the class the registry holds (`JudgeClass`) and its `Declaration`.

Apart from the registry (`bon.core.judging`), so that a judge from outside bon (`bon.core.external`) is checked
against the same protocol the registry hands out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel

from bon.core.records import Candidate, Judgement, Prompt

# How a judge sees a prompt that continues a conversation (its declaration's ``conversation``)
ConversationMode = Literal["single", "context", "chat", "answer", "native"]
CONVERSATION_MODES: dict[str, str] = {
    "single": "refused (it judges one instruction)",
    "context": "earlier turns written into its instruction as context",
    "chat": "the whole conversation through the judge model's chat template",
    "answer": "reads the answers only",
    "native": "its own multi-turn protocol",
}


@dataclass(frozen=True)
class Declaration:
    """What a judge class says of itself: read by `bon judges list`, preflight, the run summary and the
    conversation checks (every judge class declares one; mypy checks them against `JudgeClass`)."""

    scale: str  # what a score means ("expected rating 0-9"), shown beside scores
    conversation: ConversationMode = "single"  # how it sees a conversation (CONVERSATION_MODES)
    single_turn_reason: str = "it judges one instruction"  # why it refuses conversations, where it does
    cpu_default: str | None = None  # the model `bon judges list` names; None: from its Options' `model` default
    policy_defaults: tuple[str, ...] = ()  # option keys `bon judge` fills from the run's policy when unset
    free: bool = False  # a judgement costs nothing next to decoding (no model, or a small encoder)


class Judge(Protocol):
    """What scores candidates: every judge bon ships, and what an outside judge is wrapped into (`bon.core.external`:
    a class of yours needs only ``name`` and ``score`` returning one float, None or `Judgement` per candidate; a
    TRL-style reward function ``f(prompts, completions, **kwargs)`` is one too)."""

    @property
    def name(self) -> str:
        """The name judgements carry."""
        ...

    @property
    def summary(self) -> str:
        """One line for `bon judges list`."""
        ...

    @property
    def needs_reference(self) -> bool:
        """Whether it scores only prompts that carry a gold reference."""
        ...

    @property
    def hub_id(self) -> str | None:
        """The weights GPU users load, where the judge has any."""
        ...

    @property
    def declaration(self) -> Declaration:
        """Its class's declaration."""
        ...

    @property
    def options(self) -> BaseModel:
        """Its validated options (its class's ``Options``)."""
        ...

    def describe(self) -> str:
        """One honest line on what is scoring (which weights, which template)."""
        ...

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]:
        """One judgement per candidate, in the candidates' order; failures are flagged, score None."""
        ...


@runtime_checkable
class RefusesPrompts(Protocol):
    """A judge that turns down some prompts before any work (MT-Bench: a category without its references)."""

    def refuse_prompt(self, prompt: Prompt) -> str | None:
        """Why ``prompt`` cannot be judged, or None."""
        ...


@runtime_checkable
class Compares(Protocol):
    """A judge that also compares two responses directly (Auto-J pairwise); `bon compare` asks it both orders."""

    def compare(self, items: Sequence[tuple[str, str, str]]) -> list[Any]:
        """One verdict (``winner``, ``flag``, ``raw``) per (instruction, shown first, shown second) triple."""
        ...


class PairwiseJudge(Judge, Compares, Protocol):
    """A `Judge` that `Compares`."""


class JudgeClass(Protocol):
    """What the registry holds: a judge class with its options model and its declaration."""

    @property
    def Options(self) -> type[BaseModel]: ...  # noqa: N802  (the class attribute every judge class names so)

    @property
    def summary(self) -> str: ...

    @property
    def declaration(self) -> Declaration: ...

    @property
    def needs_reference(self) -> bool: ...

    @property
    def hub_id(self) -> str | None: ...

    def __call__(self, options: Any = ..., /) -> Judge: ...

"""What model judges share: prompts per candidate, prompt templates as data files, an engine, context fitting."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from bon.core.records import Candidate, Prompt
from bon.engines.tokens import ContextLengthError, effective_context, overflow_message


def prompts_by_id(prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Prompt]:
    """The prompt of each candidate; a candidate whose prompt is missing is an error."""
    table = {p.id: p for p in prompts}
    missing = sorted({c.prompt_id for c in candidates} - set(table))
    if missing:
        raise KeyError(f"candidates refer to prompts not given to the judge: {', '.join(missing[:5])}")
    return [table[c.prompt_id] for c in candidates]


def read_prompt_template(name: str) -> str:
    """A judge prompt kept as a data file in judges/prompts/."""
    return resources.files("bon.judges").joinpath("prompts", name).read_text(encoding="utf-8")


def instruction_in_context(prompt: Prompt) -> str:
    """A single-turn judge's instruction: the turn itself, or, in a conversation, the earlier turns written
    before it (judges/prompts/conversation_context.txt), so the judge sees what "your previous answer" means."""
    if not prompt.history:
        return prompt.instruction
    lines = [f"{m.role.capitalize()}: {m.content}" for m in prompt.history]
    return (
        read_prompt_template("conversation_context.txt")
        .rstrip("\n")
        .format(history="\n\n".join(lines), instruction=prompt.instruction)
    )


class UsesEngine:
    """For model judges: ``self.engine`` is the engine of ``self.options`` (a ModelConfig), loaded on
    first use and shared with every policy or judge on the same weights in this process."""

    options: Any  # the judge's Options (a ModelConfig)
    name: str
    _engine: Any = None

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from bon.engines import load_engine

            self._engine = load_engine(self.options)
        return self._engine


class PromptJudge(UsesEngine):
    """A model judge that reads one prompt per candidate, kept within the judge model's context.

    Subclasses build the prompt (`prompt_ids`) and say how many tokens they generate after it;
    ``options.on_overflow`` decides what a prompt that does not fit becomes: an error listing the
    candidates, the answer truncated inside the prompt (flagged), or a skipped judgement (flagged).
    """

    generates: int = 1  # tokens generated after the prompt

    def prompt_ids(self, prompt: Prompt, answer: str) -> list[int]:
        raise NotImplementedError

    @property
    def context(self) -> int | None:
        """Tokens the judge model may hold: its engine's, or less where the options say so."""
        return effective_context(self.options, self.engine.context)

    def room(self) -> int | None:
        """Prompt tokens that fit the judge's context with its generation (None: no known limit)."""
        return None if self.context is None else self.context - self.generates

    def fit(self, pairs: Sequence[tuple[Prompt, Candidate]]) -> list[tuple[list[int] | None, str | None]]:
        """(prompt ids, flag) per (prompt, candidate); ids None when skipped."""
        room = self.room()
        ids = [self.prompt_ids(p, c.text) for p, c in pairs]
        out: list[tuple[list[int] | None, str | None]] = [(i, None) for i in ids]
        if room is None:
            return out
        over = [i for i, row in enumerate(ids) if len(row) > room]
        if over and self.options.on_overflow == "error":
            rows = [(f"{pairs[i][1].prompt_id}#{pairs[i][1].index}", len(ids[i])) for i in over]
            raise ContextLengthError(
                overflow_message(f"{self.name} judge prompts are", rows, room, self.context, "the judge's on_overflow")
            )
        for i in over:
            prompt, cand = pairs[i]
            if self.options.on_overflow == "skip":
                out[i] = (
                    None,
                    f"judge prompt of {len(ids[i])} tokens does not fit {room} (context {self.context}): skipped",
                )
            else:
                out[i] = self._truncated(prompt, cand, len(ids[i]) - room, room)
        return out

    def _truncated(self, prompt: Prompt, cand: Candidate, excess: int, room: int) -> tuple[list[int], str]:
        """The prompt with the answer cut from its end until it fits (decoding can shift a token or two)."""
        answer = self.engine.tokenizer.encode(cand.text, add_special_tokens=False)
        keep = len(answer) - excess
        while keep >= 0:
            ids = self.prompt_ids(prompt, self.engine.tokenizer.decode(answer[:keep]))
            if len(ids) <= room:
                return (
                    ids,
                    f"answer truncated from {len(answer)} to {keep} tokens to fit the judge's context ({self.context})",
                )
            keep -= max(1, len(ids) - room)
        raise ContextLengthError(
            f"{self.name} judge prompt for {cand.prompt_id} does not fit {room} tokens even with an empty answer"
        )

    def on_tokenizer(self, tokens: Any) -> PromptJudge:
        return type(self)(self.options, engine=tokens)  # type: ignore[call-arg]

    def judges(self, prompt: Prompt) -> bool:
        return True

    def limits(self) -> tuple[int | None, int]:
        return self.context, self.generates

    def preflight_rows(self) -> list[tuple[str, str]]:
        fmt = getattr(self.options, "prompt_format", None) or getattr(self.options, "wrapper", None)
        return [("judge prompt format", f"{self.name}: {fmt}")]

    def bound(self, prompt: Prompt, answer_tokens: int) -> int:
        """Tokens the judge prompt of ``prompt`` takes with an answer of ``answer_tokens``, plus generation."""
        return len(self.prompt_ids(prompt, "")) + answer_tokens + self.generates

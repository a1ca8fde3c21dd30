"""Length baseline: the longest candidate wins (a strong, misleading baseline on AlpacaEval)."""

from __future__ import annotations

from collections.abc import Sequence

from bon.core.config import Strict
from bon.core.judging import Declaration
from bon.core.records import Candidate, Judgement, Prompt


class LengthOptions(Strict):
    """No options."""


class LengthJudge:
    Options = LengthOptions
    name = "length"
    summary = "score = number of characters of the candidate; needs no model"
    declaration = Declaration(
        scale="characters",
        conversation="answer",
        free=True,
    )
    needs_reference = False
    hub_id = None

    def __init__(self, options: LengthOptions | None = None):
        self.options = options or LengthOptions()

    def describe(self) -> str:
        return "length baseline (characters)"

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]:
        return [Judgement(c.prompt_id, c.index, self.name, float(len(c.text))) for c in candidates]

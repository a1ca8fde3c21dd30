"""The judge protocol: score a batch of candidates, one `Judgement` each, in order."""

from __future__ import annotations

from importlib import resources
from typing import Protocol, Sequence

from bon.records import Candidate, Judgement, Prompt


class Judge(Protocol):
    name: str  # the name judgements carry
    summary: str  # one line for `bon judges list`
    needs_reference: bool  # scores only prompts that carry a gold reference
    hub_id: str | None  # the weights GPU users load, where the judge has any

    def describe(self) -> str:
        """One honest line on what is scoring (which weights, which template)."""

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]:
        """One judgement per candidate, in the candidates' order; failures are flagged, score None."""


class PairwiseJudge(Judge, Protocol):
    """A judge that also compares two responses directly (Auto-J pairwise); `bon compare` asks it both orders."""

    def compare(self, items: Sequence[tuple[str, str, str]]) -> list:
        """One `judges.pairwise.PairVerdict` per (instruction, shown first, shown second) triple."""


def prompts_by_id(prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Prompt]:
    """The prompt of each candidate; a candidate whose prompt is missing is an error."""
    table = {p.id: p for p in prompts}
    missing = sorted({c.prompt_id for c in candidates} - set(table))
    if missing:
        raise KeyError(f"candidates refer to prompts not given to the judge: {', '.join(missing[:5])}")
    return [table[c.prompt_id] for c in candidates]


def read_prompt_template(name: str) -> str:
    """A judge prompt kept as a data file in judges/prompts/."""
    return resources.files("judges").joinpath("prompts", name).read_text(encoding="utf-8")


class UsesEngine:
    """For model judges: ``self.engine`` is the engine of ``self.options`` (a ModelConfig), loaded on
    first use and shared with every policy or judge on the same weights in this process."""

    _engine = None

    @property
    def engine(self):
        if self._engine is None:
            from bon.engines import load_engine

            self._engine = load_engine(self.options)
        return self._engine

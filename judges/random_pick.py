"""Random baseline: a seeded uniform score, so best-of-N picks a uniformly random candidate."""

from __future__ import annotations

import random
from collections.abc import Sequence

from pydantic import Field

from bon.core.config import Strict
from bon.core.judging import Declaration
from bon.core.records import Candidate, Judgement, Prompt
from bon.engines.contract import derive_seed


class RandomOptions(Strict):
    seed: int = Field(0, description="seed; a candidate's score depends only on it, its prompt id and index")


class RandomJudge:
    Options = RandomOptions
    name = "random"
    summary = "score = seeded uniform draw in [0, 1); needs no model"
    declaration = Declaration(
        scale="uniform draw, 0 to 1",
        conversation="answer",
        free=True,
    )
    needs_reference = False
    hub_id = None

    def __init__(self, options: RandomOptions | None = None):
        self.options = options or RandomOptions()

    def describe(self) -> str:
        return f"random baseline (seed {self.options.seed})"

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]:
        return [
            Judgement(
                c.prompt_id,
                c.index,
                self.name,
                random.Random(derive_seed(self.options.seed, c.prompt_id, c.index)).random(),
            )
            for c in candidates
        ]

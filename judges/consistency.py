"""Consistency baseline (minimum Bayes risk): a candidate's mean similarity to the other N-1."""

from __future__ import annotations

from collections.abc import Sequence

from bon.core.judging import Declaration
from bon.core.records import Candidate, Judgement, Prompt
from bon.judges.cosine import EmbedderOptions, cosine, load_embedder


class ConsistencyJudge:
    Options = EmbedderOptions
    name = "consistency"
    summary = "mean embedding similarity to the prompt's other candidates (MBR); needs N >= 2"
    declaration = Declaration(
        scale="mean cosine similarity, -1 to 1",
        conversation="answer",  # compares a turn's candidates with each other
        free=True,  # a 22M-parameter encoder
    )
    needs_reference = False
    hub_id = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(self, options: EmbedderOptions | None = None):
        self.options = options or EmbedderOptions()

    def describe(self) -> str:
        return f"mean similarity to the other candidates ({self.options.model.removeprefix('embedded:')})"

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]:
        vectors = load_embedder(self.options).embed([c.text for c in candidates], self.options.batch_size)
        groups: dict[str, list[int]] = {}
        for i, c in enumerate(candidates):
            groups.setdefault(c.prompt_id, []).append(i)
        out = []
        for i, c in enumerate(candidates):
            others = [j for j in groups[c.prompt_id] if j != i]
            if not others:
                out.append(Judgement(c.prompt_id, c.index, self.name, None, flag="no other candidate to compare with"))
                continue
            mean = sum(cosine(vectors[i], vectors[j]) for j in others) / len(others)
            out.append(Judgement(c.prompt_id, c.index, self.name, mean, details={"others": len(others)}))
        return out

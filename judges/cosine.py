"""Cosine baseline: similarity of the candidate's and the reference's sentence embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from bon.core.config import Strict
from bon.core.judging import Declaration
from bon.core.records import Candidate, Judgement, Prompt
from bon.judges.model_judge import prompts_by_id

EMBEDDER = "embedded:all-MiniLM-L6-v2"


class EmbedderOptions(Strict):
    model: str = Field(
        EMBEDDER, description="sentence-embedding model: embedded:all-MiniLM-L6-v2, a local directory or hub id"
    )
    device: str = Field("auto", description="auto, cpu or cuda")
    batch_size: int = Field(32, ge=1, description="texts per forward pass")


class CosineOptions(EmbedderOptions):
    against: Literal["reference", "instruction"] = Field(
        "reference",
        description=(
            "reference = similarity to the gold answer; instruction "
            "= relevance to the question (data without references)"
        ),
    )


def load_embedder(options: EmbedderOptions):
    from bon.engines.hf import load_embedder as load
    from bon.engines.models import embedded_path

    prefix = "embedded:"
    path = str(embedded_path(options.model[len(prefix) :])) if options.model.startswith(prefix) else options.model
    return load(path, options.device)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine of two L2-normalised vectors."""
    return float(sum(x * y for x, y in zip(a, b)))


class CosineJudge:
    Options = CosineOptions
    name = "cosine"
    summary = (
        "cosine similarity of candidate and reference embeddings, or of candidate and instruction "
        "with against=instruction (all-MiniLM-L6-v2, embedded)"
    )
    declaration = Declaration(
        scale="cosine similarity, -1 to 1",
        single_turn_reason="it embeds an answer against one instruction or reference, blind to the earlier turns",
        free=True,  # a 22M-parameter encoder
    )
    needs_reference = True  # per instance: false with against=instruction
    hub_id = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(self, options: CosineOptions | None = None):
        self.options = options or CosineOptions()
        self.needs_reference = self.options.against == "reference"

    def describe(self) -> str:
        return f"cosine similarity to the {self.options.against} ({self.options.model.removeprefix('embedded:')})"

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]:
        targets = prompts_by_id(prompts, candidates)
        refs = [p.reference if self.needs_reference else p.instruction for p in targets]
        with_ref = [i for i, r in enumerate(refs) if r]
        out: list[Judgement] = [
            Judgement(c.prompt_id, c.index, self.name, None, flag="the prompt has no reference") for c in candidates
        ]
        if with_ref:
            embedder = load_embedder(self.options)
            texts = [candidates[i].text for i in with_ref] + [refs[i] for i in with_ref]
            vectors = embedder.embed(texts, self.options.batch_size)
            k = len(with_ref)
            for slot, i in enumerate(with_ref):
                c = candidates[i]
                out[i] = Judgement(c.prompt_id, c.index, self.name, cosine(vectors[slot], vectors[k + slot]))
        return out

"""Perplexity baseline: the mean token log-probability of the candidate under a language model."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from bon.core.config import ModelConfig
from bon.core.judging import Declaration
from bon.core.records import Candidate, Judgement, Prompt
from bon.judges.model_judge import UsesEngine, prompts_by_id


class PPLOptions(ModelConfig):
    batch_size: int = Field(8, ge=1, description="sequences per forward pass (transformers)")


class PPLJudge(UsesEngine):
    Options = PPLOptions
    name = "ppl"
    summary = "mean token log-probability of the candidate given the prompt (chat template) under a model"
    declaration = Declaration(
        scale="mean token log-probability, at most 0",
        conversation="chat",  # the answer's log-probability after the whole conversation
    )
    needs_reference = False
    hub_id = None

    def __init__(self, options: PPLOptions | None = None, engine=None):
        self.options = options or PPLOptions()
        self._engine = engine

    def describe(self) -> str:
        return f"mean token log-probability under {self.options.model.removeprefix('embedded:')}"

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]:
        contexts = [self.engine.chat_ids(p.messages()) for p in prompts_by_id(prompts, candidates)]
        targets = [self.engine.tokenizer.encode(c.text, add_special_tokens=False) for c in candidates]
        keep = [i for i, t in enumerate(targets) if t]
        logprobs = self.engine.continuation_logprobs(
            [contexts[i] for i in keep], [targets[i] for i in keep], batch_size=self.options.batch_size
        )
        by_index = dict(zip(keep, logprobs))
        out = []
        for i, c in enumerate(candidates):
            if i not in by_index:
                out.append(Judgement(c.prompt_id, c.index, self.name, None, flag="empty candidate"))
                continue
            lps = by_index[i]
            out.append(Judgement(c.prompt_id, c.index, self.name, sum(lps) / len(lps), details={"tokens": len(lps)}))
        return out

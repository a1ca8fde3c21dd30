"""What the free confidence judges share: the policy's own distributions at the tokens it sampled.

The decode loop records, per candidate, the sums of its sampled tokens' log-probabilities, the
distributions' entropies and self-certainty's terms (`bon.engines.contract.Confidence`; fields of
candidates.jsonl). A judge reads them at no cost; a candidate without them (a run written before,
another engine, outputs bon did not sample) gets one teacher-forced pass of ``options.model`` over
its prompt (chat template) and its tokens, which computes the same sums.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from bon.core.config import ModelConfig
from bon.core.errors import ConfigError
from bon.core.judging import Declaration
from bon.core.records import Candidate, Judgement, Prompt
from bon.engines.contract import Confidence, MeasuresConfidence
from bon.judges.model_judge import UsesEngine, prompts_by_id


class ConfidenceOptions(ModelConfig):
    batch_size: int = Field(8, ge=1, description="sequences per teacher-forced pass (candidates without recorded sums)")


def free_declaration(scale: str) -> Declaration:
    """What each confidence judge declares: free, the answer after the whole conversation as the policy saw it, and
    `bon judge` teacher-forcing under the run's policy when a candidate lacks the sums."""
    return Declaration(scale=scale, conversation="chat", policy_defaults=("model",), free=True)


class ConfidenceJudge(UsesEngine):
    """A mean over a candidate's tokens of one of its `Confidence` sums (`total`; higher is better)."""

    Options = ConfidenceOptions
    needs_reference = False
    hub_id = None

    def total(self, confidence: Confidence) -> float:
        """The sum this judge averages, signed so that higher is better."""
        raise NotImplementedError

    def __init__(self, options: ConfidenceOptions | None = None, engine=None):
        self.options = options or ConfidenceOptions()
        self._engine = engine

    def describe(self) -> str:
        model = self.options.model.removeprefix("embedded:")
        return f"{self.name}, recorded while the policy decoded (else teacher-forced under {model})"

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]:
        sums: dict[int, tuple[Confidence, str]] = {}  # candidate -> (its sums, where they came from)
        forced = []
        for k, c in enumerate(candidates):
            recorded = Confidence.of(c)
            if recorded is not None:
                sums[k] = (recorded, "recorded")
            else:
                forced.append(k)
        if forced:
            if not isinstance(self.engine, MeasuresConfidence):
                raise ConfigError(
                    f"judge {self.name!r}: {len(forced)} candidates lack the confidence their policy records while it "
                    f"decodes, and backend {self.options.backend!r} cannot teacher-force the full distribution; "
                    "judge them with backend: transformers"
                )
            owners = prompts_by_id(prompts, [candidates[k] for k in forced])
            contexts = [self.engine.chat_ids(p.messages()) for p in owners]
            targets = [self._tokens(candidates[k]) for k in forced]
            measured = self.engine.continuation_confidence(contexts, targets, batch_size=self.options.batch_size)
            for k, m in zip(forced, measured):
                sums[k] = (m, "teacher-forced")
        out = []
        for k, c in enumerate(candidates):
            conf, source = sums[k]
            if conf.tokens == 0:
                out.append(Judgement(c.prompt_id, c.index, self.name, None, flag="empty candidate"))
                continue
            details = {"tokens": conf.tokens, "source": source}
            out.append(Judgement(c.prompt_id, c.index, self.name, self.total(conf) / conf.tokens, details=details))
        return out

    def _tokens(self, candidate: Candidate) -> list[int]:
        """The candidate's sampled tokens, or its text encoded (outputs bon did not sample)."""
        if candidate.token_ids is not None:
            return list(candidate.token_ids)
        return list(self.engine.tokenizer.encode(candidate.text, add_special_tokens=False))

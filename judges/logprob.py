"""Mean log-probability of a candidate's tokens under the policy that sampled them: the perplexity baseline of the
Self-J paper (the `ppl` judge) without its forward pass."""

from __future__ import annotations

from bon.engines.contract import Confidence
from bon.judges.confidence import ConfidenceJudge, free_declaration


class LogprobJudge(ConfidenceJudge):
    name = "logprob"
    summary = "mean log-probability of the candidate's tokens under the policy; free when the policy recorded it"
    declaration = free_declaration("mean token log-probability, at most 0")

    def total(self, confidence: Confidence) -> float:
        return confidence.logprob

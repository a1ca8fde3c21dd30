"""Mean log-probability of a candidate's tokens under the policy that sampled them: the perplexity baseline of the
Self-J paper (the `ppl` judge) without its forward pass."""

from __future__ import annotations

from bon.core.judging import Declaration
from bon.judges.confidence import ConfidenceJudge


class LogprobJudge(ConfidenceJudge):
    name = "logprob"
    summary = "mean log-probability of the candidate's tokens under the policy; free when the policy recorded it"
    declaration = Declaration(
        scale="mean token log-probability, at most 0",
        conversation="chat",  # the answer after the whole conversation, as the policy saw it
        policy_defaults=("model",),  # teacher-forced under the run's policy when a candidate lacks the sums
        free=True,
    )
    term = "logprob"

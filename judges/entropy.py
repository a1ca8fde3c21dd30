"""Negative mean entropy of the policy's next-token distributions over a candidate's tokens (higher: more certain)."""

from __future__ import annotations

from bon.core.judging import Declaration
from bon.judges.confidence import ConfidenceJudge


class EntropyJudge(ConfidenceJudge):
    name = "entropy"
    summary = "negative mean entropy of the policy's own distributions; free when the policy recorded it"
    declaration = Declaration(
        scale="negative mean entropy per token (nats), at most 0",
        conversation="chat",  # the answer after the whole conversation, as the policy saw it
        policy_defaults=("model",),  # teacher-forced under the run's policy when a candidate lacks the sums
        free=True,
    )
    term = "entropy"
    sign = -1.0

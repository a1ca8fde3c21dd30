"""Self-certainty (Kang, Zhao and Song, NeurIPS 2025): the mean over a candidate's tokens of KL(uniform || p), p the
policy's own next-token distribution; it grows with how peaked the policy was, and scales with N like a reward model."""

from __future__ import annotations

from bon.core.judging import Declaration
from bon.judges.confidence import ConfidenceJudge


class SelfCertaintyJudge(ConfidenceJudge):
    name = "self_certainty"
    summary = (
        "self-certainty: mean KL(uniform || p) of the policy's own distributions; free when the policy recorded it"
    )
    declaration = Declaration(
        scale="mean KL(uniform || p) per token, 0 or more",
        conversation="chat",  # the answer after the whole conversation, as the policy saw it
        policy_defaults=("model",),  # teacher-forced under the run's policy when a candidate lacks the sums
        free=True,
    )
    term = "certainty"

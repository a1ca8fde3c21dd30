"""Self-certainty (Kang, Zhao and Song, NeurIPS 2025): the mean over a candidate's tokens of KL(uniform || p), p the
policy's own next-token distribution; it grows with how peaked the policy was, and scales with N like a reward model."""

from __future__ import annotations

from bon.engines.contract import Confidence
from bon.judges.confidence import ConfidenceJudge, free_declaration


class SelfCertaintyJudge(ConfidenceJudge):
    name = "self_certainty"
    summary = (
        "self-certainty: mean KL(uniform || p) of the policy's own distributions; free when the policy recorded it"
    )
    declaration = free_declaration("mean KL(uniform || p) per token, 0 or more")

    def total(self, confidence: Confidence) -> float:
        return confidence.certainty

"""Negative mean entropy of the policy's next-token distributions over a candidate's tokens (higher: more certain)."""

from __future__ import annotations

from bon.engines.contract import Confidence
from bon.judges.confidence import ConfidenceJudge, free_declaration


class EntropyJudge(ConfidenceJudge):
    name = "entropy"
    summary = "negative mean entropy of the policy's own distributions; free when the policy recorded it"
    declaration = free_declaration("negative mean entropy per token (nats), at most 0")

    def total(self, confidence: Confidence) -> float:
        return -confidence.entropy

"""Ensembles: a weighted sum of member judges' scores, each z-scored within its prompt.

E.g. Self-J's label recipe `self_eval (with reference) + cosine`. A candidate that any member
fails to score gets no ensemble score (None, flagged with the member's name).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from bon.core.config import Strict
from bon.core.judging import Declaration, build_judge, nested_judge_options
from bon.core.records import Candidate, Judgement, Prompt
from bon.pipeline.selection import zscores


class Member(Strict):
    name: str = Field(description="a registered judge")
    options: dict[str, Any] = Field(default_factory=dict, description="its options")
    weight: float = Field(1.0, description="its weight in the sum")

    @field_validator("options")
    @classmethod
    def _member_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return nested_judge_options(info.data.get("name"), value)


class EnsembleOptions(Strict):
    members: list[Member] = Field(
        default_factory=lambda: [Member(name="self_eval", options={"reference": "always"}), Member(name="cosine")],
        min_length=1,
        description="the judges to combine (default: Self-J's label recipe)",
    )
    normalize: Literal["zscore", "none"] = Field("zscore", description="zscore = per prompt, before weighting")


class EnsembleJudge:
    Options = EnsembleOptions
    name = "ensemble"
    summary = "weighted sum of member judges, z-scored per prompt (default: self_eval with reference + cosine)"
    hub_id = None
    declaration = Declaration(
        scale="weighted sum of per-prompt z-scores",
        single_turn_reason="its members are not checked for conversations",
        cpu_default="its members'",
    )
    needs_reference = False  # per instance: true when a member needs one

    def __init__(self, options: EnsembleOptions | None = None):
        self.options = options or EnsembleOptions()
        self.members = [build_judge(m.name, m.options) for m in self.options.members]
        self.needs_reference = any(m.needs_reference for m in self.members)

    def describe(self) -> str:
        parts = " + ".join(f"{m.weight:g}·{m.name}" for m in self.options.members)
        return f"ensemble {parts} ({self.options.normalize} per prompt)"

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]:
        member_scores = [[j.score for j in judge.score(prompts, candidates)] for judge in self.members]
        groups: dict[str, list[int]] = {}
        for i, c in enumerate(candidates):
            groups.setdefault(c.prompt_id, []).append(i)
        total: list[float | None] = [0.0] * len(candidates)
        flags: list[str | None] = [None] * len(candidates)
        for member, scores in zip(self.options.members, member_scores):
            for idx in groups.values():
                ok = [(i, s) for i in idx if (s := scores[i]) is not None]
                values = [s for _, s in ok]
                normed = zscores(values) if self.options.normalize == "zscore" else values
                for (i, _), z in zip(ok, normed):
                    if (t := total[i]) is not None:
                        total[i] = t + member.weight * z
                for i in set(idx) - {i for i, _ in ok}:
                    total[i], flags[i] = None, f"member {member.name!r} could not score this candidate"
        return [
            Judgement(
                c.prompt_id,
                c.index,
                self.name,
                total[i],
                flag=flags[i],
                details={m.name: s[i] for m, s in zip(self.options.members, member_scores)},
            )
            for i, c in enumerate(candidates)
        ]

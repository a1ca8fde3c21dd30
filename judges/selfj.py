"""Self-J (Ye & Ng 2024): score = expected rating over the digit tokens 0-9 of a rating prompt.

The templates are the Self-J repository's `judge.py` ones, kept verbatim in judges/prompts/. The
released judge feeds the template as raw text (``prompt_format: raw``); ``chat`` wraps it in the
judge tokenizer's chat template instead. The digit ids come from the judge's own tokenizer, as the
model emits them after text (`bon.engines.tokens.digit_token_ids`: on Llama-2 exactly the repository's ids).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field

from bon.core.config import ModelConfig
from bon.core.judging import Declaration
from bon.core.records import Candidate, Judgement, Prompt
from bon.engines.tokens import digit_token_ids
from bon.judges.model_judge import PromptJudge, instruction_in_context, prompts_by_id, read_prompt_template

SELFJ_HUB_ID = "oceanpty/Self-J"  # the released Self-J-13B weights


class SelfJOptions(ModelConfig):
    prompt_format: Literal["raw", "chat"] = Field(
        "raw", description="raw = template text as the Self-J repo feeds it; chat = inside the judge's chat template"
    )
    reference: Literal["auto", "always", "never"] = Field(
        "auto", description="auto = reference-based template when the prompt has a reference"
    )
    batch_size: int = Field(8, ge=1, description="sequences per forward pass (transformers backend)")
    min_digit_mass: float = Field(
        0.05, ge=0.0, le=1.0, description="flag a judgement whose digits hold less of the next-token mass than this"
    )


def expected_score(
    logprobs: dict[int, float], digit_ids: Sequence[int]
) -> tuple[float | None, list[float | None], float]:
    """(score, renormalised digit probabilities, digit mass) from next-token logprobs.

    Digits the engine did not report (outside vLLM's top-k) get probability 0 in the
    renormalisation and None in the returned list; with no digit at all the score is None.
    """
    raw = [math.exp(logprobs[t]) if t in logprobs else None for t in digit_ids]
    mass = sum(p for p in raw if p is not None)
    if mass <= 0.0:
        return None, raw, 0.0
    probs = [None if p is None else p / mass for p in raw]
    return sum(d * p for d, p in enumerate(probs) if p is not None), probs, mass


class SelfJudge(PromptJudge):
    Options = SelfJOptions
    name = "selfj"
    summary = "Self-J expected digit rating (0-9) of a rating prompt, with or without reference"
    declaration = Declaration(
        scale="expected rating 0-9",
        conversation="context",  # earlier turns written into the instruction (`judges.base.instruction_in_context`)
    )
    needs_reference = False
    hub_id: ClassVar[str | None] = SELFJ_HUB_ID

    def __init__(self, options: SelfJOptions | None = None, engine=None):
        self.options = options or SelfJOptions()
        self._engine = engine
        self._digits: list[int] | None = None
        self.templates = {
            True: read_prompt_template("selfj_with_reference.txt"),
            False: read_prompt_template("selfj_without_reference.txt"),
        }

    @property
    def digit_ids(self) -> list[int]:
        if self._digits is None:
            self._digits = digit_token_ids(self.engine.tokenizer)
        return self._digits

    def judges(self, prompt: Prompt) -> bool:
        return not (self.options.reference == "always" and prompt.reference is None)

    def preflight_rows(self) -> list[tuple[str, str]]:
        # a tokenizer that cannot rate fails here, before any sampling
        return [*super().preflight_rows(), ("Self-J digit ids", str(self.digit_ids))]

    def describe(self) -> str:
        weights = self.options.model.removeprefix("embedded:")
        honest = "" if "self-j" in weights.lower() else f"; NOT the trained Self-J weights ({SELFJ_HUB_ID})"
        return f"Self-J template on {weights} ({self.options.prompt_format} prompt){honest}"

    def build_prompt(self, prompt: Prompt, answer: str) -> str:
        use_ref = self.options.reference != "never" and prompt.reference is not None
        if self.options.reference == "always" and prompt.reference is None:
            raise ValueError(f"prompt {prompt.id!r} has no reference but the selfj judge has reference: always")
        return self.templates[use_ref].format(
            instruction=instruction_in_context(prompt), reference=prompt.reference, input=answer
        )

    def prompt_ids(self, prompt: Prompt, answer: str) -> list[int]:
        text = self.build_prompt(prompt, answer)
        if self.options.prompt_format == "chat":
            return self.engine.chat_ids([{"role": "user", "content": text}], fix="set the judge's prompt_format to raw")
        return self.engine.text_ids(text)

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]:
        owners = prompts_by_id(prompts, candidates)
        if self.options.reference == "always":  # no reference, no reference-based rating
            usable = [i for i, p in enumerate(owners) if p.reference is not None]
        else:
            usable = list(range(len(candidates)))
        fitted = dict(zip(usable, self.fit([(owners[i], candidates[i]) for i in usable])))
        scored_at = [i for i in usable if fitted[i][0] is not None]
        ids = [fitted[i][0] for i in scored_at]
        groups = [candidates[i].prompt_id for i in scored_at]  # a prompt's N judge prompts share their prefix
        scored = (
            self.engine.next_token_logprobs(ids, self.digit_ids, batch_size=self.options.batch_size, groups=groups)
            if ids
            else []
        )
        logprobs: dict[int, dict[int, float]] = dict(zip(scored_at, scored))
        out = []
        for k, c in enumerate(candidates):
            fit_flag = fitted[k][1] if k in fitted else "the prompt has no reference"
            if k not in logprobs:
                out.append(Judgement(c.prompt_id, c.index, self.name, None, flag=fit_flag))
                continue
            score, probs, mass = expected_score(logprobs[k], self.digit_ids)
            if score is None:
                flag = "no digit token among the judge's next-token probabilities"
            elif mass < self.options.min_digit_mass:
                flag = f"digit mass {mass:.3f} below {self.options.min_digit_mass}: the judge barely rates"
            else:
                flag = None
            flag = "; ".join(f for f in (fit_flag, flag) if f) or None
            details = {
                "digit_probs": probs,
                "digit_mass": mass,
                "digits_seen": sum(p is not None for p in probs),
                "judge_model": self.engine.name,
                "prompt_format": self.options.prompt_format,
            }
            out.append(Judgement(c.prompt_id, c.index, self.name, score, flag=flag, details=details))
        return out

"""Auto-J (Li et al., ICLR 2024), single-response protocol: a critique, then "Rating: [[x]]" (1-10).

The prompt is the GAIR-NLP/auto-j `constants_prompt.py` one, in the Llama-2 `[INST] ... [/INST]`
wrapper, decoded greedily. The rating is the last "Rating: [[x]]"; an output without one is a
flagged judgement with score None (the original returned 0.0).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from bon.core.config import ModelConfig
from bon.core.judging import Declaration
from bon.core.records import Candidate, Judgement, Prompt
from bon.engines.contract import SamplingSettings
from bon.judges.model_judge import PromptJudge, instruction_in_context, prompts_by_id, read_prompt_template

AUTOJ_HUB_ID = "GAIR/autoj-13b"
_RATING = re.compile(r"Rating: \[\[")


class AutoJOptions(ModelConfig):
    max_tokens: int = Field(1024, ge=1, description="longest critique, in tokens (Auto-J uses 1024)")
    wrapper: Literal["llama2", "chat"] = Field(
        "llama2", description="llama2 = Auto-J's [INST] ... [/INST]; chat = the judge tokenizer's chat template"
    )
    rating_logprob: bool = Field(
        True, description="record the log-probability of the rating's first token (a tie-break for integer ratings)"
    )


def parse_rating(text: str) -> tuple[float | None, str | None]:
    """(rating, flag) from the last "Rating: [[x]]" of a critique."""
    starts = [m.end() for m in _RATING.finditer(text)]
    if not starts:
        return None, "no 'Rating: [[x]]' in the judge's output"
    pos = starts[-1]
    end = text.find("]]", pos)
    if end == -1:
        return None, "unterminated 'Rating: [[' in the judge's output"
    value = text[pos:end].strip()
    try:
        return float(value), None
    except ValueError:
        return None, f"rating {value[:20]!r} is not a number"


def wrap(engine, user_message: str, wrapper: str, template: str) -> list[int]:
    if wrapper == "chat":
        return engine.chat_ids([{"role": "user", "content": user_message}], fix="set the judge's wrapper to llama2")
    return engine.text_ids(template.format(input=user_message))


class AutoJudge(PromptJudge):
    Options = AutoJOptions
    name = "autoj"
    summary = "Auto-J single-response critique then 'Rating: [[1-10]]'"
    declaration = Declaration(
        scale="rating 1-10",
        conversation="context",  # earlier turns written into the instruction (`judges.base.instruction_in_context`)
    )
    needs_reference = False
    hub_id = AUTOJ_HUB_ID

    def __init__(self, options: AutoJOptions | None = None, engine=None):
        self.options = options or AutoJOptions()
        self._engine = engine
        self.template = read_prompt_template("autoj_single.txt")
        self.wrapper = read_prompt_template("llama2_inst.txt")
        self.generates = self.options.max_tokens

    def describe(self) -> str:
        weights = self.options.model.removeprefix("embedded:")
        honest = "" if "autoj" in weights.lower() else f"; NOT the trained Auto-J weights ({AUTOJ_HUB_ID})"
        return f"Auto-J single-response protocol on {weights} ({self.options.wrapper} wrapper){honest}"

    def build_prompt(self, prompt: Prompt, answer: str) -> str:
        return self.template.format(prompt=instruction_in_context(prompt), response=answer)

    def prompt_ids(self, prompt: Prompt, answer: str) -> list[int]:
        return wrap(self.engine, self.build_prompt(prompt, answer), self.options.wrapper, self.wrapper)

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]:
        fitted = self.fit(list(zip(prompts_by_id(prompts, candidates), candidates)))
        ids = [x for x, _ in fitted if x is not None]
        greedy = SamplingSettings(temperature=0.0, top_p=1.0, max_tokens=self.options.max_tokens)
        outputs = iter([group[0].text for group in self.engine.sample(ids, 1, [0] * len(ids), greedy)] if ids else [])
        judgements = []
        for c, (prompt_ids, fit_flag) in zip(candidates, fitted):
            if prompt_ids is None:
                judgements.append(Judgement(c.prompt_id, c.index, self.name, None, flag=fit_flag))
                continue
            text = next(outputs)
            rating, flag = parse_rating(text)
            details = {"judge_model": self.engine.name}
            if rating is not None and self.options.rating_logprob:
                details["rating_logprob"] = self._rating_logprob(prompt_ids, text)
            flag = "; ".join(f for f in (fit_flag, flag) if f) or None
            judgements.append(Judgement(c.prompt_id, c.index, self.name, rating, flag=flag, raw=text, details=details))
        return judgements

    def _rating_logprob(self, prompt_ids: list[int], text: str) -> float | None:
        """Log-probability the judge gave the first token of its last rating."""
        pos = [m.end() for m in _RATING.finditer(text)][-1]
        head = self.engine.tokenizer.encode(text[pos:].strip(), add_special_tokens=False)[:1]
        if not head:
            return None
        prefix = prompt_ids + self.engine.tokenizer.encode(text[:pos], add_special_tokens=False)
        return self.engine.next_token_logprobs([prefix], head)[0].get(head[0])

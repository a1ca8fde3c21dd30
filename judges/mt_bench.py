"""The MT-Bench judge (Zheng et al. 2023): FastChat's single-answer grading, rating ``[[x]]`` on 1-10.

The prompts are FastChat's `judge_prompts.jsonl` ones (lm-sys/FastChat, `fastchat/llm_judge/data`,
Apache-2.0), kept verbatim in judges/prompts/mt_bench_single.jsonl and filled as `run_judge_single`
fills them: ``single-v1`` for a first turn, ``single-v1-multi-turn`` for a second (the whole
conversation, judged on its second answer), the ``-math-`` variants with reference answers for
math, reasoning and coding. The judge model reads them as FastChat sends them to GPT-4: a system
message and a user message, decoded greedily. The rating is FastChat's ``[[x]]`` (or ``[x]``)
match; an output without one is a failed judgement (FastChat wrote -1).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from bon.core.config import ModelConfig
from bon.core.io import DataFileError, read_json_rows
from bon.core.judging import Declaration
from bon.core.records import Candidate, Judgement, Prompt
from bon.engines.contract import SamplingSettings
from bon.engines.tokens import digit_token_ids
from bon.judges.model_judge import PromptJudge, prompts_by_id
from bon.judges.selfj import expected_score

NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")  # FastChat's common.NEED_REF_CATS
ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")  # FastChat's one_score_pattern
ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")  # and its one_score_pattern_backup
FORCED = "\n\nRating: [["  # what `force_rating` appends to a judgment without a rating
SHIPPED = Path(__file__).parent / "prompts" / "mt_bench_single.jsonl"
ROLES = ("single", "multi_turn", "math", "math_multi_turn")  # the options naming which prompt grades what


def read_judge_prompts(path: Path) -> dict[str, dict[str, Any]]:
    """FastChat's judge prompts by name (`load_judge_prompts`), refused with file and line when malformed."""
    out = {}
    for line, row in read_json_rows(path):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("name", "type", "system_prompt")):
            raise DataFileError(path, line, "expected a judge prompt with string fields name, type, system_prompt")
        if not isinstance(row.get("prompt_template"), str) or row.get("output_format") not in ("[[rating]]", "[[A]]"):
            raise DataFileError(path, line, f"field 'prompt_template'/'output_format' of {row['name']!r} is malformed")
        out[row["name"]] = row
    return out


def read_reference_answers(path: Path) -> dict[str, list[str]]:
    """Reference answers by question id, from a FastChat model-answer file (reference_answer/gpt-4.jsonl)."""
    out = {}
    for line, row in read_json_rows(path):
        try:
            turns = row["choices"][0]["turns"]
            qid = row["question_id"]
        except (KeyError, IndexError, TypeError):
            raise DataFileError(
                path, line, "expected FastChat's model-answer format (question_id, choices[0].turns)"
            ) from None
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise DataFileError(path, line, "field 'choices[0].turns': expected a list of strings")
        out[str(qid)] = turns
    return out


class MTBenchOptions(ModelConfig):
    max_tokens: int = Field(2048, ge=1, description="longest judgment, in tokens (FastChat asks GPT-4 for 2048)")
    prompts_file: str | None = Field(
        None, description="a FastChat judge_prompts.jsonl; None = FastChat's single-answer prompts shipped with bon"
    )
    reference_answers: str | None = Field(
        None,
        description="FastChat reference answers (reference_answer/gpt-4.jsonl) for math/reasoning/coding; "
        "None = the questions' own `reference`",
    )
    force_rating: bool = Field(
        False,
        description="a judgment without [[rating]] is scored by the expected digit after 'Rating: [[' (flagged)",
    )
    single: str = Field("single-v1", description="the prompt grading a first turn")
    multi_turn: str = Field("single-v1-multi-turn", description="the prompt grading a second turn")
    math: str = Field("single-math-v1", description="the prompt grading a first turn of math, reasoning or coding")
    math_multi_turn: str = Field("single-math-v1-multi-turn", description="the same for a second turn")

    @field_validator("single", "multi_turn", "math", "math_multi_turn")
    @classmethod
    def _known_prompt(cls, name: str, info: ValidationInfo) -> str:
        given = info.data.get("prompts_file")
        path = Path(given) if given else SHIPPED
        if not path.is_file():
            raise ValueError(f"the prompts_file {str(path)!r} does not exist")
        prompts = read_judge_prompts(path)
        if name not in prompts:
            raise ValueError(f"{name!r} is not a judge prompt of {path} (it has {', '.join(prompts)})")
        if prompts[name]["type"] != "single":
            raise ValueError(f"{name!r} is a {prompts[name]['type']} prompt; this judge grades one answer")
        wants_multi = str(info.field_name).endswith("multi_turn")
        if ("{question_2}" in prompts[name]["prompt_template"]) != wants_multi:
            raise ValueError(f"{name!r} is not a {'two' if wants_multi else 'one'}-turn prompt")
        return name

    @field_validator("reference_answers")
    @classmethod
    def _exists(cls, path: str | None) -> str | None:
        if path and not Path(path).is_file():
            raise ValueError(f"{path!r}: no such file")
        return path


def parse_rating(text: str) -> tuple[float | None, str | None]:
    """(rating, flag) as FastChat reads a judgment: the first ``[[x]]``, else the first ``[x]``."""
    match = ONE_SCORE.search(text) or ONE_SCORE_BACKUP.search(text)
    if not match:
        return None, "no '[[rating]]' in the judge's output"
    rating = float(ast.literal_eval(match.group(1)))
    if not 1 <= rating <= 10:
        return None, f"rating {match.group(1)} is outside MT-Bench's 1-10"
    return rating, None


class MTBenchJudge(PromptJudge):
    Options = MTBenchOptions
    name = "mt_bench"
    summary = "MT-Bench single-answer grading (FastChat's prompts, GPT-4 style), '[[rating]]' 1-10, one or two turns"
    declaration = Declaration(
        scale="rating 1-10",
        conversation="native",  # FastChat's multi-turn prompt: the whole conversation, its second answer graded
        cpu_default="SmolLM2-135M-Instruct (a stand-in: FastChat's judge is GPT-4)",
    )
    needs_reference = False
    hub_id = None  # FastChat's judge is GPT-4 (`backend: openai`); any local or served model can stand in

    def __init__(self, options: MTBenchOptions | None = None, engine=None):
        self.options = options or MTBenchOptions()
        self._engine = engine
        self.generates = self.options.max_tokens

    @cached_property
    def templates(self) -> dict[str, dict[str, Any]]:
        path = Path(self.options.prompts_file) if self.options.prompts_file else SHIPPED
        return read_judge_prompts(path)

    @cached_property
    def reference_answers(self) -> dict[str, list[str]] | None:
        return read_reference_answers(Path(self.options.reference_answers)) if self.options.reference_answers else None

    def describe(self) -> str:
        weights = self.options.model.removeprefix("embedded:")
        honest = "" if "gpt-4" in weights.lower() else "; NOT FastChat's GPT-4 judge"
        return f"MT-Bench single-answer grading ({self.options.single}/{self.options.multi_turn}) on {weights}{honest}"

    # -- which prompt, with what
    def _role(self, prompt: Prompt) -> str:
        math = prompt.category in NEED_REF_CATS
        second = prompt.turn == 2
        return {(False, False): "single", (False, True): "multi_turn", (True, False): "math"}.get(
            (math, second), "math_multi_turn"
        )

    def _references(self, prompt: Prompt) -> list[str | None]:
        if self.reference_answers is not None:
            return list(self.reference_answers.get(prompt.conversation_id, []))
        return list(prompt.references) or [prompt.reference]

    def refuse_prompt(self, prompt: Prompt) -> str | None:
        """Why this judge cannot grade ``prompt`` (None: it can); asked of every prompt before any work."""
        turns = max(prompt.turn, len(prompt.turns))  # a first turn stands for its whole conversation
        if turns > 2:
            return f"FastChat's MT-Bench prompts grade one or two turns, and this conversation has {turns}"
        if prompt.turn == 2 and [m.role for m in prompt.history if m.role != "system"] != ["user", "assistant"]:
            return "a second turn needs one earlier user turn and its answer"
        if prompt.category in NEED_REF_CATS:
            refs = self._references(prompt)
            lacking = [k + 1 for k in range(turns) if k >= len(refs) or not refs[k]]
            if lacking:
                return (
                    f"its category {prompt.category!r} is graded against reference answers and turn {lacking[0]} has "
                    "none; set the judge's reference_answers to FastChat's reference_answer/gpt-4.jsonl"
                )
        return None

    def messages(self, prompt: Prompt, answer: str) -> list[dict[str, str]]:
        """The system and user messages FastChat's `run_judge_single` sends its judge for ``answer``."""
        template = self.templates[getattr(self.options, self._role(prompt))]
        refs = self._references(prompt) if prompt.category in NEED_REF_CATS else []
        kwargs = {f"ref_answer_{k + 1}": r for k, r in enumerate(refs[: prompt.turn])}
        if prompt.turn == 2:
            question_1, answer_1 = (m.content for m in prompt.history if m.role != "system")
            user = template["prompt_template"].format(
                question_1=question_1, question_2=prompt.instruction, answer_1=answer_1, answer_2=answer, **kwargs
            )
        else:
            user = template["prompt_template"].format(question=prompt.instruction, answer=answer, **kwargs)
        return [{"role": "system", "content": template["system_prompt"]}, {"role": "user", "content": user}]

    def prompt_ids(self, prompt: Prompt, answer: str) -> list[int]:
        return self.engine.chat_ids(self.messages(prompt, answer), fix="use a judge model with a chat template")

    def _forced(
        self, rows: list[tuple[list[int] | None, str | None]], keys: Sequence[str]
    ) -> dict[int, tuple[float | None, float]]:
        """(expected rating, digit mass) after 'Rating: [[' for each judgment (by position) that gave no rating.

        ``keys`` (a row's prompt id) let the judgments of one prompt's candidates share the prefill of their
        common judge prompt (system prompt, question, reference answers) instead of each reading it again."""
        tok, room = self.engine.tokenizer, self.context
        todo, prefixes = [], []
        for i, (ids, text) in enumerate(rows):
            if ids is None or text is None or parse_rating(text)[0] is not None:
                continue
            prefix = ids + tok.encode(text + FORCED, add_special_tokens=False)
            if room is None or len(prefix) < room:
                todo.append(i)
                prefixes.append(prefix)
        digits = digit_token_ids(tok)[1:]  # "1".."9": a rating's first token ("10" starts with "1")
        out = {}
        scored = self.engine.next_token_logprobs(prefixes, digits, groups=[keys[i] for i in todo]) if todo else []
        for i, logprobs in zip(todo, scored):
            score, _, mass = expected_score(logprobs, digits)
            out[i] = (None if score is None else score + 1, mass)  # expected_score counts from 0
        return out

    def preflight_rows(self) -> list[tuple[str, str]]:
        names = ", ".join(getattr(self.options, r) for r in ROLES)
        return [("judge prompts", f"{self.name}: {names} (FastChat)")]

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]:
        fitted = self.fit(list(zip(prompts_by_id(prompts, candidates), candidates)))
        ids = [x for x, _ in fitted if x is not None]
        greedy = SamplingSettings(temperature=0.0, top_p=1.0, max_tokens=self.options.max_tokens)  # FastChat: t=0
        outputs = iter([group[0].text for group in self.engine.sample(ids, 1, [0] * len(ids), greedy)] if ids else [])
        table = {p.id: p for p in prompts}
        texts = [None if x is None else next(outputs) for x, _ in fitted]
        rows = [(x, t) for (x, _), t in zip(fitted, texts)]
        forced = self._forced(rows, [c.prompt_id for c in candidates]) if self.options.force_rating else {}
        judgements = []
        for i, (c, (prompt_ids, fit_flag), text) in enumerate(zip(candidates, fitted, texts)):
            if prompt_ids is None or text is None:
                judgements.append(Judgement(c.prompt_id, c.index, self.name, None, flag=fit_flag))
                continue
            rating, flag = parse_rating(text)
            if i in forced:  # G-Eval-style: the judge's expected digit after the rating's opening brackets
                rating, mass = forced[i]
                flag = f"rating forced after 'Rating: [[' (no [[rating]] in the judgment; digit mass {mass:.3f})"
            prompt_name = getattr(self.options, self._role(table[c.prompt_id]))
            flag = "; ".join(f for f in (fit_flag, flag) if f) or None
            details = {"judge_model": self.engine.name, "judge_prompt": prompt_name}
            judgements.append(Judgement(c.prompt_id, c.index, self.name, rating, flag=flag, raw=text, details=details))
        return judgements

"""The records that cross module boundaries, and their one on-disk JSONL schema.

Every line written by `bon` carries ``"schema": SCHEMA`` and ``"kind"``; readers reject any other
schema version with a message naming the file and line (see `bon.core.io`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

SCHEMA = 1  # bump when a record's fields change meaning; readers refuse other versions
Key = tuple[str, int]  # (prompt id, candidate index): one candidate of a run


class RecordError(ValueError):
    """A record could not be built from a mapping; the message names the field."""


ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One message of a conversation (OpenAI's roles)."""

    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True)
class Prompt:
    """One instruction to answer: a single user turn, or the latest user turn of a conversation.

    A multi-turn source (MT-Bench's ``turns``) gives the first turn's prompt with every user turn in
    ``turns``; the pipeline makes each later turn's prompt with `next_turn` once the earlier turn
    has its kept answer. ``history`` is what the model reads before ``instruction``.
    """

    kind: ClassVar[str] = "prompt"
    id: str
    instruction: str
    dataset: str = ""
    reference: str | None = None  # a gold answer, used by reference-based judges
    history: tuple[Message, ...] = ()  # the conversation before `instruction`: system, user and assistant messages
    turn: int = 1  # which user turn of its conversation `instruction` is (1 = the first)
    turns: tuple[str, ...] = ()  # every user turn of a multi-turn source (MT-Bench); () = no later turns to run
    references: tuple[str | None, ...] = ()  # a gold answer per entry of `turns`, where the source gives them
    category: str = ""  # the source's category (MT-Bench: writing, math, ...), for per-category results
    conversation: str = ""  # the id of the conversation's first-turn prompt, for later turns ("" = this prompt's)

    @property
    def conversation_id(self) -> str:
        """The id the conversation goes by (MT-Bench's question_id): its first turn's prompt id."""
        return self.conversation or self.id

    @property
    def later_turns(self) -> int:
        """User turns of the conversation still to run after this one."""
        return max(0, len(self.turns) - self.turn)

    def messages(self, system_prompt: str | None = None) -> list[dict[str, str]]:
        """The conversation up to this turn as OpenAI-style messages, ``system_prompt`` first unless it has one."""
        own = [{"role": m.role, "content": m.content} for m in self.history]
        system = [] if any(m.role == "system" for m in self.history) or not system_prompt else [system_prompt]
        return (
            [{"role": "system", "content": s} for s in system] + own + [{"role": "user", "content": self.instruction}]
        )


TURN_SEP = ":turn"  # a later turn's prompt id: <first turn's id>:turn<k>


def next_turn(prompt: Prompt, kept: str) -> Prompt:
    """The prompt of the turn after ``prompt``, whose conversation now holds ``kept`` as the assistant's answer."""
    k = prompt.turn + 1
    conversation = prompt.conversation_id
    return dataclasses.replace(
        prompt,
        id=f"{conversation}{TURN_SEP}{k}",
        instruction=prompt.turns[k - 1],
        reference=prompt.references[k - 1] if len(prompt.references) >= k else None,
        history=prompt.history + (Message("user", prompt.instruction), Message("assistant", kept)),
        turn=k,
        conversation=conversation,
    )


@dataclass(frozen=True)
class Candidate:
    """One sampled answer to a prompt."""

    kind: ClassVar[str] = "candidate"
    identity: ClassVar[tuple[str, ...]] = ("prompt_id", "index")  # one record per value in a file
    indices: ClassVar[tuple[str, ...]] = ("index",)  # fields holding a candidate index: below the run's n
    prompt_id: str
    index: int
    text: str
    seed: int | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence) or "length" (max_tokens reached)
    policy: str
    flag: str | None = None  # e.g. the prompt was truncated to fit the context; None when clean
    # the tokens the policy sampled (end of sequence left out); None: unknown, and then not written (older runs lack it)
    token_ids: tuple[int, ...] | None = field(default=None, metadata={"optional": True})
    # the policy's own distributions at those tokens, summed while it decoded (`bon.engines.contract.Confidence`):
    # how many tokens, their log-probabilities, entropies and self-certainty terms; None: not measured, not written
    confidence_tokens: int | None = field(default=None, metadata={"optional": True})
    logprob_sum: float | None = field(default=None, metadata={"optional": True})
    entropy_sum: float | None = field(default=None, metadata={"optional": True})
    certainty_sum: float | None = field(default=None, metadata={"optional": True})

    @property
    def key(self) -> Key:
        return (self.prompt_id, self.index)


@dataclass(frozen=True)
class Judgement:
    """A judge's verdict on one candidate. A failed judgement has score None and a flag."""

    kind: ClassVar[str] = "judgement"
    identity: ClassVar[tuple[str, ...]] = ("judge", "prompt_id", "candidate_index")
    indices: ClassVar[tuple[str, ...]] = ("candidate_index",)
    prompt_id: str
    candidate_index: int
    judge: str
    score: float | None
    flag: str | None = None  # why the judgement is suspect or failed; None when clean
    raw: str | None = None  # the judge's raw generated text, where it generates any
    details: Mapping[str, Any] = field(default_factory=dict)  # judge-specific numbers

    def __post_init__(self):
        # a NaN or infinite score (a diverged reward model) would void every mean and correlation downstream
        if self.score is not None and not math.isfinite(self.score):
            object.__setattr__(self, "flag", "; ".join(f for f in (self.flag, f"non-finite score {self.score}") if f))
            object.__setattr__(self, "score", None)

    @property
    def ok(self) -> bool:
        return self.score is not None

    @property
    def key(self) -> Key:
        return (self.prompt_id, self.candidate_index)


@dataclass(frozen=True)
class Selection:
    """The outcome for one prompt: the kept candidate, or a decline."""

    kind: ClassVar[str] = "selection"
    identity: ClassVar[tuple[str, ...]] = ("judge", "prompt_id")
    indices: ClassVar[tuple[str, ...]] = ("chosen_index",)
    prompt_id: str
    chosen_index: int | None  # None when declined
    declined: bool
    score: float | None
    judge: str
    reason: str | None = None  # why declined, or why the pick is a fallback
    skipped: bool = False  # never sampled: the prompt did not fit the policy's context (on_overflow: skip)
    threshold: float | None = None  # the score a decline compared against (decline_below, or coverage's τ)


@dataclass(frozen=True)
class Comparison:
    """A pairwise judge's verdict on one ordered pair of a prompt's candidates."""

    kind: ClassVar[str] = "comparison"
    prompt_id: str
    first: int  # index of the candidate shown first
    second: int  # index of the candidate shown second
    judge: str
    winner: int | None  # 0 = the one shown first, 1 = the one shown second, 2 = tie; None when unusable
    flag: str | None = None  # why the verdict is unusable; None when clean
    raw: str | None = None  # the judge's raw generated text, where it generates any


def by_key(judgements: Iterable[Judgement], judge: str | None = None) -> dict[Key, Judgement]:
    """Judgements keyed by candidate, only ``judge``'s when it is given."""
    return {j.key: j for j in judgements if judge is None or j.judge == judge}


def by_prompt(candidates: Iterable[Candidate]) -> dict[str, dict[int, Candidate]]:
    """Candidates by prompt id, then index (a prompt without candidates reads as an empty dict)."""
    table: dict[str, dict[int, Candidate]] = defaultdict(dict)
    for c in candidates:
        table[c.prompt_id][c.index] = c
    return table


RECORD_TYPES: dict[str, type] = {t.kind: t for t in (Prompt, Candidate, Judgement, Selection, Comparison)}


def to_json(record: Any) -> dict[str, Any]:
    """A record as a JSON-ready dict with the schema version and kind."""
    out: dict[str, Any] = {"schema": SCHEMA, "kind": record.kind}
    out.update(dataclasses.asdict(record))
    for f in dataclasses.fields(record):  # an optional field unknown is left out: the line reads as older bons wrote it
        if f.metadata.get("optional") and out[f.name] is None:
            del out[f.name]
    return out


_INT_FIELDS = {
    "index",
    "candidate_index",
    "chosen_index",
    "prompt_tokens",
    "completion_tokens",
    "seed",
    "first",
    "second",
    "winner",
    "turn",
    "confidence_tokens",
}
_NUMBER_FIELDS = ("score", "logprob_sum", "entropy_sum", "certainty_sum")  # finite numbers or null


def from_json(cls: Any, data: Mapping[str, Any]) -> Any:
    """Build ``cls`` from a dict as written by `to_json`; extra or missing fields are errors."""
    if data.get("schema") != SCHEMA:
        raise RecordError(f"field 'schema': this bon reads schema version {SCHEMA}, found {data.get('schema')!r}")
    if data.get("kind") != cls.kind:
        raise RecordError(f"field 'kind': expected {cls.kind!r}, found {data.get('kind')!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    body = {k: v for k, v in data.items() if k not in ("schema", "kind")}
    unknown = sorted(set(body) - names)
    if unknown:
        raise RecordError(f"unknown field {unknown[0]!r} for a {cls.kind} record")
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - set(body))
    if missing:
        raise RecordError(f"missing field {missing[0]!r} for a {cls.kind} record")
    for name in _INT_FIELDS & set(body):
        value = body[name]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise RecordError(f"field {name!r}: expected an integer, found {value!r}")
        if value is not None and name != "seed" and value < 0:
            raise RecordError(f"field {name!r}: expected 0 or more, found {value!r}")
    if body.get("winner") not in (None, 0, 1, 2):
        raise RecordError(f"field 'winner': expected 0, 1, 2 or null, found {body['winner']!r}")
    if cls is Prompt:  # JSON lists back to the record's tuples
        body["history"] = tuple(Message(**m) for m in body.get("history") or ())
        body["turns"] = tuple(body.get("turns") or ())
        body["references"] = tuple(body.get("references") or ())
    if body.get("token_ids") is not None:  # a JSON list back to the record's tuple
        ids = body["token_ids"]
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
            raise RecordError(
                f"field 'token_ids': expected a list of token ids (integers 0 or more), found {ids!r:.60}"
            )
        body["token_ids"] = tuple(ids)
    for name in _NUMBER_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise RecordError(f"field {name!r}: expected a number or null, found {value!r}")
        if not math.isfinite(value):  # e.g. 1e400 parses to inf
            raise RecordError(f"field {name!r}: expected a finite number or null, found {value!r}")
        body[name] = float(value)
    return cls(**body)

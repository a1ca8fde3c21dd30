"""The judge protocol and the judge registry: the only way bon's core reaches a judge.

Judges live in the ``judges`` package, one class per module, named here by ``"module:Class"``
strings that are imported on first use, so nothing below ``judges`` imports it.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from bon.core.errors import BonError, ConfigError, problems
from bon.core.records import Candidate, Judgement, Prompt
from bon.core.registry import Registry

# How a judge sees a prompt that continues a conversation (its declaration's ``conversation``)
ConversationMode = Literal["single", "context", "chat", "answer", "native"]
CONVERSATION_MODES: dict[str, str] = {
    "single": "refused (it judges one instruction)",
    "context": "earlier turns written into its instruction as context",
    "chat": "the whole conversation through the judge model's chat template",
    "answer": "reads the answers only",
    "native": "its own multi-turn protocol",
}


@dataclass(frozen=True)
class Declaration:
    """What a judge class says of itself: read by `bon judges list`, preflight, the run summary and the
    conversation checks (every judge class declares one; mypy checks them against `JudgeClass`)."""

    scale: str  # what a score means ("expected rating 0-9"), shown beside scores
    conversation: ConversationMode = "single"  # how it sees a conversation (CONVERSATION_MODES)
    single_turn_reason: str = "it judges one instruction"  # why it refuses conversations, where it does
    cpu_default: str | None = None  # the model `bon judges list` names; None: from its Options' `model` default
    policy_defaults: tuple[str, ...] = ()  # option keys `bon judge` fills from the run's policy when unset
    free: bool = False  # a judgement costs nothing next to decoding (no model, or a small encoder)


class Judge(Protocol):
    @property
    def name(self) -> str:
        """The name judgements carry."""
        ...

    @property
    def summary(self) -> str:
        """One line for `bon judges list`."""
        ...

    @property
    def needs_reference(self) -> bool:
        """Whether it scores only prompts that carry a gold reference."""
        ...

    @property
    def hub_id(self) -> str | None:
        """The weights GPU users load, where the judge has any."""
        ...

    @property
    def declaration(self) -> Declaration:
        """Its class's declaration."""
        ...

    @property
    def options(self) -> BaseModel:
        """Its validated options (its class's ``Options``)."""
        ...

    def describe(self) -> str:
        """One honest line on what is scoring (which weights, which template)."""
        ...

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]:
        """One judgement per candidate, in the candidates' order; failures are flagged, score None."""
        ...


@runtime_checkable
class RefusesPrompts(Protocol):
    """A judge that turns down some prompts before any work (MT-Bench: a category without its references)."""

    def refuse_prompt(self, prompt: Prompt) -> str | None:
        """Why ``prompt`` cannot be judged, or None."""
        ...


def check_conversations(judge: Judge, prompts: Sequence[Prompt], prompt_format: str) -> None:
    """Refuse, before any work, a policy format or a judge that cannot take ``prompts`` (their conversations, or a
    prompt the judge's own `refuse_prompt` turns down)."""
    from bon.core.formats import conversation_formats, takes_conversations

    talk = next((p for p in prompts if p.history or p.later_turns), None)
    if talk is not None:
        what = f"prompt {talk.id!r} is a conversation ({max(len(talk.turns), talk.turn)} user turns)"
        if not takes_conversations(prompt_format):
            raise ConfigError(
                f"policy.prompt_format {prompt_format!r} takes one turn and {what}; "
                f"use one of {', '.join(conversation_formats())}"
            )
        if judge.declaration.conversation == "single":
            able = [n for n in JUDGES.own() if JUDGES.get(n).declaration.conversation != "single"]
            why = judge.declaration.single_turn_reason
            raise ConfigError(
                f"judge {judge.name!r} cannot judge conversations ({why}) and {what}; use one of {', '.join(able)}"
            )
    if isinstance(judge, RefusesPrompts):
        for p in prompts:
            refused = judge.refuse_prompt(p)
            if refused:
                raise ConfigError(f"judge {judge.name!r} cannot judge prompt {p.id!r}: {refused}")


@runtime_checkable
class Compares(Protocol):
    """A judge that also compares two responses directly (Auto-J pairwise); `bon compare` asks it both orders."""

    def compare(self, items: Sequence[tuple[str, str, str]]) -> list[Any]:
        """One verdict (``winner``, ``flag``, ``raw``) per (instruction, shown first, shown second) triple."""
        ...


class PairwiseJudge(Judge, Compares, Protocol):
    """A `Judge` that `Compares`."""


class JudgeClass(Protocol):
    """What the registry holds: a judge class with its options model and its declaration."""

    @property
    def Options(self) -> type[BaseModel]: ...  # noqa: N802  (the class attribute every judge class names so)

    @property
    def summary(self) -> str: ...

    @property
    def declaration(self) -> Declaration: ...

    @property
    def needs_reference(self) -> bool: ...

    @property
    def hub_id(self) -> str | None: ...

    def __call__(self, options: Any = ..., /) -> Judge: ...


JUDGES: Registry[JudgeClass] = Registry(
    "judge",
    {
        "selfj": "judges.selfj:SelfJudge",
        "autoj": "judges.autoj:AutoJudge",
        "reward_model": "judges.reward_model:RewardModelJudge",
        "pairwise": "judges.pairwise:PairwiseRanking",
        "ppl": "judges.ppl:PPLJudge",
        "cosine": "judges.cosine:CosineJudge",
        "self_eval": "judges.self_eval:SelfEvalJudge",
        "consistency": "judges.consistency:ConsistencyJudge",
        "ensemble": "judges.ensemble:EnsembleJudge",
        "length": "judges.length:LengthJudge",
        "random": "judges.random_pick:RandomJudge",
        "mt_bench": "judges.mt_bench:MTBenchJudge",
    },
    group="bon.judges",  # judges of installed packages
    adapt=lambda name, target: _external(name, target),
)


def _external(name: str, target: Any) -> JudgeClass:
    """A user's class or reward function as a judge class (imported here: `bon.core.external` needs this module)."""
    from bon.core.external import external_judge

    return external_judge(name, target)


def _validated(name: str, options: Mapping[str, Any] | None) -> tuple[BaseModel | None, list[tuple[str, str]]]:
    model = JUDGES.get(name).Options
    try:
        return model.model_validate(dict(options or {})), []
    except ValidationError as e:
        return None, problems(e, model)


def nested_options(model: type[BaseModel], options: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``options`` checked by ``model`` inside another model's validation: a ValueError naming each bad key, so the
    outer model's error names the whole path (``options.comparator_options: tie_threshold: ...``)."""
    try:
        model.model_validate(dict(options))
    except ValidationError as e:
        raise ValueError(f"{what}: " + "; ".join(f"{k}: {m}" for k, m in problems(e, model))) from None
    return dict(options)


def nested_judge_options(name: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """A nested judge's options checked by its Options model (an unknown judge name is refused where it is built,
    with the close names)."""
    if not isinstance(name, str) or name not in JUDGES:
        return dict(options)
    return nested_options(JUDGES.get(name).Options, options, f"judge {name!r} options")


def option_problems(name: str, options: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(key, what is wrong) for each option of a registered judge that its Options model refuses."""
    return _validated(name, options)[1]


def judge_options(name: str, options: Mapping[str, Any] | None = None) -> BaseModel:
    """A registered judge's options, validated by its Options model (an unknown name suggests close ones)."""
    validated, bad = _validated(name, options)
    if validated is None:
        raise ConfigError(f"judge {name!r} options: " + "; ".join(f"{k}: {m}" for k, m in bad))
    return validated


def judge_spec(name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A judge's meaning with its options' defaults filled in, so `{}` and the explicit defaults compare equal."""
    return {"name": name, "options": judge_options(name, options).model_dump(mode="json")}


def same_judge(stored: Any, now: Any) -> bool:
    """Whether two ``{"name", "options"}`` entries mean the same judge (defaults filled in; unreadable: no)."""
    try:
        return judge_spec(stored["name"], stored["options"]) == judge_spec(now["name"], now["options"])
    except (KeyError, TypeError, ValueError):  # unknown name, options no longer valid, not a mapping
        return False


def build_judge(name: str, options: Mapping[str, Any] | None = None) -> Judge:
    """A judge instance from its registered name and options."""
    return JUDGES.get(name)(judge_options(name, options))


def policy_defaults(name: str, options: Mapping[str, Any], policy: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the keys the judge declares in ``policy_defaults`` taken from the run's policy when unset."""
    out = dict(options)
    for key in JUDGES.get(name).declaration.policy_defaults:
        out.setdefault(key, policy[key])
    return out


@dataclass(frozen=True)
class JudgeInfo:
    name: str
    summary: str
    needs_reference: bool
    hub_id: str | None
    cpu_default: str  # the model it loads when no option names one
    scale: str = ""  # what a score means
    conversation: str = ""  # how it sees a conversation (CONVERSATION_MODES)
    source: str = "bon"  # where it comes from: bon, or an installed package's entry point


def describe_judges() -> list[JudgeInfo]:
    """One row per registered judge, from its class and its Options defaults (no model is loaded); a package's
    judge that cannot be imported is a row saying why, not a failure of the listing."""
    rows = []
    for name in JUDGES:
        try:
            cls = JUDGES.get(name)
        except BonError as e:
            rows.append(JudgeInfo(name, f"cannot be used: {e}", False, None, "—", source=JUDGES.source(name)))
            continue
        said = cls.declaration
        default = said.cpu_default
        if default is None:
            model = cls.Options.model_fields.get("model")
            if model is None:
                default = "no model"
            elif str(model.default).startswith("embedded:"):
                default = str(model.default).removeprefix("embedded:")
            else:
                default = "none: set options.model to a local copy"
        mode = said.conversation
        how = f"refused ({said.single_turn_reason})" if mode == "single" else f"{mode}, {CONVERSATION_MODES[mode]}"
        rows.append(
            JudgeInfo(name, cls.summary, cls.needs_reference, cls.hub_id, default, said.scale, how, JUDGES.source(name))
        )
    return rows


@dataclass(frozen=True)
class OptionInfo:
    key: str
    type: str
    default: str
    description: str


def describe_options(name: str) -> list[OptionInfo]:
    """A registered judge's options: key, type, default and the one-line description of its Options model."""
    rows = []
    for key, f in JUDGES.get(name).Options.model_fields.items():
        kind = _type_name(f.annotation)
        default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
        rows.append(OptionInfo(key, kind, default, f.description or ""))
    return rows


def _type_name(annotation: Any) -> str:
    """A field's type as a user writes it: ``'raw' | 'chat'`` for a Literal, ``str | None``, ``int``."""
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")

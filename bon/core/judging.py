"""The judge registry: the only way bon's core reaches a judge (the protocol, `bon.core.protocol`, re-exported).

Judges live in the ``judges`` package, one class per module, named here by ``"module:Class"``
strings that are imported on first use, so nothing below ``judges`` imports it; judges from outside
bon come by import path or entry point, wrapped by `bon.core.external`.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from bon.core.errors import BonError, ConfigError, problems
from bon.core.external import external_judge
from bon.core.protocol import CONVERSATION_MODES as CONVERSATION_MODES
from bon.core.protocol import Compares as Compares
from bon.core.protocol import ConversationMode as ConversationMode
from bon.core.protocol import Declaration as Declaration
from bon.core.protocol import Judge as Judge
from bon.core.protocol import JudgeClass as JudgeClass
from bon.core.protocol import PairwiseJudge as PairwiseJudge
from bon.core.protocol import RefusesPrompts as RefusesPrompts
from bon.core.records import Prompt
from bon.core.registry import Registry


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


JUDGES: Registry[JudgeClass] = Registry(
    "judge",
    {
        "selfj": "bon.judges.selfj:SelfJudge",
        "autoj": "bon.judges.autoj:AutoJudge",
        "reward_model": "bon.judges.reward_model:RewardModelJudge",
        "pairwise": "bon.judges.pairwise:PairwiseRanking",
        "ppl": "bon.judges.ppl:PPLJudge",
        "cosine": "bon.judges.cosine:CosineJudge",
        "self_eval": "bon.judges.self_eval:SelfEvalJudge",
        "consistency": "bon.judges.consistency:ConsistencyJudge",
        "ensemble": "bon.judges.ensemble:EnsembleJudge",
        "length": "bon.judges.length:LengthJudge",
        "random": "bon.judges.random_pick:RandomJudge",
        "mt_bench": "bon.judges.mt_bench:MTBenchJudge",
        "self_certainty": "bon.judges.self_certainty:SelfCertaintyJudge",
        "logprob": "bon.judges.logprob:LogprobJudge",
        "entropy": "bon.judges.entropy:EntropyJudge",
    },
    group="bon.judges",  # judges of installed packages
    adapt=external_judge,
)


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

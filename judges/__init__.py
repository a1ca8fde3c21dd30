"""Judges: one module each, registered here by name and imported only when used."""

from __future__ import annotations

from dataclasses import dataclass

from bon.registry import Registry

# name -> "module:class"; each class has an `Options` pydantic model and a `summary` line.
JUDGES: Registry = Registry(
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
    },
)


def build_judge(name: str, options: dict | None = None):
    """A judge instance from its registered name and options (validated by its Options model)."""
    from pydantic import ValidationError

    from bon.config import ConfigError

    cls = JUDGES.get(name)
    try:
        validated = cls.Options.model_validate(options or {})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in x['loc'])}: " + ("unknown key" if x["type"] == "extra_forbidden" else f"{x['msg']} (got {x['input']!r})")
            for x in e.errors()
        )
        raise ConfigError(f"judge {name!r} options: {problems}") from None
    return cls(validated)


@dataclass(frozen=True)
class JudgeInfo:
    name: str
    summary: str
    needs_reference: bool
    hub_id: str | None
    cpu_default: str  # the model it loads when no option names one


def describe_judges() -> list[JudgeInfo]:
    """One row per registered judge, from its class and its Options defaults (nothing is loaded)."""
    rows = []
    for name in JUDGES:
        cls = JUDGES.get(name)
        model = cls.Options.model_fields.get("model")
        if model is None:
            default = "no model"
        elif str(model.default).startswith("embedded:"):
            default = model.default.removeprefix("embedded:")
        else:
            default = "none: set options.model to a local copy"
        if name == "pairwise":
            default = "SmolLM2-135M-Instruct (autoj comparator)"
        elif name == "ensemble":
            default = "its members'"
        rows.append(JudgeInfo(name, cls.summary, cls.needs_reference, cls.hub_id, default))
    return rows

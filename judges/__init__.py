"""Judges: one module each, registered here by name and imported only when used."""

from __future__ import annotations

from bon.registry import Registry

# name -> "module:class"; each class has an `Options` pydantic model and a `summary` line.
JUDGES: Registry = Registry(
    "judge",
    {
        "selfj": "judges.selfj:SelfJudge",
        "length": "judges.length:LengthJudge",
        "random": "judges.random_pick:RandomJudge",
    },
)


def build_judge(name: str, options: dict | None = None):
    """A judge instance from its registered name and options (validated by its Options model)."""
    cls = JUDGES.get(name)
    return cls(cls.Options.model_validate(options or {}))

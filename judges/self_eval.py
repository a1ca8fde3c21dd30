"""Self-evaluation baseline: the policy model itself rates its candidates with the Self-J template."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from bon.judges.selfj import SelfJudge


class SelfEvalJudge(SelfJudge):
    name = "self_eval"
    summary = "the policy model itself with the Self-J template (`bon judge` defaults `model` to the run's policy)"
    hub_id: ClassVar[str | None] = None
    declaration = replace(  # the policy judging itself: `bon judge` fills these options from the run's policy
        SelfJudge.declaration, policy_defaults=("model", "backend", "gguf_file", "dtype", "device", "server")
    )

    def describe(self) -> str:
        model = self.options.model.removeprefix("embedded:")
        return f"self-evaluation: Self-J template on the policy model {model} ({self.options.prompt_format} prompt)"

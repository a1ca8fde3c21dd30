"""Scalar reward models: one logit per (prompt, response) conversation.

transformers: `AutoModelForSequenceClassification` with the RM tokenizer's chat template, right
padding, batches sorted by length, bf16 on GPU. vLLM: the pooling runner's classify task, where
vLLM supports the architecture. `trust_remote_code` only when the options say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from bon.core.config import ModelConfig
from bon.core.judging import Declaration
from bon.core.records import Candidate, Judgement, Prompt
from bon.judges.model_judge import prompts_by_id

RM_HUB_ID = "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"


class RewardModelOptions(ModelConfig):
    model: str = Field(RM_HUB_ID, description="a sequence-classification reward model (hub id or local directory)")
    batch_size: int = Field(8, ge=1, description="conversations per forward pass (transformers)")


class RewardModelJudge:
    Options = RewardModelOptions
    name = "reward_model"
    summary = (
        f"scalar reward model (sequence classification, 1 logit), e.g. {RM_HUB_ID}, "
        "OpenAssistant/reward-model-deberta-v3-large-v2"
    )
    declaration = Declaration(
        scale="reward (the raw logit, unbounded)",
        conversation="chat",  # the whole conversation, the candidate as its last assistant turn
    )
    needs_reference = False
    hub_id = RM_HUB_ID

    def __init__(self, options: RewardModelOptions | None = None):
        self.options = options or RewardModelOptions()
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            if self.options.backend == "vllm":
                from bon.engines import vllm

                self._model = vllm.load_reward_model(self.options)
            else:
                from bon.engines import hf

                self._model = hf.load_reward_model(self.options)
        return self._model

    def describe(self) -> str:
        return f"reward model {self.options.model} ({self.options.backend})"

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]:
        convs = [
            self.model.conversation_ids(p.messages() + [{"role": "assistant", "content": c.text}])
            for p, c in zip(prompts_by_id(prompts, candidates), candidates)
        ]
        rewards = self.model.rewards(convs, batch_size=self.options.batch_size)
        return [
            Judgement(c.prompt_id, c.index, self.name, r, details={"reward_model": self.model.name})
            for c, r in zip(candidates, rewards)
        ]

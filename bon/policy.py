"""Policies: sample N candidates per prompt through an engine, with the chat template applied."""

from __future__ import annotations

from typing import Protocol, Sequence

from bon.config import PolicyConfig
from bon.engines import LanguageModel, SamplingSettings, derive_seed, load_engine
from bon.records import Candidate, Prompt


class Policy(Protocol):
    name: str

    def generate(self, prompts: Sequence[Prompt], n: int, seed: int) -> list[Candidate]:
        """``n`` candidates for each prompt, in prompt order then index order."""


def prompt_seed(run_seed: int, prompt_id: str) -> int:
    """The seed of one prompt's samples: independent of batching, so a resumed run redraws them exactly."""
    return derive_seed(run_seed, prompt_id)


class EnginePolicy:
    """A chat model behind any engine (transformers or vLLM)."""

    def __init__(self, cfg: PolicyConfig, engine: LanguageModel | None = None):
        self.cfg = cfg
        self.engine = engine or load_engine(cfg)
        self.name = self.engine.name
        self.settings = SamplingSettings(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)

    def _messages(self, prompt: Prompt) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else []
        return system + [{"role": "user", "content": prompt.instruction}]

    def generate(self, prompts: Sequence[Prompt], n: int, seed: int) -> list[Candidate]:
        ids = [self.engine.chat_ids(self._messages(p)) for p in prompts]
        seeds = [prompt_seed(seed, p.id) for p in prompts]
        samples = self.engine.sample(ids, n, seeds, self.settings)
        return [
            Candidate(
                prompt_id=p.id,
                index=i,
                text=s.text,
                seed=s.seed,
                prompt_tokens=s.prompt_tokens,
                completion_tokens=s.completion_tokens,
                finish_reason=s.finish_reason,
                policy=self.name,
            )
            for p, group in zip(prompts, samples)
            for i, s in enumerate(group)
        ]

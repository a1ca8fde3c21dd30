"""The transformers engine on the real SmolLM2: per-candidate seeds, batching independence, GGUF loading."""

import pytest
import torch

from bon.config import ModelConfig, PolicyConfig
from bon.engines.base import derive_seed
from bon.models import embedded_path
from bon.policy import EnginePolicy, prompt_seed
from bon.records import Prompt

pytestmark = pytest.mark.slow

PROMPTS = [Prompt("a", "Name a fruit."), Prompt("b", "Say hello in French.")]


def test_candidates_depend_only_on_their_seeds(smollm2):
    policy = EnginePolicy(PolicyConfig(max_tokens=12, temperature=1.0), engine=smollm2)
    both = policy.generate(PROMPTS, 3, seed=7)
    assert [(c.prompt_id, c.index) for c in both] == [(p, i) for p in "ab" for i in range(3)]
    assert [c.seed for c in both[:3]] == [derive_seed(prompt_seed(7, "a"), i) for i in range(3)]
    alone = policy.generate(PROMPTS[1:], 3, seed=7)
    assert [c.text for c in alone] == [c.text for c in both[3:]]  # same, whatever else is in the batch
    other = policy.generate(PROMPTS[1:], 3, seed=8)
    assert [c.text for c in other] != [c.text for c in alone]
    for c in both:
        assert c.finish_reason in ("stop", "length") and 1 <= c.completion_tokens <= 12
        assert c.finish_reason == "stop" or c.completion_tokens == 12
        assert c.prompt_tokens > 10 and c.policy == "SmolLM2-135M-Instruct"


def test_greedy_candidates_are_identical(smollm2):
    policy = EnginePolicy(PolicyConfig(max_tokens=8, temperature=0.0), engine=smollm2)
    texts = {c.text for c in policy.generate(PROMPTS[:1], 3, seed=0)}
    assert len(texts) == 1


def test_gguf_file_loading_matches_the_converted_cache(smollm2):
    from bon.engines.hf import HFModel

    direct = HFModel(ModelConfig(model=str(embedded_path("SmolLM2-135M-Instruct"))))  # through gguf_file=
    ids = smollm2.chat_ids([{"role": "user", "content": "What is 2+2?"}])
    assert direct.chat_ids([{"role": "user", "content": "What is 2+2?"}]) == ids
    with torch.no_grad():
        a = direct.model(torch.tensor([ids])).logits[0, -1]
        b = smollm2.model(torch.tensor([ids])).logits[0, -1]
    assert torch.allclose(a, b, atol=1e-4)

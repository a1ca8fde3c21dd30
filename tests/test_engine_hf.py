"""The transformers engine on the real SmolLM2: per-candidate seeds, batching independence, GGUF loading."""

import pytest
import torch

from bon.core.config import ModelConfig, PolicyConfig
from bon.core.records import Prompt
from bon.engines.contract import derive_seed
from bon.engines.models import embedded_path
from bon.pipeline.policy import EnginePolicy, prompt_seed
from tests.helpers import plain_loop_text

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


def test_batched_sampler_equals_one_candidate_at_a_time(smollm2):
    """The determinism contract of the batched sampler: prefilling once, expanding the KV cache to N rows,
    decoding prompts together and dropping finished rows give each candidate exactly the tokens of a
    plain loop that recomputes the whole sequence for it alone, with the same uniforms of its own seed."""
    from bon.engines.contract import SamplingSettings

    s = SamplingSettings(temperature=1.0, top_p=0.9, max_tokens=10)
    prompts = [smollm2.chat_ids([{"role": "user", "content": p.instruction}]) for p in PROMPTS]
    batched = smollm2.sample(prompts, 3, [11, 12], s)
    for ids, seed, group in zip(prompts, [11, 12], batched):
        for i, got in enumerate(group):
            assert got.text == plain_loop_text(smollm2, ids, seed, i, s) and got.seed == derive_seed(seed, i)


def test_judge_prefix_reuse_matches_full_prompts(smollm2):
    texts = ["Paris.", "The capital of France is Paris.", "Lyon, I think."]
    ids = [
        smollm2.chat_ids([{"role": "user", "content": f"Rate this answer to 'capital of France?': {t}"}]) for t in texts
    ]
    ids += [smollm2.chat_ids([{"role": "user", "content": "Something else entirely."}])]
    digits = smollm2.tokenizer.convert_tokens_to_ids(list("0123456789"))
    shared = smollm2.next_token_logprobs(ids, digits, groups=["a", "a", "a", "b"])
    plain = smollm2.next_token_logprobs(ids, digits, groups=range(len(ids)))  # a key each: every prompt in full
    for x, y in zip(shared, plain):
        assert [x[d] for d in digits] == pytest.approx([y[d] for d in digits], abs=1e-4)


def test_ppl_scores_with_a_shared_prompt_equal_each_sequence_alone(smollm2):
    """SmolLM2 (49,152-token vocabulary, chat-template prompts): continuation scoring that prefills each prompt once
    for its candidates gives every token the log-probability of its own unpadded forward pass."""
    prompt = smollm2.chat_ids([{"role": "user", "content": "What is the capital of France? Answer in one line."}])
    texts = ["Paris.", "The capital of France is Paris, on the Seine.", "Lyon, I think."]
    conts = [smollm2.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    got = smollm2.continuation_logprobs([prompt] * 3, conts)
    for c, lps in zip(conts, got):
        seq = torch.tensor([prompt + c])
        with torch.no_grad():
            full = torch.log_softmax(smollm2.model(input_ids=seq).logits[0].float(), dim=-1)
        assert lps == pytest.approx([float(full[len(prompt) - 1 + k, t]) for k, t in enumerate(c)], abs=1e-3)


def test_continuous_batching_mixes_prompts_and_keeps_each_candidates_tokens(smollm2):
    """A decode step holds rows of prompts that waves of 2 would have separated, and every candidate gets
    the tokens the wave sampler gives it (its own uniforms; neighbours change only float rounding)."""
    from bon.engines.contract import SamplingSettings

    s = SamplingSettings(temperature=0.7, top_p=0.95, max_tokens=24)
    texts = ["Name a fruit.", "Say hello in French.", "What is 2+2?", "Name a colour.", "Count to three.", "Hi!"]
    prompts = [smollm2.chat_ids([{"role": "user", "content": t}]) for t in texts]
    waves = [group for k in range(0, 6, 2) for group in smollm2.sample(prompts[k : k + 2], 3, [50 + k, 51 + k], s)]
    session = smollm2.session(s, max_rows=9)
    for k, ids in enumerate(prompts):
        session.add(k, ids, 3, 50 + k)
    streamed = [session.result(k) for k in range(6)]
    assert [[c.token_ids for c in g] for g in streamed] == [[c.token_ids for c in g] for g in waves]
    assert [[c.seed for c in g] for g in streamed] == [[c.seed for c in g] for g in waves]
    assert session.stats.most_prompts_in_a_step >= 3  # rows of three prompts decoded in one step
    assert session.stats.peak_rows <= 9


def test_continuous_batching_holds_its_kv_budget(smollm2):
    from bon.engines.contract import EngineError, SamplingSettings

    s = SamplingSettings(temperature=1.0, top_p=1.0, max_tokens=16)
    prompts = [smollm2.chat_ids([{"role": "user", "content": f"Tell me about the number {i}."}]) for i in range(5)]
    budget = 4 * (max(map(len, prompts)) + 16)  # room for two prompts' two rows at a time, never three
    session = smollm2.session(s, max_rows=64, max_kv_tokens=budget)
    for k, ids in enumerate(prompts):
        session.add(k, ids, 2, k)
    assert all(len(session.result(k)) == 2 for k in range(5))
    assert 0 < session.stats.peak_kv_tokens <= budget and session.stats.peak_rows <= 4
    with pytest.raises(EngineError, match="policy.max_kv_tokens"):
        session.add("big", prompts[0], 8, 0)  # one prompt alone would exceed the budget: refused before any work


def _pause_all(loop, keys, keep):
    """Drive a pause/resume loop to the end; at each pause keep ``keep(partial)``; the partials seen per prompt."""
    seen: dict = {k: [] for k in keys}
    while True:
        loop.advance(keys)
        if not loop.paused():
            return seen
        for k in loop.paused():
            part = loop.partial(k)
            seen[k].append(part)
            loop.resume(k, keep(part))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_paused_rows_keep_their_cache_and_survivors_get_their_full_best_of_n_tokens(smollm2, temperature):
    """Early rejection on the decode loop: rows park after each chunk and resume without a prefill; a
    survivor's tokens are the ones full best-of-N gives that candidate, a rejected one's are their prefix,
    and the rows rejection frees are taken by the next prompts while others are parked. Greedy decoding
    must match exactly; sampled tokens may flip where the inverse CDF sits within float rounding of a
    boundary (other neighbours), so there most candidates must match: a cache or position wrong after
    resuming would change nearly every one."""
    from bon.engines.contract import SamplingSettings

    s = SamplingSettings(temperature=temperature, top_p=1.0, max_tokens=16)
    texts = ["Name a fruit.", "Say hello in French.", "Name a colour.", "Count to three."]
    prompts = [smollm2.chat_ids([{"role": "user", "content": t}]) for t in texts]
    full = smollm2.sample(prompts, 4, [7, 8, 9, 10], s)
    loop = smollm2.session(s, max_rows=8)
    for k, ids in enumerate(prompts):
        loop.add(k, ids, 4, 7 + k, pause_every=4)
    seen = _pause_all(loop, range(4), keep=lambda part: sorted(part)[:1])  # the lowest index goes on
    got = [loop.result(k) for k in range(4)]
    assert loop.stats.prefills == 4 and loop.stats.peak_rows <= 8
    assert loop.stats.most_prompts_in_a_step >= 2
    same = total = 0
    for k in range(4):
        assert seen[k] and all(len(t) == 4 * (r + 1) for r, part in enumerate(seen[k]) for t in part.values())
        assert sum(c.finish_reason != "rejected" for c in got[k]) >= 1
        for a, b in zip(got[k], full[k]):
            assert a.seed == b.seed
            total += 1
            if a.finish_reason == "rejected":
                assert len(a.token_ids) % 4 == 0
                same += b.token_ids[: len(a.token_ids)] == a.token_ids
            else:
                same += (a.token_ids, a.finish_reason) == (b.token_ids, b.finish_reason)
    assert same == total if temperature == 0 else same >= 0.75 * total
    with pytest.raises(KeyError, match="never added"):
        loop.result("other")


def test_resubmitting_loop_pauses_and_rejects_like_the_decode_loop(smollm2):
    from bon.engines.contract import SamplingSettings
    from bon.pipeline.early_rejection import Resubmit

    s = SamplingSettings(temperature=1.0, top_p=1.0, max_tokens=10)
    prompts = [smollm2.chat_ids([{"role": "user", "content": t}]) for t in ["Name a fruit.", "Say hi."]]
    loop = Resubmit(smollm2, s)
    for k, ids in enumerate(prompts):
        loop.add(k, ids, 4, k, pause_every=4)
    seen = _pause_all(loop, range(2), keep=lambda part: sorted(part)[:2])
    for k in range(2):
        got = loop.result(k)
        assert [len(t) for part in seen[k][:1] for t in part.values()] == [4] * len(seen[k][0])
        assert all(len(c.token_ids) <= 10 for c in got) and any(c.finish_reason == "rejected" for c in got)
        kept = [c for c in got if c.finish_reason != "rejected"]
        assert kept and all(c.finish_reason == "stop" or len(c.token_ids) == 10 for c in kept)

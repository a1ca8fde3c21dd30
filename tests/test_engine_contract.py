"""The engine layer's written contract on tiny real models: decode loops found by type, explicit request state,
prefill memory, sliding windows, the progress guard, one end-of-sequence rule and vLLM's driver (on a fake engine;
the real one is in tests/test_vllm.py)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from bon.core.config import EarlyRejectionConfig, PolicyConfig
from bon.core.records import Prompt
from bon.engines.contract import (
    DecodeLoop,
    EngineError,
    EngineInvariantError,
    PausableLoop,
    Sample,
    SamplingSettings,
    StreamingModel,
    without_end,
)
from bon.engines.memory import LOGIT_BYTES
from bon.engines.stream import DecodeSession, Status, WaveLoop
from bon.judges.length import LengthJudge
from bon.pipeline.early_rejection import EarlyRejectionPolicy, Resubmit
from bon.pipeline.policy import EnginePolicy
from tests.helpers import EOS, tiny_engine
from tests.helpers import prompts_of_random_tokens as _prompts

GREEDY = SamplingSettings(temperature=0.0, top_p=1.0, max_tokens=8)


# -- decode loops, found by type


def test_every_loop_is_found_by_its_type():
    engine = tiny_engine()
    assert isinstance(engine, StreamingModel)
    loop = engine.session(GREEDY, max_rows=8, max_kv_tokens=4096)
    assert isinstance(loop, PausableLoop) and isinstance(loop, DecodeLoop)
    waves = tiny_engine("mistral", sliding_window=16).session(GREEDY, max_rows=8, max_kv_tokens=4096)
    assert isinstance(waves, DecodeLoop) and not isinstance(waves, PausableLoop)
    assert isinstance(Resubmit(engine, GREEDY), PausableLoop)


class NoLoopModel:
    """A `LanguageModel` without a decode loop (a user's own engine): it samples batch by batch."""

    name, context = "no-loop", None

    def __init__(self):
        self.tokenizer = SimpleNamespace(decode=lambda ids, skip_special_tokens=True: " ".join(map(str, ids)))

    def chat_ids(self, messages, fix=""):
        return [1, 2, 3]

    def text_ids(self, text):
        return [1, 2, 3]

    def sample(self, prompts, n, seeds, settings):
        return [[Sample("x", len(p), 1, "stop", s, (7,)) for _ in range(n)] for p, s in zip(prompts, seeds)]

    def next_token_logprobs(self, prompts, token_ids, batch_size=8, groups=None):
        return [{} for _ in prompts]

    def continuation_logprobs(self, prompts, continuations, batch_size=8):
        return [[] for _ in prompts]


def test_an_engine_without_a_loop_says_so_in_its_type_and_samples_by_batch():
    policy = EnginePolicy(PolicyConfig(max_tokens=4), engine=NoLoopModel())
    assert not isinstance(policy.engine, StreamingModel)
    assert policy.loop is None and not policy.streams() and policy.rows() == 1
    assert len(policy.generate([Prompt("a", "hi")], 3, seed=0)) == 3
    with pytest.raises(TypeError, match="has no decode loop"):
        policy.start([Prompt("a", "hi")], 3, seed=0)
    early = EarlyRejectionPolicy(policy, LengthJudge(), EarlyRejectionConfig(chunk_tokens=2, keep_fraction=0.5))
    assert isinstance(early._session(), Resubmit)  # it pauses by resubmitting through `sample`


# -- explicit request state


def test_a_request_goes_queued_decoding_paused_finished_and_a_duplicate_key_is_refused():
    engine = tiny_engine()
    engine.eos_ids = frozenset({64})  # outside the 64-token vocabulary: every row decodes to its max_tokens
    loop = engine.session(SamplingSettings(1.0, 1.0, 8), max_rows=8, max_kv_tokens=4096)
    assert isinstance(loop, DecodeSession)
    ids = _prompts(2)
    loop.add("a", ids[0], 2, 0, pause_every=4)
    assert loop.requests["a"].status is Status.QUEUED
    with pytest.raises(EngineError, match="'a' is already in this decode session"):
        loop.add("a", ids[1], 2, 0)
    loop.advance(["a"])
    # after 4 tokens both rows sit out of the decode steps, their slots and cache kept, and wait
    assert loop.requests["a"].status is Status.PAUSED
    assert loop.paused() == ["a"] and len(loop.batch) == 2 and loop.batch.decoding() == []
    assert {i: len(t) for i, t in loop.partial("a").items()} == {0: 4, 1: 4}
    with pytest.raises(KeyError, match="is paused"):
        loop.result("a")
    prefills = engine.forward
    calls: list[int] = []
    engine.forward = lambda ids, *a, **k: (calls.append(ids.shape[1]), prefills(ids, *a, **k))[1]
    loop.resume("a", [0])  # candidate 1 is rejected; candidate 0 rejoins at the next step
    assert loop.requests["a"].status is Status.DECODING and loop.paused() == []
    loop.advance(["a"])  # the last 4 tokens reach max_tokens: finished, not paused again
    assert set(calls) == {1}, "a resumed row is never prefilled again"
    assert loop.requests["a"].status is Status.FINISHED and loop.finished() == ["a"]
    samples = loop.result("a")
    assert [(s.finish_reason, s.completion_tokens) for s in samples] == [("length", 8), ("rejected", 4)]
    assert "a" not in loop.requests
    with pytest.raises(KeyError, match="never added"):
        loop.result("a")


def test_the_batch_checks_its_rows_and_tensors_agree_even_under_python_O():
    engine = tiny_engine()
    loop = engine.session(GREEDY, max_rows=8, max_kv_tokens=4096)
    assert isinstance(loop, DecodeSession)
    for k, ids in enumerate(_prompts(2)):
        loop.add(k, ids, 2, k)
    loop._step()  # admits both prompts: four rows
    assert len(loop.batch) == 4
    loop.batch.check()
    loop.batch.pos = loop.batch.pos[:3]  # a row's position lost: out of order with the cache and the owners
    with pytest.raises(EngineInvariantError, match="out of order"):
        loop.batch.check()


def test_rows_held_beyond_the_budget_trip_the_loops_own_check():
    engine = tiny_engine()
    loop = engine.session(GREEDY, max_rows=8, max_kv_tokens=4096)
    assert isinstance(loop, DecodeSession)
    loop.add(0, _prompts(1)[0], 2, 0)
    loop._step()
    loop.memory = engine.memory(8, 1)  # what the loop holds is now over budget: `_measure` must say so, not go on
    with pytest.raises(EngineInvariantError, match="more than max_kv_tokens 1"):
        loop._measure()


def test_the_loops_invariants_are_not_asserts():
    """`python -O` strips assert statements: the decode loop's checks must survive it."""
    import ast
    import inspect

    import bon.engines.stream as stream

    asserts = [n.lineno for n in ast.walk(ast.parse(inspect.getsource(stream))) if isinstance(n, ast.Assert)]
    assert asserts == [], f"bon/engines/stream.py has assert statements on lines {asserts}"


# -- failure modes of the engine layer


def test_a_prefill_holds_only_each_prompts_last_logits_within_the_kv_budget():
    """Prefilling four 120-token prompts of a 4,096-token vocabulary: the logits the model computes are 4 rows,
    not 4 x 120 (1.9 MB that neither budget sees); measured at the model's output layer."""
    engine = tiny_engine(vocab_size=4096)
    seen: list[int] = []
    hook = engine.model.lm_head.register_forward_hook(lambda m, i, out: seen.append(out.numel() * out.element_size()))
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 4096, (120,), generator=g).tolist() for _ in range(4)]
    budget = 4 * 2 * (120 + 8)  # the four prompts' two rows each, grown by max_tokens
    loop = engine.session(GREEDY, max_rows=8, max_kv_tokens=budget)
    for k, ids in enumerate(prompts):
        loop.add(k, ids, 2, k)
    loop.result(0)
    hook.remove()
    memory = engine.memory(8, budget)
    prefill = seen[0]  # the first forward is the prefill of all four prompts
    assert prefill == 4 * 4096 * LOGIT_BYTES
    assert prefill <= memory.prefill_bytes(4, 120) and prefill < budget * memory.kv_per_token
    assert max(seen) == 8 * 4096 * LOGIT_BYTES  # a decode step: one position of each of the 8 rows


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_decode_step_moves_each_rows_uniform_and_token_id_never_its_logits(temperature):
    """Sampling runs where the logits are: per sampled token the loop moves its uniform (8 bytes, when sampling) to
    the model's device and its id (8 bytes) back, not the 4096 float32 logits of its row (16 KiB), and per candidate
    its three confidence sums once; the tokens are those of the wave sampler."""
    engine = tiny_engine(vocab_size=4096)
    settings = SamplingSettings(temperature, 0.95, 8)
    prompts = _prompts(3)
    loop = engine.session(settings, max_rows=8, max_kv_tokens=4096)
    assert isinstance(loop, DecodeSession)
    for k, ids in enumerate(prompts):
        loop.add(k, ids, 2, k)
    got = [loop.result(k) for k in range(3)]
    per_token = 8 + (8 if temperature else 0)
    per_candidate = 24  # its confidence sums, once, when its row leaves
    moved = per_token * loop.stats.tokens_sampled + per_candidate * 6
    assert loop.stats.tokens_sampled >= 6 and loop.stats.moved_bytes == moved
    alone = [engine.sample([ids], 2, [k], settings)[0] for k, ids in enumerate(prompts)]
    assert [[s.token_ids for s in g] for g in got] == [[s.token_ids for s in g] for g in alone]


def test_a_sliding_window_model_keeps_the_row_and_kv_budgets_in_waves():
    engine = tiny_engine("mistral", sliding_window=16)
    assert engine.sliding
    prompts = _prompts(5)
    budget = 2 * (24 + 8)  # one prompt's two rows at a time
    loop = engine.session(GREEDY, max_rows=2, max_kv_tokens=budget)
    assert isinstance(loop, WaveLoop)
    for k, ids in enumerate(prompts):
        loop.add(k, ids, 2, k)
    got = [loop.result(k) for k in range(5)]
    assert loop.stats.peak_rows <= 2 and 0 < loop.stats.peak_kv_tokens <= budget
    alone = [engine.sample([ids], 2, [k], GREEDY)[0] for k, ids in enumerate(prompts)]
    assert [[s.token_ids for s in g] for g in got] == [[s.token_ids for s in g] for g in alone]
    with pytest.raises(EngineError, match="cannot pause"):
        loop.session.add("x", prompts[0], 2, 0, pause_every=4)


class StallingModel(NoLoopModel):
    """Gives a chunk of two tokens once, then chunks without a token that end 'length' (a server at its limit)."""

    def sample(self, prompts, n, seeds, settings):
        if len(prompts[0]) == 3:  # the first round: the bare prompt
            return [[Sample("x", 3, 2, "length", s, (5, 6)) for _ in range(n)] for s in seeds]
        return [[Sample("", len(p), 0, "length", s, ())] for p, s in zip(prompts, seeds)]


def test_a_chunk_without_progress_ends_its_candidate_flagged_instead_of_looping():
    loop = Resubmit(StallingModel(), SamplingSettings(1.0, 1.0, 10))
    loop.add("a", [1, 2, 3], 2, 0, pause_every=2)
    rounds = 0
    while True:
        loop.advance(["a"])
        if not loop.paused():
            break
        rounds += 1
        assert rounds < 5, "resubmitted without progress"
        loop.resume("a", [0, 1])
    samples = loop.result("a")
    assert [s.token_ids for s in samples] == [(5, 6), (5, 6)]
    assert all(s.finish_reason == "length" and "returned no token for a chunk" in (s.flag or "") for s in samples)
    policy = EarlyRejectionPolicy(
        EnginePolicy(PolicyConfig(max_tokens=10), engine=StallingModel()),
        LengthJudge(),
        EarlyRejectionConfig(chunk_tokens=2, keep_fraction=0.99),
    )
    cands = policy.generate([Prompt("a", "hi")], 2, seed=0)
    assert all("returned no token for a chunk" in (c.flag or "") for c in cands)


def test_one_end_of_sequence_rule_for_every_engine(shared_data):
    """Llama-3 chat ends on two ids: the transformers loop stops on either and records neither; vLLM's outputs
    carry the end id they stopped on, and are recorded the same way (only a final end id dropped)."""
    from transformers import GenerationConfig

    from bon.core.config import ModelConfig
    from bon.engines.tokens import TokenizerOnly, end_ids
    from bon.engines.vllm import samples_of

    tok = TokenizerOnly(ModelConfig(model=str(shared_data / "tokenizers" / "ggml-vocab-llama-bpe.gguf"))).tokenizer
    eot, eos = tok.convert_tokens_to_ids(["<|eot_id|>", "<|end_of_text|>"])
    ends = end_ids(tok, GenerationConfig(eos_token_id=[eot, eos]))
    assert {eot, eos} <= ends
    for end in (eot, eos):
        out = SimpleNamespace(index=0, text="Hi", token_ids=[13347, 0, end], finish_reason="stop")
        (vllm_sample,) = samples_of([out], 5, 1, ends)
        assert vllm_sample.token_ids == (13347, 0) and vllm_sample.completion_tokens == 3
    assert without_end((eot, 5), "stop", ends) == (eot, 5)  # an end id inside the answer is the answer's
    assert without_end((5, eot), "length", ends) == (5, eot)


def test_the_transformers_loop_stops_on_every_end_id_of_the_generation_config():
    """A tiny model whose generation config has two end ids, made to emit 5, 6, then the second one."""
    engine = tiny_engine()
    engine.model.generation_config.eos_token_id = [EOS, 3]
    engine._ready()
    assert engine.eos_ids == {EOS, 3}
    script = [5, 6, 3]
    real = engine.forward

    calls: list[int] = []

    def scripted(ids, mask, positions, cache=None, use_cache=True):
        logits, grown = real(ids, mask, positions, cache, use_cache)
        step = len(calls)  # tokens generated before this forward's output token (the first call is the prefill)
        calls.append(step)
        forced = torch.full_like(logits, -1e9)
        forced[:, script[min(step, 2)]] = 0.0
        return forced, grown

    engine.forward = scripted  # type: ignore[method-assign]
    (got,) = engine.sample([list(range(3, 15))], 1, [0], GREEDY)[0:1]
    assert [(s.token_ids, s.finish_reason, s.completion_tokens) for s in got] == [((5, 6), "stop", 3)]


# -- vLLM's driver, on a fake engine core


class FakeCore:
    """The LLMEngine calls the driver makes; every request finishes after ``steps`` steps."""

    def __init__(self, steps: int = 3, fail_at: int | None = None):
        self.live: dict[str, int] = {}
        self.steps, self.fail_at, self.stepped, self.aborted = steps, fail_at, 0, []

    def add_request(self, rid, prompt, params):
        assert params.output_kind == "final"
        self.live[rid] = 0

    def has_unfinished_requests(self):
        return bool(self.live)

    def abort_request(self, rids):
        self.aborted += list(rids)
        for r in rids:
            self.live.pop(r, None)

    def step(self):
        self.stepped += 1
        if self.stepped == self.fail_at:
            raise KeyboardInterrupt
        out = []
        for rid in list(self.live):
            self.live[rid] += 1
            if self.live[rid] >= self.steps:
                del self.live[rid]
                out.append(SimpleNamespace(request_id=rid, finished=True))
        return out


class Params:
    def __init__(self):
        self.output_kind = "cumulative"

    def clone(self):
        return copy.deepcopy(self)


def test_the_driver_leaves_the_callers_params_alone_and_aborts_what_an_interrupt_abandons():
    from bon.engines.vllm import Driver

    core = FakeCore(steps=3, fail_at=2)
    driver = Driver(core, "fake", final_only="final")
    params = Params()
    rids = [driver.add([1, 2], params) for _ in range(3)]
    assert params.output_kind == "cumulative"  # the caller's object is untouched
    with pytest.raises(KeyboardInterrupt):
        driver.wait(rids[:1])
    assert sorted(core.aborted) == sorted(rids) and not core.has_unfinished_requests() and not driver.open
    core.fail_at = None
    assert driver.wait([driver.add([3], params)])[0].finished  # the driver goes on after an interrupt


def test_a_closed_vllm_session_aborts_the_prompts_nobody_collected():
    from bon.engines.vllm import Driver, VLLMSession

    core = FakeCore(steps=2)
    model = SimpleNamespace(
        driver=Driver(core, "fake", final_only="final"),
        check_fits=lambda lengths, generated: None,
        params=lambda n, seed, settings: Params(),
        samples=lambda request, ids, seed: [request],
    )
    session = VLLMSession(model, GREEDY, 8)  # type: ignore[arg-type]
    session.add(0, [1, 2], 1, 0)
    session.add(1, [1, 2], 1, 1)
    assert len(session.result(0)) == 1  # prompt 1 finished alongside, uncollected
    session.add(2, [1, 2], 1, 2)
    session.add(3, [1, 2], 1, 3)
    with pytest.raises(EngineError, match="already in this decode session"):
        session.add(3, [1], 1, 0)
    session.close()
    assert len(core.aborted) == 2 and not core.has_unfinished_requests()  # prompts 2 and 3, still decoding
    assert not model.driver.finished and not model.driver.open  # prompt 1's output forgotten


def _direct_continuation_logprobs(engine, prompt, continuation):
    """Every position's log-softmax of one unpadded sequence: what continuation scoring must equal."""
    seq = torch.tensor([prompt + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(engine.model(input_ids=seq).logits[0].float(), dim=-1)
    return [float(logprobs[len(prompt) - 1 + k, t]) for k, t in enumerate(continuation)]


def test_candidates_of_one_prompt_share_its_prefill_and_score_as_alone():
    """Three continuations per prompt (ppl's N candidates): the prompt is run once per group, only positions that
    predict a continuation token get logits, and each score equals the unpadded sequence's own."""
    engine = tiny_engine()
    g = torch.Generator().manual_seed(3)
    prompts, conts = [], []
    for p in range(3):
        prompt = torch.randint(3, 64, (40 + 7 * p,), generator=g).tolist()
        for n in (1, 5, 12):
            prompts.append(prompt)
            conts.append(torch.randint(3, 64, (n + p,), generator=g).tolist())
    prompts.append(prompts[0][:10])  # a short prompt alone: no prefix worth sharing
    conts.append([5, 6, 7])
    seen: list[tuple[int, int]] = []  # (tokens run, logit positions) per model call

    def record(module, args, kwargs, out):
        seen.append((kwargs["input_ids"].shape[1], out.logits.shape[1]))

    hook = engine.model.register_forward_hook(record, with_kwargs=True)
    got = engine.continuation_logprobs(prompts, conts, batch_size=8)
    hook.remove()
    for p, c, lps in zip(prompts, conts, got):
        assert lps == pytest.approx(_direct_continuation_logprobs(engine, p, c), abs=1e-4)
    # 3 prefills of a prompt's first len - 1 tokens (one logit each), 3 suffix batches, the short one alone
    assert [w for w, k in seen if k == 1] == [39, 46, 53]
    suffix_keeps = sorted(k for w, k in seen if k > 1)
    assert suffix_keeps == [4, 13, 14, 15]  # the longest continuation + 1 per batch, never the prompt's width
    assert sum(w for w, _ in seen) < sum(len(p) + len(c) for p, c in zip(prompts, conts)) / 2


def test_scoring_forwards_are_batched_by_padded_tokens_longest_first():
    from bon.engines.memory import CPU_FORWARD_TOKENS

    memory = tiny_engine().memory()
    lengths = [10, 900, 600, 30, 30, 2000, 120]
    batches = memory.forward_batches(lengths, batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each index once
    assert batches[0] == [5]  # longer than the budget: alone
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * lengths[b[0]] <= CPU_FORWARD_TOKENS)
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    assert [6, 3, 4] in batches  # equal lengths keep their order
    assert memory.forward_batches([], 8) == []


def test_batched_scoring_equals_one_row_at_a_time():
    engine = tiny_engine()
    prompts = _prompts(9)
    together = engine.next_token_logprobs(prompts, [1, 2, 3], batch_size=4)
    alone = [engine.next_token_logprobs([p], [1, 2, 3], batch_size=1)[0] for p in prompts]
    for a, b in zip(together, alone):
        assert a == pytest.approx(b, abs=1e-4)
    conts = [p[:3] for p in prompts]
    together_c = engine.continuation_logprobs(prompts, conts, batch_size=4)
    for p, c, got in zip(prompts, conts, together_c):
        assert got == pytest.approx(engine.continuation_logprobs([p], [c], batch_size=1)[0], abs=1e-4)


@pytest.mark.parametrize("reason", ["abort", "error", None])
def test_a_sequence_vllm_did_not_finish_is_never_recorded_as_finished(reason):
    from bon.engines.vllm import samples_of

    done = SimpleNamespace(index=0, text="A full answer.", token_ids=[5, 6, EOS], finish_reason="stop")
    cut = SimpleNamespace(index=1, text="A cut", token_ids=[5], finish_reason=reason)
    with pytest.raises(EngineError, match=f"sample 1 .*finish_reason {reason!r}.*rerun"):
        samples_of([done, cut], 4, 1, frozenset({EOS}))
    assert [s.finish_reason for s in samples_of([done], 4, 1, frozenset({EOS}))] == ["stop"]

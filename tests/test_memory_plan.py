"""One memory plan: the budgets `bon check` prints are the ones the engine admits against, for the policy and for a
judge that writes, and prefills stay inside the plan's bytes."""

from __future__ import annotations

import pytest

from bon.core.errors import SizeError
from bon.engines import memory
from bon.engines.contract import EngineError, SamplingSettings
from bon.engines.memory import kv_need, weight_bytes
from tests.conftest import run_config
from tests.helpers import prompts_of_random_tokens, tiny_engine

GREEDY = SamplingSettings(temperature=0.0, top_p=1.0, max_tokens=8)


def _check_rows(cfg) -> dict[str, str]:
    from bon.core.judging import build_judge
    from bon.pipeline.preflight import check

    return dict(check(cfg, build_judge(cfg.judge.name)).rows)


def test_weights_are_estimated_from_the_config_to_the_parameter():
    """SmolLM2-135M's config gives its 134,515,008 parameters (tied embeddings), so preflight and the engine leave
    the same room for them without reading the weights."""
    from transformers import LlamaConfig

    smol = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    )
    assert weight_bytes(smol, 4) == 134_515_008 * 4


@pytest.mark.parametrize("budget", [None, 20000])
def test_bon_check_prints_the_kv_budget_the_engine_admits_against(tmp_path, prompts_file, tiny_lm, budget):
    from bon.engines.hf import HFModel

    sets = [f"policy.model={tiny_lm}"] + ([f"policy.max_kv_tokens={budget}"] if budget else [])
    cfg = run_config(tmp_path, prompts_file, *sets)
    printed = _check_rows(cfg)["policy KV cache"]
    engine = HFModel(cfg.policy)
    loop = engine.session(GREEDY, cfg.policy.max_rows, cfg.policy.max_kv_tokens)
    assert printed.startswith(f"at most {loop.max_kv_tokens:,} tokens")  # type: ignore[attr-defined]
    assert loop.max_rows == 128


def test_a_prompt_preflight_passes_is_admitted_and_one_token_less_is_refused_by_both(tmp_path, prompts_file, tiny_lm):
    """The admission rule is one function: at a budget of exactly the longest prompt's n rows both pass; one token
    less, preflight refuses before any work and the engine would refuse the same prompt."""
    from bon.core.judging import build_judge
    from bon.core.prompts import load_prompts
    from bon.engines.hf import HFModel
    from bon.engines.tokens import TokenizerOnly
    from bon.pipeline.policy import PolicyPrompts
    from bon.pipeline.preflight import lengths

    cfg = run_config(tmp_path, prompts_file, f"policy.model={tiny_lm}", "policy.max_tokens=8")
    prompts = load_prompts(cfg.prompts)
    ids = [PolicyPrompts(cfg.policy, TokenizerOnly(cfg.policy)).prompt_ids(p) for p in prompts]
    longest = max(ids, key=len)
    exact = kv_need(cfg.n, len(longest), 8)
    engine = HFModel(cfg.policy)
    for budget, ok in [(exact, True), (exact - 1, False)]:
        cfg = run_config(
            tmp_path, prompts_file, f"policy.model={tiny_lm}", "policy.max_tokens=8", f"policy.max_kv_tokens={budget}"
        )
        loop = engine.session(SamplingSettings(0.7, 0.95, 8), None, budget)
        if ok:
            lengths(cfg, prompts, build_judge("length"))
            loop.add("longest", longest, cfg.n, 0)
        else:
            with pytest.raises(
                SizeError, match=f"policy.max_kv_tokens {budget} cannot hold 5 prompts' .* needs {exact}"
            ):
                lengths(cfg, prompts, build_judge("length"))
            with pytest.raises(EngineError, match=f"{exact} KV tokens"):
                loop.add("longest", longest, cfg.n, 0)


def test_free_memory_short_of_the_plan_is_said_in_one_line_before_the_run(tmp_path, prompts_file, tiny_lm, monkeypatch):
    from bon.core.judging import build_judge
    from bon.core.prompts import load_prompts
    from bon.pipeline.preflight import lengths

    cfg = run_config(tmp_path, prompts_file, f"policy.model={tiny_lm}")
    before = _check_rows(cfg)["policy KV cache"]
    assert not any("free now" in n for n in lengths(cfg, load_prompts(cfg.prompts), build_judge("length")).notes)
    monkeypatch.setattr(memory, "_mem_available", lambda: 2**20)  # other processes hold all but a MiB
    notes = [n for n in lengths(cfg, load_prompts(cfg.prompts), build_judge("length")).notes if "free now" in n]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert notes[0].startswith("policy KV budget") and "the run keeps the budget `bon check` showed" in notes[0]
    rows = _check_rows(cfg)
    assert rows["policy KV cache"] == before  # the budget does not move with what else runs
    assert rows["policy memory now"] == notes[0]


def _forward_widths(engine, monkeypatch) -> list[int]:
    """The token width of every forward pass ``engine`` runs from now on (a prefill: more than one)."""
    widths: list[int] = []
    forward = engine.forward
    monkeypatch.setattr(engine, "forward", lambda ids, *a, **k: (widths.append(ids.shape[1]), forward(ids, *a, **k))[1])
    return widths


def test_prompts_prefilled_together_stay_inside_the_plans_bytes(monkeypatch):
    """A share that holds two prompts' prefill at a time: four prompts join in two prefills, tokens unchanged."""
    engine = tiny_engine()
    prompts = prompts_of_random_tokens(4)
    alone = engine.sample(prompts, 2, [0, 1, 2, 3], GREEDY)
    width = max(map(len, prompts))
    plan = engine.memory(8, 4096)
    monkeypatch.setattr(memory, "memory_share", lambda cuda, total=False, device=None: plan.prefill_bytes(2, width))
    loop = engine.session(GREEDY, 8, 4096)
    widths = _forward_widths(engine, monkeypatch)
    for k, ids in enumerate(prompts):
        loop.add(k, ids, 2, k)
    got = [loop.result(k) for k in range(4)]
    prefills = [w for w in widths if w > 1]
    assert len(prefills) == 2  # not one prefill of four prompts
    assert [[s.token_ids for s in g] for g in got] == [[s.token_ids for s in g] for g in alone]
    with pytest.raises(EngineError, match="prefill"):
        engine.session(GREEDY, 8, 4096).add("long", list(range(3, 3 + 4 * width)), 1, 0)


def _tiny_plan_for(engine, monkeypatch, kv_tokens: int) -> None:
    """``engine``'s default plan holds ``kv_tokens`` KV tokens, as on a small device."""
    from bon.engines.hf import memory_of

    monkeypatch.setattr(
        engine,
        "memory",
        lambda max_rows=None, max_kv_tokens=None: memory_of(engine.model, engine.device, max_rows, kv_tokens),
    )


def test_a_judge_batch_beyond_a_small_kv_budget_decodes_in_several_admissions_with_the_same_texts(monkeypatch):
    engine = tiny_engine()
    prompts = prompts_of_random_tokens(6)
    settings = SamplingSettings(temperature=0.0, top_p=1.0, max_tokens=12)
    one_wave = engine.sample(prompts, 1, [0] * 6, settings)
    _tiny_plan_for(engine, monkeypatch, 2 * (max(map(len, prompts)) + 12))  # two judge prompts at a time
    widths = _forward_widths(engine, monkeypatch)
    admitted = engine.sample(prompts, 1, [0] * 6, settings)
    assert len([w for w in widths if w > 1]) >= 3  # six prompts, two at a time
    assert [g[0].token_ids for g in admitted] == [g[0].token_ids for g in one_wave]


@pytest.mark.slow
def test_autoj_on_smollm2_scores_the_same_in_several_admissions_as_in_one(smollm2, monkeypatch):
    from bon.core.records import Candidate, Prompt
    from bon.judges.autoj import AutoJOptions, AutoJudge

    prompts = [Prompt(f"p{i}", f"Name a colour, number {i}.") for i in range(3)]
    cands = [
        Candidate(p.id, k, f"{'Blue' if k else 'Red'} is a colour.", k, 9, 6, "stop", "t")
        for p in prompts
        for k in (0, 1)
    ]
    judge = AutoJudge(AutoJOptions(max_tokens=16, rating_logprob=False), engine=smollm2)
    wave = judge.score([p for p in prompts for _ in (0, 1)], cands)
    longest = max(len(judge.prompt_ids(p, c.text)) for p, c in zip([p for p in prompts for _ in (0, 1)], cands))
    _tiny_plan_for(smollm2, monkeypatch, 2 * (longest + 16))
    split = judge.score([p for p in prompts for _ in (0, 1)], cands)
    assert [(j.score, j.flag, j.raw) for j in split] == [(j.score, j.flag, j.raw) for j in wave]


def test_preflight_refuses_a_writing_judge_whose_prompt_cannot_fit_its_models_plan(
    tmp_path, prompts_file, tiny_lm, monkeypatch
):
    from bon.core.judging import build_judge
    from bon.core.prompts import load_prompts
    from bon.pipeline.preflight import lengths

    cfg = run_config(
        tmp_path,
        prompts_file,
        f"policy.model={tiny_lm}",
        "policy.max_kv_tokens=2000",  # the policy fits: the judge is what this machine cannot hold
        "judge.name=autoj",
        f"judge.options.model={tiny_lm}",
        "judge.options.max_tokens=64",
    )
    judge = build_judge("autoj", cfg.judge.options)
    lengths(cfg, load_prompts(cfg.prompts), judge)  # fits the default plan
    monkeypatch.setattr(memory, "memory_bytes", lambda cuda, total=False, device=None: 2**30)  # a 1 GiB machine
    monkeypatch.setattr(memory, "weight_bytes", lambda config, dtype_bytes: 2**30 - 4 * 300 * 256)
    with pytest.raises(SizeError, match=r"^the judge prompt of 'q\d' \(.* tokens, 64 generated\) does not fit"):
        lengths(cfg, load_prompts(cfg.prompts), judge)


def test_weights_that_fill_the_machine_are_refused_by_name(shared_data, tmp_path):
    """Llama-2-7B in float32 (about 25 GiB by its config) cannot leave room for any KV cache on a 24 GiB machine:
    preflight says so, not that a one-token budget cannot hold the prompts."""
    from bon.core.config import RunConfig
    from bon.engines.tokens import TokenizerOnly
    from bon.pipeline.preflight import policy_memory

    path = shared_data / "tokenizers" / "ggml-vocab-llama-spm.gguf"  # Llama-2-7B's config
    if not path.exists():
        pytest.skip(f"{path} is absent")
    cfg = RunConfig(output_dir=tmp_path, policy={"model": str(path), "device": "cpu"})
    tokens = TokenizerOnly(cfg.policy)
    if memory.memory_bytes(False, total=True) > 30 * 2**30:
        pytest.skip("this machine holds a 7B model in float32")
    with pytest.raises(SizeError, match=r"^the weights, about 2\d\.\d GiB in float32 .* fill all this machine's RAM"):
        policy_memory(cfg, tokens)
    policy_memory(cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"dtype": "bfloat16"})}), tokens)

"""Model-based judges for real on this CPU: MiniLM, SmolLM2, and a tiny random reward model."""

import pytest
import torch

from bon.core.config import ModelConfig
from bon.core.records import Candidate, Prompt
from bon.engines.models import embedded_path
from bon.judges import build_judge
from bon.judges.autoj import AutoJOptions, AutoJudge
from bon.judges.model_judge import prompts_by_id
from bon.judges.ppl import PPLJudge
from bon.judges.reward_model import RewardModelJudge, RewardModelOptions
from bon.pipeline.selection import select
from tests.helpers import tokens_run

pytestmark = pytest.mark.slow

PROMPTS = [
    Prompt("f", "What is the capital of France?", reference="The capital of France is Paris."),
    Prompt("x", "Say something.", reference=None),
]
TEXTS = [
    "Paris is the capital of France.",
    "I like turtles.",
    "France's capital city is Paris.",
    "The moon is made of rock.",
]
CANDS = [Candidate("f", i, t, None, 1, 1, "stop", "x") for i, t in enumerate(TEXTS)] + [
    Candidate("x", 0, "Hello.", None, 1, 1, "stop", "x")
]


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModel, AutoTokenizer

    path = embedded_path("all-MiniLM-L6-v2")
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)


def embed_by_hand(minilm, text):
    tok, model = minilm
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state[0]
    v = hidden.mean(0)  # one unpadded sentence: the mean over its tokens
    return v / v.norm()


def test_cosine_against_hand_computed_embeddings(minilm):
    out = build_judge("cosine").score(PROMPTS, CANDS)
    ref = embed_by_hand(minilm, PROMPTS[0].reference)
    by_hand = [float(embed_by_hand(minilm, t) @ ref) for t in TEXTS]
    assert [j.score for j in out[:4]] == pytest.approx(by_hand, abs=1e-5)
    assert select("f", out[:4]).chosen_index == by_hand.index(max(by_hand)) and by_hand.index(max(by_hand)) in (0, 2)
    assert out[4].score is None and out[4].flag == "the prompt has no reference"


def test_cosine_against_the_instruction_needs_no_reference(minilm):
    judge = build_judge("cosine", {"against": "instruction"})
    assert not judge.needs_reference and build_judge("cosine").needs_reference
    out = judge.score(PROMPTS, CANDS)
    by_hand = [
        float(embed_by_hand(minilm, c.text) @ embed_by_hand(minilm, p.instruction))
        for p, c in zip(prompts_by_id(PROMPTS, CANDS), CANDS)
    ]
    assert [j.score for j in out] == pytest.approx(by_hand, abs=1e-5)  # the prompt without a reference too


def test_a_text_given_beside_each_candidate_is_embedded_once(minilm):
    """The reference (or instruction) of a prompt's N candidates is one text: embedded once, not N times."""
    from bon.engines.hf import load_embedder

    embedder = load_embedder(str(embedded_path("all-MiniLM-L6-v2")))
    rows: list[int] = []
    hook = embedder.model.register_forward_pre_hook(
        lambda m, args, kw: rows.append(len(kw["input_ids"])), with_kwargs=True
    )
    try:
        got = embedder.embed([*TEXTS, PROMPTS[0].reference] + [PROMPTS[0].reference] * 3 + [TEXTS[1]])
    finally:
        hook.remove()
    assert sum(rows) == 5  # the four texts and the reference
    assert got[4] == got[5] == got[7] and got[8] == got[1]
    assert got[4] == pytest.approx(embed_by_hand(minilm, PROMPTS[0].reference).tolist(), abs=1e-5)


def test_consistency_is_mean_similarity_to_the_others(minilm):
    out = build_judge("consistency").score(PROMPTS, CANDS)
    vecs = [embed_by_hand(minilm, t) for t in TEXTS]
    by_hand = [sum(float(vecs[i] @ vecs[j]) for j in range(4) if j != i) / 3 for i in range(4)]
    assert [j.score for j in out[:4]] == pytest.approx(by_hand, abs=1e-5)
    assert out[4].score is None and "no other candidate" in out[4].flag


def test_ppl_is_mean_token_logprob(smollm2):
    out = PPLJudge(engine=smollm2).score(PROMPTS, CANDS[:2])
    for c, j in zip(CANDS[:2], out):
        ctx = smollm2.chat_ids([{"role": "user", "content": PROMPTS[0].instruction}])
        target = smollm2.tokenizer.encode(c.text, add_special_tokens=False)
        with torch.no_grad():
            logits = smollm2.model(torch.tensor([ctx + target])).logits[0].double()
        lp = torch.log_softmax(logits, -1)
        by_hand = sum(float(lp[len(ctx) - 1 + k, t]) for k, t in enumerate(target)) / len(target)
        assert j.score == pytest.approx(by_hand, abs=1e-4) and j.details["tokens"] == len(target)
    assert out[0].score > out[1].score  # the on-topic answer is likelier than the non sequitur


def test_self_eval_and_selfj_share_the_loaded_model(smollm2):
    judge = build_judge("self_eval", {"prompt_format": "chat"})
    selfj = build_judge("selfj", {"prompt_format": "chat"})
    out, same = judge.score(PROMPTS, CANDS), selfj.score(PROMPTS, CANDS)
    assert judge.engine is smollm2 and selfj.engine is smollm2  # one load for both
    assert [j.score for j in out] == pytest.approx([j.score for j in same], abs=1e-6)  # the same template and weights
    assert {j.judge for j in out} == {"self_eval"} and {j.judge for j in same} == {"selfj"}
    assert "self-evaluation" in judge.describe() and "self-evaluation" not in selfj.describe()


def test_autoj_on_smollm2_flags_real_malformed_output(smollm2):
    raw_wrapper = AutoJudge(AutoJOptions(max_tokens=24), engine=smollm2).score(PROMPTS, CANDS[:2])
    assert all(j.raw == "" and j.score is None for j in raw_wrapper)  # SmolLM2 ends at once after [/INST]
    judge = AutoJudge(AutoJOptions(max_tokens=24, wrapper="chat"), engine=smollm2)
    out = judge.score(PROMPTS, CANDS[:2])
    for j in out:  # a 135M model does not follow Auto-J's format within 24 tokens
        assert j.raw and j.score is None and j.flag == "no 'Rating: [[x]]' in the judge's output"
    assert "NOT the trained Auto-J weights" in judge.describe()
    prompt_ids = smollm2.text_ids("[INST] rate it [/INST]")
    lp = judge._rating_logprob(prompt_ids, "Fine answer. Rating: [[7]]")
    prefix = prompt_ids + smollm2.tokenizer.encode("Fine answer. Rating: [[", add_special_tokens=False)
    seven = smollm2.tokenizer.encode("7", add_special_tokens=False)[0]
    assert lp == pytest.approx(smollm2.next_token_logprobs([prefix], [seven])[0][seven]) and lp < 0


def test_mt_bench_forced_ratings_of_one_prompts_candidates_share_its_judge_prompt(smollm2):
    """`force_rating` reads the expected digit after 'Rating: [[' appended to each judgment: the candidates of one
    question share FastChat's system prompt and the question, prefilled once, and rate as each does alone."""
    from os.path import commonprefix

    from bon.judges.mt_bench import FORCED, MTBenchJudge, MTBenchOptions

    judge = MTBenchJudge(MTBenchOptions(force_rating=True, max_tokens=4), engine=smollm2)
    prompts = [Prompt("q", "Write a haiku about rain."), Prompt("r", "Name three primes.")]
    cands = [
        Candidate(p, i, t, None, 1, 1, "stop", "x")
        for p, i, t in [("q", 0, "Rain taps the window."), ("q", 1, "Soft rain falls."), ("r", 0, "2, 3 and 5.")]
    ]
    with tokens_run(smollm2.model) as ran:
        together = judge.score(prompts, cands)
        shared = sum(ran)
        alone = [judge.score(prompts, [c])[0] for c in cands]
    assert all(j.flag and "rating forced" in j.flag for j in together + alone)  # 4 greedy tokens give no [[x]]
    assert [j.score for j in together] == pytest.approx([j.score for j in alone], abs=1e-4)
    assert [j.raw for j in together] == [j.raw for j in alone]
    q0, q1 = (
        judge.prompt_ids(prompts[0], c.text) + smollm2.tokenizer.encode(j.raw + FORCED, add_special_tokens=False)
        for c, j in zip(cands[:2], together)
    )
    common = len(commonprefix([q0, q1]))
    assert common > 100  # FastChat's system prompt and the question
    assert sum(ran) - shared - shared == common  # rated alone, q's second candidate reads the common part again


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory, smollm2):
    """A randomly initialised Llama sequence classifier with SmolLM2's tokenizer: plumbing only."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(smollm2.tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=smollm2.tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-rm")
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    smollm2.tokenizer.save_pretrained(path)
    return path


def test_reward_model_plumbing_matches_unbatched_logits(tiny_rm):
    judge = RewardModelJudge(RewardModelOptions(model=str(tiny_rm), batch_size=3))
    out = judge.score(PROMPTS, CANDS)
    model, tok = judge.model.model, judge.model.tokenizer
    for c, j in zip(CANDS, out):
        prompt = PROMPTS[0] if c.prompt_id == "f" else PROMPTS[1]
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt.instruction}, {"role": "assistant", "content": c.text}], tokenize=False
        )
        with torch.no_grad():
            alone = float(model(torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])).logits[0, 0])
        assert j.score == pytest.approx(alone, abs=1e-5)  # right padding and length sorting change nothing
    assert len({round(j.score, 6) for j in out}) == len(out)


def test_reward_model_offline_hub_id_is_a_clear_error(monkeypatch):
    from bon.engines.models import ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"):
        RewardModelJudge().score(PROMPTS, CANDS[:1])


def test_two_label_classifier_is_refused(tmp_path, smollm2):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from bon.engines.hf import HFRewardModel
    from bon.engines.models import ModelLoadError

    cfg = LlamaConfig(
        vocab_size=len(smollm2.tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=2,
    )
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path)
    smollm2.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="has 2 labels"):
        HFRewardModel(ModelConfig(model=str(tmp_path)))


def test_reward_model_reads_the_whole_conversation(tiny_rm):
    from bon.core.records import Message

    later = Prompt(
        "c:turn2", "And in French?", history=(Message("user", "Say hello."), Message("assistant", "Hello!")), turn=2
    )
    judge = RewardModelJudge(RewardModelOptions(model=str(tiny_rm)))
    cand = Candidate("c:turn2", 0, "Bonjour !", 0, 1, 1, "stop", "x")
    (j,) = judge.score([later], [cand])
    tok, model = judge.model.tokenizer, judge.model.model
    messages = [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "And in French?"},
        {"role": "assistant", "content": "Bonjour !"},
    ]
    ids = tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        assert j.score == pytest.approx(float(model(torch.tensor([ids])).logits[0, 0]), abs=1e-5)

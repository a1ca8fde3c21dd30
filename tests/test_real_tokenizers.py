"""Token-level behaviour on the real tokenizers of the families users run (vocab-only GGUF, no weights).

SmolLM2's tokenizer is friendlier than Llama-2's SentencePiece: digit ids, prompt formats and the
context guard are checked here on Llama-2 (SPM), Llama-3 (byte-level BPE), Phi-3 and GPT-2.
"""

from __future__ import annotations

import os

import pytest

from bon.core.config import ModelConfig, PolicyConfig, RunConfig
from bon.core.judging import build_judge
from bon.core.records import Candidate, Prompt
from bon.engines.tokens import ContextLengthError, PromptFormatError, TokenizerOnly, digit_token_ids
from bon.judges.autoj import AutoJOptions, AutoJudge
from bon.judges.selfj import SelfJOptions, SelfJudge
from bon.pipeline.policy import EnginePolicy
from bon.pipeline.preflight import lengths

FAMILIES = {
    "llama-spm": "ggml-vocab-llama-spm.gguf",
    "llama-bpe": "ggml-vocab-llama-bpe.gguf",
    "phi-3": "ggml-vocab-phi-3.gguf",
    "gpt-2": "ggml-vocab-gpt-2.gguf",
}
# judge.py of the Self-J repository: the class ids of "0".."9" on the Llama-2 vocabulary
SELFJ_REPO_IDS = [29900, 29896, 29906, 29941, 29946, 29945, 29953, 29955, 29947, 29929]
VICUNA = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: {instruction} ASSISTANT:"
)


@pytest.fixture(scope="session", params=list(FAMILIES))
def family(request, shared_data):
    path = shared_data / "tokenizers" / FAMILIES[request.param]
    return request.param, str(path)


def tokens(path: str, **kw):
    return TokenizerOnly(ModelConfig(model=path, **kw))


def test_digit_ids_are_the_tokens_the_model_emits_after_text(family):
    name, path = family
    tok = tokens(path).tokenizer
    ids = digit_token_ids(tok)
    assert [tok.decode([i]) for i in ids] == list("0123456789")
    if name in ("llama-spm", "phi-3"):
        assert ids == SELFJ_REPO_IDS
        assert tok.encode("0", add_special_tokens=False) == [29871, 29900]  # a lone "0" is '▁', '0'
    for d, i in enumerate(ids):  # the digit right after a Self-J prompt's answer text is that id
        assert tok.encode(f"[Answer]\nfour\n{d}", add_special_tokens=False)[-1] == i


def test_selfj_prompt_token_ids_on_llama2(shared_data):
    engine = tokens(str(shared_data / "tokenizers" / FAMILIES["llama-spm"]))
    judge = SelfJudge(SelfJOptions(reference="never"), engine=engine)
    ids = judge.prompt_ids(Prompt("a", "What is 2+2?"), "4")
    assert ids == [
        1,
        3529,
        1044,
        408,
        263,
        18378,
        16833,
        322,
        14707,
        278,
        11029,
        310,
        278,
        1234,
        304,
        1139,
        29889,
        390,
        403,
        278,
        1234,
        515,
        29871,
        29900,
        304,
        29871,
        29929,
        29892,
        988,
        263,
        6133,
        995,
        2794,
        263,
        2253,
        1234,
        29889,
        3529,
        10049,
        411,
        385,
        6043,
        1546,
        29871,
        29900,
        322,
        29871,
        29929,
        29889,
        29871,
        13,
        13,
        29961,
        16492,
        29962,
        13,
        5618,
        338,
        29871,
        29906,
        29974,
        29906,
        29973,
        13,
        13,
        29961,
        22550,
        29962,
        13,
        29946,
    ]  # BOS, the template as raw text, the answer "4" as the bare digit piece


def test_selfj_prompt_is_raw_template_text_on_every_family(family):
    _, path = family
    engine = tokens(path)
    judge = SelfJudge(SelfJOptions(reference="auto"), engine=engine)
    prompt = Prompt("a", "What is 2+2?", reference="Four.")
    ids = judge.prompt_ids(prompt, "4")
    text = judge.build_prompt(prompt, "4")
    assert ids == engine.tokenizer(text)["input_ids"]
    assert engine.tokenizer.decode(ids, skip_special_tokens=True).strip().endswith("[Answer]\n4")
    assert "[Reference]\nFour." in text


def test_vicuna_policy_prompt(family):
    name, path = family
    engine = tokens(path)
    policy = EnginePolicy(PolicyConfig(prompt_format="vicuna_v1.1"), engine=engine)
    ids = policy.prompt_ids(Prompt("a", "Name a fruit."))
    text = VICUNA.format(instruction="Name a fruit.")
    assert ids == engine.tokenizer(text)["input_ids"]
    assert engine.tokenizer.decode(ids, skip_special_tokens=True).strip() == text
    if name in ("llama-spm", "phi-3"):
        assert ids[0] == 1  # <s>, as FastChat feeds Llama-2-family models


def test_no_chat_template_is_a_clear_error_naming_the_option(family):
    name, path = family
    engine = tokens(path)
    policy = EnginePolicy(PolicyConfig(prompt_format="chat"), engine=engine)
    if engine.tokenizer.chat_template:  # Phi-3 ships one
        assert policy.prompt_ids(Prompt("a", "Hi")) and name == "phi-3"
        return
    with pytest.raises(PromptFormatError, match="policy.prompt_format"):
        policy.prompt_ids(Prompt("a", "Hi"))


LONG = Prompt("long", "Summarise this: " + "the quick brown fox jumps over the lazy dog " * 40)
SHORT = Prompt("short", "Name a fruit.")


def test_policy_context_guard_error_truncate_skip(family, tmp_path):
    _, path = family
    cfg = dict(model=path, prompt_format="vicuna_v1.1", max_tokens=16, context_length=128)
    engine = tokens(path)
    strict = EnginePolicy(PolicyConfig(**cfg), engine=engine)
    assert engine.context > 128 and strict.context == 128  # the engine keeps the model's own; the policy asks for less
    with pytest.raises(
        ContextLengthError,
        match=r"1 policy prompts are longer than the 112 tokens.*long \(\d+ tokens\).*policy.on_overflow",
    ):
        strict.fit([SHORT, LONG])
    cut = EnginePolicy(PolicyConfig(**cfg, on_overflow="truncate"), engine=engine)
    (short_ids, short_flag), (long_ids, long_flag) = cut.fit([SHORT, LONG])
    full = cut.prompt_ids(LONG)
    assert short_flag is None and short_ids == cut.prompt_ids(SHORT)
    assert (
        long_ids == full[-112:]
        and long_flag == f"prompt left-truncated from {len(full)} to 112 tokens (context 128, max_tokens 16)"
    )
    assert engine.tokenizer.decode(long_ids).endswith("ASSISTANT:")  # the end of the prompt is kept
    # in bfloat16: a 7B model's float32 weights alone would leave no room for its KV cache in this machine's RAM
    cfg["dtype"] = "bfloat16"
    run = RunConfig(output_dir=tmp_path, judge={"name": "length"}, policy={**cfg, "on_overflow": "skip"})
    plan = lengths(run, [SHORT, LONG], judge=build_judge("length"))
    assert list(plan.skipped) == ["long"] and "exceeds the policy's context of 128" in plan.skipped["long"]
    with pytest.raises(ContextLengthError):
        lengths(run.model_copy(update={"policy": PolicyConfig(**cfg)}), [SHORT, LONG], judge=build_judge("length"))


def test_judge_context_guard_truncates_the_answer(family):
    _, path = family
    engine = tokens(path)
    answer = "word " * 300
    pairs = [
        (SHORT, Candidate("short", 0, "Apple.", 1, 1, 1, "stop", "p")),
        (SHORT, Candidate("short", 1, answer, 1, 1, 1, "stop", "p")),
    ]
    strict = SelfJudge(SelfJOptions(model=path, context_length=160), engine=engine)
    with pytest.raises(ContextLengthError, match=r"short#1"):
        strict.fit(pairs)
    cut = SelfJudge(SelfJOptions(model=path, context_length=160, on_overflow="truncate"), engine=engine)
    (ok_ids, ok_flag), (cut_ids, cut_flag) = cut.fit(pairs)
    assert ok_flag is None and ok_ids == cut.prompt_ids(SHORT, "Apple.")
    assert len(cut_ids) <= 159 and cut_flag.startswith("answer truncated from ")
    assert (
        engine.tokenizer.decode(cut_ids, skip_special_tokens=True).strip().startswith("Please act as a precise judge")
    )
    skip = SelfJudge(SelfJOptions(model=path, context_length=160, on_overflow="skip"), engine=engine)
    assert skip.fit(pairs)[1] == (None, skip.fit(pairs)[1][1]) and "skipped" in skip.fit(pairs)[1][1]
    autoj = AutoJudge(
        AutoJOptions(model=path, context_length=160, max_tokens=16, on_overflow="truncate"), engine=engine
    )
    assert autoj.room() == 144 and all(len(ids) <= 144 for ids, _ in autoj.fit(pairs))


def test_judge_preflight_bounds_prompts_with_a_full_answer(shared_data, tmp_path):
    path = str(shared_data / "tokenizers" / FAMILIES["llama-spm"])
    run = RunConfig(
        output_dir=tmp_path,
        policy={"model": path, "prompt_format": "vicuna_v1.1", "max_tokens": 100, "context_length": 4096}
        | {"dtype": "bfloat16"},  # a 7B model's float32 weights fill this machine's RAM
        judge={"name": "selfj", "options": {"model": path, "context_length": 200}},
    )
    judge = SelfJudge(SelfJOptions(model=path, context_length=200))
    with pytest.raises(ContextLengthError, match="with a 100-token answer"):
        lengths(run, [SHORT, LONG], judge)
    relaxed = SelfJudge(SelfJOptions(model=path, context_length=200, on_overflow="truncate"))
    assert "truncated (judge.options.on_overflow: truncate)" in lengths(run, [SHORT, LONG], relaxed).notes[0]


def test_a_gguf_tokenizer_is_parsed_once_into_a_copy_that_encodes_as_the_gguf_does(shared_data, tmp_path, monkeypatch):
    import shutil

    from transformers import AutoConfig, AutoTokenizer

    from bon.engines.tokens import gguf_tokenizer_copy

    monkeypatch.setenv("BON_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "vocab" / FAMILIES["llama-spm"]  # SentencePiece: the leading-space and BOS rules
    gguf.parent.mkdir()
    shutil.copy(shared_data / "tokenizers" / FAMILIES["llama-spm"], gguf)
    copy = gguf_tokenizer_copy(gguf)
    assert copy is not None
    direct = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    reread = AutoTokenizer.from_pretrained(copy)
    texts = ["0", " 7", "Rating: [[8]]", "\n[Answer]\nfour\n3", "naïve café 東京 🙂", "</s> <s> <unk>", "  two  spaces"]
    for text in texts:
        for special in (True, False):
            assert reread.encode(text, add_special_tokens=special) == direct.encode(text, add_special_tokens=special)
    ids = direct.encode(" ".join(texts))
    assert reread.decode(ids) == direct.decode(ids)
    assert (reread.bos_token_id, reread.eos_token_id, reread.chat_template) == (
        direct.bos_token_id,
        direct.eos_token_id,
        direct.chat_template,
    )

    def config(*args, **kwargs) -> dict:
        drop = ("_name_or_path", "transformers_version")
        return {k: v for k, v in AutoConfig.from_pretrained(*args, **kwargs).to_dict().items() if k not in drop}

    assert config(copy) == config(gguf.parent, gguf_file=gguf.name)

    def parse(*args, **kwargs):
        raise AssertionError("the GGUF was parsed again")

    with monkeypatch.context() as m:
        m.setattr(AutoTokenizer, "from_pretrained", parse)
        assert gguf_tokenizer_copy(gguf) == copy  # kept: nothing parsed
        os.utime(gguf, ns=(0, 0))  # a changed file is parsed into a copy of its own
        with pytest.raises(AssertionError, match="parsed again"):
            gguf_tokenizer_copy(gguf)
    assert [p.name for p in copy.parent.iterdir()] == [copy.name]  # the failed copy left nothing behind


def test_a_cache_that_cannot_be_written_reads_the_gguf_itself(shared_data, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from bon.engines.tokens import _read_files, gguf_tokenizer_copy

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("BON_CACHE_DIR", str(blocked / "cache"))  # under a file: no folder can be made
    folder = shared_data / "tokenizers"
    with monkeypatch.context() as m:
        m.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: pytest.fail("parsed for a copy it cannot keep"))
        assert gguf_tokenizer_copy(folder / FAMILIES["phi-3"]) is None
    tokenizer, config = _read_files.__wrapped__(str(folder), FAMILIES["phi-3"], False, False)  # past the lru cache
    assert tokenizer.encode("0", add_special_tokens=False) == [29871, 29900] and config.max_position_embeddings == 4096


DAMAGED = {  # a GGUF header and then not what it promises: the parser meets struct, index or value errors
    "garbage-after-header": lambda real: (
        b"GGUF" + (3).to_bytes(4, "little") + (5).to_bytes(8, "little") + b"\x07" * 100
    ),
    "header-only": lambda real: real[:24],
    "cut-in-half": lambda real: real[: len(real) // 2],
    "cut-near-the-end": lambda real: real[:-7],
}


@pytest.mark.parametrize("damage", list(DAMAGED))
def test_a_damaged_gguf_is_one_line_naming_it_and_leaves_no_copy(shared_data, tmp_path, monkeypatch, damage):
    from bon.engines.models import ModelLoadError
    from tests.helpers import bon

    monkeypatch.setenv("BON_CACHE_DIR", str(tmp_path / "cache"))
    real = (shared_data / "tokenizers" / FAMILIES["phi-3"]).read_bytes()
    path = tmp_path / "damaged.gguf"
    path.write_bytes(DAMAGED[damage](real))
    with pytest.raises(
        ModelLoadError, match=rf"model '{path}': local GGUF file {path}; (not a readable GGUF|could not)"
    ):
        TokenizerOnly(ModelConfig(model=str(path)))
    assert not list((tmp_path / "cache" / "gguf-tokenizers").iterdir())  # the half-made copy is gone
    check = bon("check", "configs/demo.yaml", "--set", f"policy.model={path}")
    assert check.returncode == 1 and "Traceback" not in check.stderr + check.stdout
    assert str(path) in check.stdout
    done = bon("run", "configs/demo.yaml", "--set", f"policy.model={path}", "--set", f"output_dir={tmp_path / 'run'}")
    assert done.returncode == 2 and "Traceback" not in done.stderr and str(path) in done.stderr
    assert not (tmp_path / "run").exists()

"""Conversations: MT-Bench turns and OpenAI messages in, turn-by-turn best-of-N, judges that declare how they see one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bon.core.config import ModelConfig, PolicyConfig, PromptsConfig, load_config
from bon.core.errors import ConfigError
from bon.core.formats import PromptFormatError, render
from bon.core.io import DataFileError
from bon.core.prompts import load_prompts
from bon.core.records import Candidate, Message, Prompt, Selection, from_json, next_turn, to_json
from bon.core.rundir import fingerprint
from bon.engines.tokens import TokenizerOnly
from bon.pipeline.policy import EnginePolicy
from bon.pipeline.runner import run
from tests.conftest import FakePolicy
from tests.helpers import bon, contents, one_clear_line

DATA = Path(__file__).parent / "data"
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
TURN2 = Prompt(
    "81:turn2",
    "Now in one word.",
    history=(Message("user", "Name a colour."), Message("assistant", "Blue, like the sky.")),
    turn=2,
    turns=("Name a colour.", "Now in one word."),
    conversation="81",
)


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CONVERSATIONS = [
    {"question_id": 1, "category": "writing", "turns": ["Write a haiku.", "Now make it rhyme."]},
    {"question_id": 2, "category": "math", "turns": ["What is 2+2?", "And times 3?"], "reference": ["4", "12"]},
    {"id": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."}]},
]


# -- reading conversations


def test_mt_bench_questions_read_as_they_are(shared_data):
    prompts = load_prompts(PromptsConfig(source=str(shared_data / "mt_bench" / "question.jsonl")))
    assert len(prompts) == 80 and {p.category for p in prompts} >= {"writing", "math", "coding"}
    q = next(p for p in prompts if p.id == "101")
    assert q.turns[0] == q.instruction and len(q.turns) == 2 and q.later_turns == 1
    assert q.references == ("You are in second place.", "Uncertain.") and q.reference == q.references[0]
    second = next_turn(q, "kept answer")
    assert (second.id, second.turn, second.conversation_id, second.instruction) == ("101:turn2", 2, "101", q.turns[1])
    assert second.history == (Message("user", q.turns[0]), Message("assistant", "kept answer"))
    assert second.reference == "Uncertain." and second.later_turns == 0


def test_messages_are_one_step_on_their_last_user_turn(tmp_path):
    rows = [
        {
            "id": "a",
            "messages": [
                {"role": "user", "content": "Q1"},
                {"role": "assistant", "content": "A1"},
                {"role": "user", "content": "Q2"},
            ],
        }
    ]
    (p,) = load_prompts(PromptsConfig(source=str(write_rows(tmp_path / "m.jsonl", rows))))
    assert p.instruction == "Q2" and p.turn == 2 and p.later_turns == 0
    assert p.messages("sys") == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        (
            {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
            "'messages[1].role': the conversation must end with a user turn",
        ),
        ({"turns": ["Q1", ""]}, "field 'turns[1]': expected a non-empty string"),
        ({"turns": "Q1"}, "field 'turns': expected a non-empty list"),
        ({"turns": ["Q1", 7]}, "field 'turns[1]': expected a non-empty string, found 7"),
        ({"turns": []}, "field 'turns': expected a non-empty list"),
        (
            {
                "messages": [
                    {"role": "user", "content": "Q"},
                    {"role": "system", "content": "S"},
                    {"role": "user", "content": "Q"},
                ]
            },
            "'messages[1].role'",
        ),
        ({"messages": [{"role": "tool", "content": "Q"}]}, "'messages[0].role': expected system / user / assistant"),
        ({"messages": [{"role": "user", "content": "  "}]}, "'messages[0].content': expected a non-empty string"),
        ({"id": "x:turn2", "instruction": "Q"}, "':turn' marks later turns' ids"),
        ({"question_id": [1], "turns": ["Q"]}, "field 'question_id': expected a string or an integer id, found [1]"),
        ({"id": 1.5, "instruction": "Q"}, "field 'id': expected a string or an integer id"),
    ],
)
def test_a_malformed_conversation_names_file_line_and_field(tmp_path, row, needle):
    path = write_rows(tmp_path / "bad.jsonl", [{"instruction": "fine"}, row])
    with pytest.raises(DataFileError) as err:
        load_prompts(PromptsConfig(source=str(path)))
    assert f"{path}:2" in str(err.value) and needle in str(err.value)


def test_bon_run_refuses_a_bad_conversation_in_one_line_and_writes_nothing(tmp_path):
    path = write_rows(
        tmp_path / "bad.jsonl", [{"turns": ["Q1", "Q2"]}, {"messages": [{"role": "assistant", "content": "A"}]}]
    )
    out = bon("run", "configs/demo.yaml", "--set", f"prompts.source={path}", "--set", f"output_dir={tmp_path / 'run'}")
    one_clear_line(out, f"{path}:2", "messages[0].role")
    assert not (tmp_path / "run").exists()


def test_prompt_records_keep_the_conversation_and_old_fingerprints_stay():
    assert from_json(Prompt, json.loads(json.dumps(to_json(TURN2)))) == TURN2
    single = Prompt("a", "Q", reference="R")
    assert fingerprint(single) == fingerprint(Prompt("a", "Q", reference="R", category="x"))  # category decides nothing
    assert fingerprint(TURN2) != fingerprint(Prompt(TURN2.id, TURN2.instruction))  # the kept answer is part of it


def test_single_instruction_fingerprint_is_unchanged_by_conversation_support():
    import hashlib

    old = hashlib.sha256(json.dumps(["Q", "R"], ensure_ascii=False).encode()).hexdigest()[:16]  # as runs stored it
    assert fingerprint(Prompt("a", "Q", reference="R")) == old


# -- formats and token ids


def test_named_formats_render_earlier_turns_as_fastchat_does():
    assert render("vicuna_v1.1", TURN2.instruction, None, TURN2.history) == (
        f"{VICUNA_SYSTEM} USER: Name a colour. ASSISTANT: Blue, like the sky.</s>USER: Now in one word. ASSISTANT:"
    )
    assert render("vicuna_v1.1", "Q", None) == f"{VICUNA_SYSTEM} USER: Q ASSISTANT:"  # one turn: as before
    assert render("llama2_inst", TURN2.instruction, None, TURN2.history) == (
        "[INST] Name a colour. [/INST] Blue, like the sky. </s><s>[INST] Now in one word. [/INST]"
    )
    system = (Message("system", "Be terse."),) + TURN2.history
    assert render("vicuna_v1.1", "Q", None, system).startswith("Be terse. USER: Name a colour.")
    with pytest.raises(PromptFormatError, match="'alpaca' takes one turn.*use one of chat, vicuna_v1.1, llama2_inst"):
        render("alpaca", TURN2.instruction, None, TURN2.history)


def _vocab(shared_data, monkeypatch, family: str, template: str | None) -> TokenizerOnly:
    tok = TokenizerOnly(ModelConfig(model=str(shared_data / "tokenizers" / f"ggml-vocab-{family}.gguf")))
    # the vocabulary-only GGUFs carry no chat template: the released chat models' own (Llama-2-chat, Llama-3-Instruct),
    # set for this test only (the loaded tokenizer is shared with other tests)
    monkeypatch.setattr(tok.tokenizer, "chat_template", (DATA / template).read_text() if template else None)
    return tok


def _turn2_ids(tok: TokenizerOnly, fmt: str) -> list[int]:
    return EnginePolicy(PolicyConfig(prompt_format=fmt), engine=tok).prompt_ids(TURN2)  # type: ignore[arg-type]


def test_turn2_token_ids_on_llama2(shared_data, monkeypatch):
    tok = _vocab(shared_data, monkeypatch, "llama-spm", "llama2_chat_template.jinja")
    vicuna = _turn2_ids(tok, "vicuna_v1.1")
    assert vicuna == [
        1, 319, 13563, 1546, 263, 12758, 1404, 322, 385, 23116, 21082, 20255, 29889, 450, 20255, 4076, 8444, 29892,
        13173, 29892, 322, 1248, 568, 6089, 304, 278, 1404, 29915, 29879, 5155, 29889, 3148, 1001, 29901, 4408, 263,
        12384, 29889, 319, 1799, 9047, 13566, 29901, 10924, 29892, 763, 278, 14744, 29889, 2, 11889, 29901, 2567, 297,
        697, 1734, 29889, 319, 1799, 9047, 13566, 29901,
    ]  # fmt: skip
    assert vicuna.count(2) == 1 and vicuna[vicuna.index(2) - 1] == 29889  # "</s>" is one EOS id, right after "sky."
    chat = _turn2_ids(tok, "chat")
    assert chat == [
        1, 29961, 25580, 29962, 4408, 263, 12384, 29889, 518, 29914, 25580, 29962, 10924, 29892, 763, 278, 14744,
        29889, 29871, 2, 1, 29961, 25580, 29962, 2567, 297, 697, 1734, 29889, 518, 29914, 25580, 29962,
    ]  # fmt: skip
    messages = TURN2.messages()
    assert chat == tok.tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=False
    )


def test_turn2_token_ids_on_llama3(shared_data, monkeypatch):
    tok = _vocab(shared_data, monkeypatch, "llama-bpe", "llama3_chat_template.jinja")
    assert _turn2_ids(tok, "chat") == [
        128000, 128006, 882, 128007, 271, 678, 264, 12745, 13, 128009, 128006, 78191, 128007, 271, 10544, 11, 1093,
        279, 13180, 13, 128009, 128006, 882, 128007, 271, 7184, 304, 832, 3492, 13, 128009, 128006, 78191, 128007, 271,
    ]  # fmt: skip
    vicuna = _turn2_ids(tok, "vicuna_v1.1")
    fastchat = (
        f"{VICUNA_SYSTEM} USER: Name a colour. ASSISTANT: Blue, like the sky.</s>USER: Now in one word. ASSISTANT:"
    )
    assert vicuna == tok.tokenizer(fastchat)["input_ids"]
    sky = vicuna.index(13180)
    assert vicuna[sky + 1 : sky + 4] == [4005, 82, 29] and max(vicuna) < 128000  # "</s>" is plain text in Llama-3
    no_template = _vocab(shared_data, monkeypatch, "llama-bpe", None)
    with pytest.raises(PromptFormatError, match="no chat template"):
        _turn2_ids(no_template, "chat")


# -- the pipeline, turn by turn


class Recording(FakePolicy):
    """The fake policy, keeping every prompt it was asked to answer."""

    def __init__(self, fail_after_calls: int | None = None):
        super().__init__(fail_after_calls)
        self.seen: list[Prompt] = []

    def generate(self, prompts, n, seed):
        out = super().generate(prompts, n, seed)
        self.seen += list(prompts)
        return out


def conversation_config(tmp_path: Path, *extra: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = write_rows(tmp_path / "conv.jsonl", CONVERSATIONS)
    return load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            f"prompts.source={source}",
            "n=3",
            "batch_size=1",
            "judge.name=length",
            *extra,
        ],
    )


def test_turn_two_is_sampled_after_the_kept_answer_of_turn_one(tmp_path):
    policy = Recording()
    result = run(conversation_config(tmp_path), policy=policy)
    assert [p.id for p in result.prompts] == ["1", "2", "m", "1:turn2", "2:turn2"]
    kept = {s.prompt_id: s for s in result.selections}
    for p in policy.seen[3:]:
        first = next(q for q in policy.seen if q.id == p.conversation_id)
        drawn = FakePolicy().generate([first], 3, 0)
        answer = drawn[kept[first.id].chosen_index].text
        assert len(answer) == kept[first.id].score == max(len(c.text) for c in drawn)  # the length judge's pick
        assert p.history == (Message("user", first.instruction), Message("assistant", answer))
    rows = json.loads((tmp_path / "run" / "model_outputs.json").read_text())
    assert [r["instruction"] for r in rows] == ["Write a haiku.", "What is 2+2?", "Hi."]  # AlpacaEval: first turns


def test_a_declined_turn_goes_on_from_the_decline_message(tmp_path):
    policy = Recording()
    cfg = conversation_config(tmp_path, "selection.decline_below=1000")  # every turn 1 is declined
    run(cfg, policy=policy)
    later = [p for p in policy.seen if p.conversation]
    assert len(later) == 2 and all(p.history[-1] == Message("assistant", cfg.selection.decline_message) for p in later)


def test_a_crash_in_turn_two_resumes_to_the_uninterrupted_files(tmp_path):
    ref = conversation_config(tmp_path / "ref")
    run(ref, policy=FakePolicy())
    cfg = conversation_config(tmp_path / "crash")
    with pytest.raises(KeyboardInterrupt):
        run(cfg, policy=FakePolicy(fail_after_calls=4))  # turn 1 is three calls; the second of turn 2 crashes
    lines = (cfg.output_dir / "candidates.jsonl").read_text()
    assert '"1:turn2"' in lines and '"2:turn2"' not in lines
    again = Recording()
    run(cfg, policy=again)
    assert [p.id for p in again.seen] == ["2:turn2"]  # finished turns are never redone
    for name in ("candidates.jsonl", "judgements.jsonl", "selections.jsonl", "model_outputs.json", "prompts.json"):
        assert (cfg.output_dir / name).read_bytes() == (ref.output_dir / name).read_bytes(), name


def test_a_one_turn_format_or_a_single_turn_judge_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="policy.prompt_format 'alpaca' takes one turn"):
        run(conversation_config(tmp_path, "policy.prompt_format=alpaca"), policy=FakePolicy())
    cfg = conversation_config(tmp_path, "judge.name=cosine")
    with pytest.raises(ConfigError, match=r"judge 'cosine' cannot judge conversations \(it embeds.*use one of"):
        run(cfg, policy=FakePolicy())
    assert not (tmp_path / "run").exists()


def test_bon_judge_with_a_single_turn_judge_on_a_conversation_run_is_refused(tmp_path):
    cfg = conversation_config(tmp_path)
    run(cfg, policy=FakePolicy())
    before = contents(cfg.output_dir)
    out = bon("judge", str(cfg.output_dir), "--judge", "pairwise")
    one_clear_line(out, "judge 'pairwise' cannot judge conversations")
    assert contents(cfg.output_dir) == before


def test_a_conversation_longer_than_the_context_is_refused_before_anything_is_written(tmp_path):
    long_turn = "word " * 300
    source = write_rows(tmp_path / "long.jsonl", [{"question_id": 1, "turns": ["Short question?", long_turn]}])
    sets = (
        "--set", f"prompts.source={source}", "--set", f"output_dir={tmp_path / 'run'}",
        "--set", "policy.context_length=256", "--set", "judge.name=length", "--set", "judge.options={}",
    )  # fmt: skip
    out = bon("run", "configs/demo.yaml", *sets)
    one_clear_line(out, f"{source}: field 'turns': conversations too long even before any answer", "1:turn2")
    assert not (tmp_path / "run").exists()
    check = bon("check", "configs/demo.yaml", *sets)  # bon check reads the same findings: it says so too
    assert check.returncode == 1 and "conversations too long even before any answer" in " ".join(check.stdout.split())


def test_selections_keep_their_turn_through_the_records(tmp_path):
    cfg = conversation_config(tmp_path)
    run(cfg, policy=FakePolicy())
    from bon.core.rundir import RunDir
    from bon.pipeline.rejudge import run_prompts

    prompts, selections, cands = run_prompts(RunDir(cfg.output_dir), cfg)
    assert {p.id: p.turn for p in prompts} == {"1": 1, "2": 1, "m": 1, "1:turn2": 2, "2:turn2": 2}
    assert all(isinstance(s, Selection) for s in selections) and all(
        isinstance(c, Candidate) for g in cands.values() for c in g.values()
    )


def test_view_shows_later_turns_with_the_conversation_they_continue(tmp_path):
    from bon.eval.view import run_data

    cfg = conversation_config(tmp_path)
    run(cfg, policy=FakePolicy())
    rows = {r["id"]: r for r in run_data(cfg.output_dir)["prompts"]}
    assert list(rows) == ["1", "2", "m", "1:turn2", "2:turn2"]
    later = rows["1:turn2"]
    assert later["instruction"] == "Now make it rhyme." and later["history"][0] == ["user", "Write a haiku."]
    assert later["history"][1][0] == "assistant" and later["candidates"]


CONTEXT = (
    "[Previous conversation]\nUser: Name a colour.\n\nAssistant: Blue, like the sky.\n\n"
    "[Current turn, to be answered]\nNow in one word."
)


def test_selfj_and_autoj_see_the_earlier_turns_as_context_in_their_instruction():
    from bon.judges.autoj import AutoJudge
    from bon.judges.selfj import SelfJOptions, SelfJudge

    selfj = SelfJudge(SelfJOptions(reference="never"), engine=object())
    assert CONTEXT in selfj.build_prompt(TURN2, "Blue.") and "Blue." in selfj.build_prompt(TURN2, "Blue.")
    first = Prompt("81", "Name a colour.")
    assert "[Previous conversation]" not in selfj.build_prompt(first, "Blue.")  # a first turn reads as before
    assert CONTEXT in AutoJudge(engine=object()).build_prompt(TURN2, "Blue.")


def test_a_kept_candidate_missing_from_the_files_is_refused_in_one_line(tmp_path):
    cfg = conversation_config(tmp_path)
    run(cfg, policy=FakePolicy())
    cands = cfg.output_dir / "candidates.jsonl"
    cands.write_text("".join(line + "\n" for line in cands.read_text().splitlines() if '"prompt_id": "1",' not in line))
    out = bon("export", "mt-bench", str(cfg.output_dir), "--model-id", "m", "--out", str(tmp_path / "o"))
    one_clear_line(out, "the selection of '1' keeps candidate", "candidates.jsonl does not hold")
    assert not (tmp_path / "o").exists()


def test_reselecting_a_messages_run_with_its_own_judge_is_allowed_and_a_conversation_run_is_refused(tmp_path):
    from bon.core.rundir import RunDirError
    from bon.pipeline.rejudge import select_run

    source = write_rows(
        tmp_path / "steps.jsonl", [CONVERSATIONS[2], {"id": "s", "messages": CONVERSATIONS[2]["messages"][1:]}]
    )
    steps = load_config(
        None, [f"output_dir={tmp_path / 'steps'}", f"prompts.source={source}", "n=3", "judge.name=length"]
    )
    run(steps, policy=FakePolicy())
    selections = select_run(steps.output_dir, "length").selections  # single steps: no later turn depends on their picks
    assert [s.prompt_id for s in selections] == ["m", "s"]
    cfg = conversation_config(tmp_path / "conv")
    run(cfg, policy=FakePolicy())
    with pytest.raises(RunDirError, match="re-selecting with it would change those conversations"):
        select_run(cfg.output_dir, "length")

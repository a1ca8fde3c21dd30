"""The MT-Bench judge (FastChat's prompts, byte for byte), and MT-Bench in and out of a run: export read by
FastChat's own code, scores per turn and category, best-of-k per turn."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bon.core.config import load_config
from bon.core.records import Message, Prompt
from bon.core.rundir import RunDir
from bon.engines.contract import Sample
from bon.eval.mt_bench_run import export_answers, mt_bench_report
from bon.judges.mt_bench import SHIPPED, MTBenchJudge, MTBenchOptions, parse_rating
from bon.pipeline.rejudge import judge_run, run_prompts
from bon.pipeline.runner import run
from tests.conftest import FakePolicy
from tests.helpers import bon, contents, one_clear_line

ROOT = Path(__file__).resolve().parent.parent
FASTCHAT = ROOT / ".venv-fschat" / "bin" / "python"
IDS = [81, 111]  # a writing question and a math one (graded against reference answers)


@pytest.mark.parametrize(
    ("text", "rating", "flag"),
    [
        ("Good. Rating: [[7]]", 7.0, None),
        ("Rating: [[8.5]] and later [[2]]", 8.5, None),  # FastChat takes the first match
        ("Rating: [6]", 6.0, None),  # FastChat's backup pattern
        ("no rating at all", None, "no '[[rating]]' in the judge's output"),
        ("Rating: [[11]]", None, "rating 11 is outside MT-Bench's 1-10"),
        ("Rating: [[0]]", None, "rating 0 is outside MT-Bench's 1-10"),
    ],
)
def test_rating_is_read_as_fastchat_reads_it(text, rating, flag):
    assert parse_rating(text) == (rating, flag)


def test_shipped_prompts_are_fastchats_lines_byte_for_byte(shared_data):
    released = (shared_data / "mt_bench" / "judge_prompts.jsonl").read_text().splitlines()
    shipped = SHIPPED.read_text().splitlines()
    assert len(shipped) == 4 and all(line in released for line in shipped)
    assert {json.loads(line)["name"] for line in shipped} == {
        "single-v1",
        "single-v1-multi-turn",
        "single-math-v1",
        "single-math-v1-multi-turn",
    }


def test_an_unknown_or_pairwise_prompt_name_is_refused_naming_the_option(shared_data):
    with pytest.raises(ValueError, match="'single-v2-multi-turn' is not a judge prompt"):
        MTBenchOptions(multi_turn="single-v2-multi-turn")
    every = str(shared_data / "mt_bench" / "judge_prompts.jsonl")
    with pytest.raises(ValueError, match="'pair-v2' is a pairwise prompt"):
        MTBenchOptions(prompts_file=every, single="pair-v2")
    with pytest.raises(ValueError, match="'single-v1' is not a two-turn prompt"):
        MTBenchOptions(multi_turn="single-v1")


def test_bon_run_with_an_unknown_judge_prompt_exits_2_in_one_line(tmp_path):
    out = bon(
        "run", "configs/demo.yaml", "--set", "judge.name=mt_bench", "--set", "judge.options={}",
        "--set", "judge.options.single=single-v9", "--set", f"output_dir={tmp_path / 'run'}",
    )  # fmt: skip
    one_clear_line(out, "judge.options.single", "'single-v9' is not a judge prompt")
    assert not (tmp_path / "run").exists()


class FixedReply:
    """A judge engine that answers every prompt with the same text (the judge's arithmetic, not its taste)."""

    name, context = "fixed", None

    def __init__(self, reply: str):
        self.reply = reply
        self.seen: list[list[dict]] = []

    def chat_ids(self, messages, fix=""):
        self.seen.append(messages)
        return [len(self.seen)]

    def sample(self, ids, n, seeds, settings):
        return [[Sample(self.reply, len(x), 3, "stop", 0)] for x in ids]


def test_judgements_carry_rating_raw_text_and_prompt_name():
    engine = FixedReply("Sound reasoning. Rating: [[9]]")
    judge = MTBenchJudge(MTBenchOptions(), engine=engine)
    first = Prompt("1", "Q1", category="writing", turns=("Q1", "Q2"))
    second = Prompt(
        "1:turn2",
        "Q2",
        history=(Message("user", "Q1"), Message("assistant", "A1")),
        turn=2,
        conversation="1",
        category="writing",
    )
    from bon.core.records import Candidate

    cands = [Candidate(p.id, 0, "answer", 0, 1, 1, "stop", "x") for p in (first, second)]
    j1, j2 = judge.score([first, second], cands)
    assert (j1.score, j1.flag, j1.raw, j1.details["judge_prompt"]) == (9.0, None, engine.reply, "single-v1")
    assert (
        j2.details["judge_prompt"] == "single-v1-multi-turn" and "### Assistant A:\nA1" in engine.seen[1][1]["content"]
    )
    failed = MTBenchJudge(MTBenchOptions(), engine=FixedReply("I like it.")).score([first], cands[:1])[0]
    assert failed.score is None and failed.flag == "no '[[rating]]' in the judge's output"


def test_the_judge_refuses_what_fastchats_prompts_cannot_grade():
    judge = MTBenchJudge(MTBenchOptions(), engine=FixedReply(""))
    assert "has 3" in judge.refuse_prompt(Prompt("1", "a", turns=("a", "b", "c")))
    why = judge.refuse_prompt(Prompt("2", "2+2?", category="math", turns=("2+2?", "x3?"), references=("4", None)))
    assert why and "turn 2 has none" in why and "reference_answers" in why
    assert judge.refuse_prompt(Prompt("3", "hi", category="writing", turns=("hi", "more"))) is None


# -- a run on MT-Bench questions, its export and its scores


@pytest.fixture
def mt_run(tmp_path, shared_data):
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            f"prompts.source={shared_data / 'mt_bench' / 'question.jsonl'}",
            f"prompts.ids={json.dumps(IDS)}",
            "n=4",
            "judge.name=length",
        ],
    )
    run(cfg, policy=FakePolicy())
    return cfg


def test_export_is_fastchats_model_answer_format(mt_run, tmp_path):
    path, rows, judged = export_answers(mt_run.output_dir, "bon-fake-bo4", tmp_path / "fc")
    assert path == tmp_path / "fc" / "model_answer" / "bon-fake-bo4.jsonl" and rows == 2 and judged is None
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["question_id"] for r in lines] == IDS  # ints, as FastChat keys them
    assert set(lines[0]) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    prompts, selections, cands = run_prompts(RunDir(mt_run.output_dir), mt_run)
    kept = {s.prompt_id: cands[s.prompt_id][s.chosen_index].text for s in selections}
    assert lines[0]["choices"] == [{"index": 0, "turns": [kept["81"], kept["81:turn2"]]}]


def test_export_refuses_an_unfinished_run_and_a_bad_model_id(mt_run, tmp_path):
    out = bon("export", "mt-bench", str(mt_run.output_dir), "--model-id", "../x", "--out", str(tmp_path / "o"))
    one_clear_line(out, "--model-id")
    sel = mt_run.output_dir / "selections.jsonl"
    sel.write_text("".join(line + "\n" for line in sel.read_text().splitlines() if "turn2" not in line))
    out = bon("export", "mt-bench", str(mt_run.output_dir), "--model-id", "m", "--out", str(tmp_path / "o"))
    one_clear_line(out, "2 conversations are unfinished", "bon run")
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not FASTCHAT.exists(), reason="FastChat's venv is absent (bash scripts/setup-fschat.sh)")
def test_fastchat_reads_the_export_and_fills_the_same_judge_prompts(mt_run, tmp_path, shared_data):
    bench = shared_data / "mt_bench"
    export_answers(mt_run.output_dir, "bon-fake-bo4", tmp_path / "fc")
    args = {
        "questions": str(bench / "question.jsonl"),
        "ids": IDS,
        "answer_dir": str(tmp_path / "fc" / "model_answer"),
        "ref_dir": str(bench / "reference_answer"),
        "judge_prompts": str(bench / "judge_prompts.jsonl"),
        "model_id": "bon-fake-bo4",
        "judgment_file": str(tmp_path / "fc" / "model_judgment" / "gpt-4_single.jsonl"),
    }
    fastchat_out = fastchat(args)
    assert "bon-fake-bo4" in fastchat_out["show_result"] and "7.0" in fastchat_out["show_result"]  # its tables

    judge = MTBenchJudge(MTBenchOptions(reference_answers=str(bench / "reference_answer" / "gpt-4.jsonl")))
    prompts, selections, cands = run_prompts(RunDir(mt_run.output_dir), mt_run)
    kept = {s.prompt_id: cands[s.prompt_id][s.chosen_index].text for s in selections}
    ours = {(int(p.conversation_id), p.turn): judge.messages(p, kept[p.id]) for p in prompts}
    assert len(fastchat_out["sent"]) == 4
    for sent in fastchat_out["sent"]:
        assert ours[(sent["question_id"], sent["turn"])] == sent["messages"]  # byte for byte, system and user


def test_eval_mt_bench_reports_turns_categories_and_best_of_k(mt_run):
    judge_run(mt_run.output_dir, "random", {}, label="rater")  # a stand-in rater with spread: the arithmetic only
    report = mt_bench_report(mt_run.output_dir, "rater", rounds=200)
    assert set(report.by_turn) == {1, 2} and set(report.by_category) == {"writing", "math"}
    assert [(p.turn, p.k) for p in report.points] == [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (2, 4)]
    raters = {}
    for line in (mt_run.output_dir / "judgements.jsonl").read_text().splitlines():
        j = json.loads(line)
        if j["judge"] == "rater":
            raters[(j["prompt_id"], j["candidate_index"])] = j["score"]
    picks = {}
    for line in (mt_run.output_dir / "selections.jsonl").read_text().splitlines():
        s = json.loads(line)
        picks[s["prompt_id"]] = raters[(s["prompt_id"], s["chosen_index"])]
    assert report.by_turn[1] == pytest.approx((picks["81"] + picks["111"]) / 2)  # k=N is the run's own pick
    assert report.points[2].mean == pytest.approx(report.by_turn[1])
    k1 = [raters[(pid, 0)] for pid in ("81:turn2", "111:turn2")]
    assert report.points[3].mean == pytest.approx(sum(k1) / 2)  # k=1: the first candidate, plain sampling
    assert report.png is not None and report.png.stat().st_size > 0 and report.markdown is not None
    assert "| 2 | 4 |" in report.markdown.read_text()


def fastchat(args: dict) -> dict:
    done = subprocess.run(
        [str(FASTCHAT), str(ROOT / "tests" / "fastchat_mt_bench.py"), json.dumps(args)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not FASTCHAT.exists(), reason="FastChat's venv is absent (bash scripts/setup-fschat.sh)")
def test_show_result_prints_bons_per_turn_means_from_the_exported_ratings(mt_run, tmp_path):
    judge_run(mt_run.output_dir, "random", {}, label="rater")
    report = mt_bench_report(mt_run.output_dir, "rater", rounds=50)
    _, _, judged = export_answers(mt_run.output_dir, "bon-fake-bo4", tmp_path / "fc", ratings="rater")
    assert judged == tmp_path / "fc" / "model_judgment" / "rater_single.jsonl"
    printed = fastchat({"show": str(judged)})["show_result"]
    blocks = dict(zip(("first", "second", "average"), printed.split("##########")[2::2]))
    shown = {k: float(v.strip().splitlines()[-1].split()[-1]) for k, v in blocks.items()}
    assert shown["first"] == pytest.approx(report.by_turn[1], abs=1e-5)
    assert shown["second"] == pytest.approx(report.by_turn[2], abs=1e-5)
    assert shown["average"] == pytest.approx(report.average, abs=1e-5)


def test_eval_mt_bench_without_ratings_says_which_command_makes_them(mt_run):
    before = contents(mt_run.output_dir)
    out = bon("eval", "mt-bench", str(mt_run.output_dir))
    one_clear_line(out, "no 'mt_bench' judgement", "bon judge")
    assert contents(mt_run.output_dir) == before


def test_an_mt_bench_export_never_clobbers_and_overwrite_leaves_no_stale_ratings(mt_run, tmp_path):
    judge_run(mt_run.output_dir, "random", {}, label="rater")
    out = tmp_path / "fc"
    _, _, judged = export_answers(mt_run.output_dir, "bo4", out, ratings="rater")
    other = out / "model_judgment" / "gpt-4_single.jsonl"  # FastChat's own file, holding another model's rows
    other.write_text(json.dumps({"model": "vicuna", "score": 5, "user_prompt": "[Question] ..."}) + "\n")
    with judged.open("a") as f:  # FastChat's rows beside bon's in the file bon wrote
        f.write(json.dumps({"model": "vicuna", "score": 7, "user_prompt": "[Question] ..."}) + "\n")
    again = bon("export", "mt-bench", str(mt_run.output_dir), "--model-id", "bo4", "--out", str(out))
    one_clear_line(again, "bo4.jsonl exists (an earlier MT-Bench answer file of 'bo4'); give --overwrite")
    done = bon("export", "mt-bench", str(mt_run.output_dir), "--model-id", "bo4", "--out", str(out), "--overwrite")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["score"] for line in judged.read_text().splitlines()] == [7]  # bon's stale ratings go
    assert other.exists()  # another model's file stays
    theirs = out / "model_answer" / "vicuna.jsonl"  # FastChat's answers (a shortuuid answer_id), never replaced
    theirs.write_text(json.dumps({"question_id": 81, "answer_id": "Wp4N5ZCDoasYvPxXRRzoLz", "model_id": "vicuna"}))
    before = theirs.read_bytes()
    one_clear_line(
        bon("export", "mt-bench", str(mt_run.output_dir), "--model-id", "vicuna", "--out", str(out), "--overwrite"),
        "is not an MT-Bench answer file of 'vicuna' bon wrote",
    )
    assert theirs.read_bytes() == before

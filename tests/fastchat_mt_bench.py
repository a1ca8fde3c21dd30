"""Run by tests/test_mt_bench.py under .venv-fschat: FastChat's own gen_judgment.py and show_result.py code over
bon's MT-Bench export. Only the call to the judge model is replaced (no network): it records the messages FastChat
would send and answers "[[7]]". Prints JSON: the messages sent per (question_id, turn) and show_result's output."""

import argparse
import contextlib
import io
import json
import sys

from fastchat.llm_judge import common, show_result
from fastchat.llm_judge.common import (
    NEED_REF_CATS,
    check_data,
    load_judge_prompts,
    load_model_answers,
    load_questions,
    play_a_match_single,
)
from fastchat.llm_judge.gen_judgment import make_judge_single, make_match_single

args = json.loads(sys.argv[1])


def show(path: str) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        show_result.display_result_single(
            argparse.Namespace(bench_name="mt_bench", input_file=path, judge_model="gpt-4", model_list=None)
        )
    return printed.getvalue()


if "show" in args:  # show_result.py alone, on a judgment file bon wrote
    print(json.dumps({"show_result": show(args["show"])}))
    sys.exit(0)
questions = [q for q in load_questions(args["questions"], None, None) if q["question_id"] in args["ids"]]
model_answers = load_model_answers(args["answer_dir"])
ref_answers = load_model_answers(args["ref_dir"])
judges = make_judge_single("gpt-4", load_judge_prompts(args["judge_prompts"]))
models = [args["model_id"]]
check_data(questions, model_answers, ref_answers, models, judges)  # as gen_judgment.py does before judging

sent = []


def judge_model(model, conv, temperature, max_tokens, api_dict=None):
    sent.append(conv.to_openai_api_messages())
    return "A fine answer. Rating: [[7]]"


common.chat_completion_openai = judge_model
math = [q for q in questions if q["category"] in NEED_REF_CATS]
default = [q for q in questions if q["category"] not in NEED_REF_CATS]
matches = make_match_single(default, models, model_answers, judges["default"])
matches += make_match_single(math, models, model_answers, judges["math"], ref_answers=ref_answers)
matches += make_match_single(default, models, model_answers, judges["default-mt"], multi_turn=True)
matches += make_match_single(math, models, model_answers, judges["math-mt"], ref_answers=ref_answers, multi_turn=True)
out = []
with contextlib.redirect_stdout(io.StringIO()):
    for m in matches:
        result = play_a_match_single(m, args["judgment_file"])
        out.append({"question_id": result["question_id"], "turn": result["turn"], "messages": sent[-1]})
print(json.dumps({"sent": out, "show_result": show(args["judgment_file"])}))

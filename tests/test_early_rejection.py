"""Early rejection's estimate: the rounds it makes, when it should save time, and that bon says so before a run."""

from __future__ import annotations

import pytest

from bon.core.config import EarlyRejectionConfig, load_config
from bon.core.judging import build_judge
from bon.core.prompts import load_prompts
from bon.pipeline.early_rejection import CPU_SPEEDS, GPU_SPEEDS, Workload, advice, plan_rounds
from bon.pipeline.preflight import lengths
from tests.helpers import bon

ER = EarlyRejectionConfig(chunk_tokens=16, keep_fraction=0.5)


def test_rounds_stop_once_nothing_is_left_to_cut():
    plan = plan_rounds(4, 64, ER)
    assert (plan.rounds, plan.survivors, plan.tokens, plan.partial_judgements) == (((4, 16), (2, 32)), 1, 128, 6)
    assert plan_rounds(32, 128, EarlyRejectionConfig(keep_fraction=0.25)).rounds == ((32, 16), (8, 32), (2, 48))
    never = plan_rounds(3, 64, EarlyRejectionConfig(keep_fraction=0.75))  # ceil(0.75 * 3) = 3: no cut, no round
    assert (never.rounds, never.survivors, never.tokens) == ((), 3, 192)
    assert plan_rounds(8, 16, ER).rounds == ()  # the first pause would come at max_tokens


def _work(prompts: int, judge_tokens: float, speeds=CPU_SPEEDS, rows: int = 128) -> Workload:
    return Workload(prompts, rows, lambda t: judge_tokens + t if judge_tokens else 0.0, 0, speeds)


def test_it_pays_when_cut_rows_make_room_and_not_when_every_prompt_fits_in_one_batch():
    big = _work(prompts=64, judge_tokens=150)  # 64 x 32 rows wait for 128 slots: a cut row takes the next prompt's
    assert big.ratio(plan_rounds(32, 128, EarlyRejectionConfig(keep_fraction=0.25))) < 0.7
    small = _work(prompts=6, judge_tokens=150)  # 6 x 4 rows decode together: a step costs about the same with fewer
    pays, said = advice(small, 4, 64, ER)
    assert not pays and said.startswith("early rejection will not save time here: est. 1.")
    assert "6 partial judgements per prompt, 128 of 256 tokens generated at most" in said
    assert said.endswith("it would with keep_fraction=0.25 (0.90x)")  # a setting that pays; 0.125 cuts the same
    free = _work(prompts=6, judge_tokens=0)  # a free judge: fewer rows can only help
    assert advice(free, 4, 64, ER)[0]
    assert GPU_SPEEDS.step > CPU_SPEEDS.step  # a GPU step is memory-bound: fewer rows save even less there


def test_a_free_judge_never_gets_the_warning_and_a_model_judge_names_what_would_pay():
    pays, said = advice(_work(prompts=1, judge_tokens=0), 2, 32, EarlyRejectionConfig(chunk_tokens=8))
    assert pays and said.startswith("est. 0.")
    pays, said = advice(_work(prompts=1, judge_tokens=5000), 2, 32, EarlyRejectionConfig(chunk_tokens=8))
    assert not pays and said.endswith("no nearby setting would: drop early_rejection")


@pytest.mark.slow  # SmolLM2's tokenizer (bon prepare)
def test_bon_run_says_before_the_run_and_bon_check_shows_the_estimate(tmp_path):
    sets = ["n=4", "early_rejection.keep_fraction=0.5", f"output_dir={tmp_path / 'run'}"]
    cfg = load_config("configs/demo.yaml", sets)
    prompts = load_prompts(cfg.prompts)
    plan = lengths(cfg, prompts, build_judge(cfg.judge.name, cfg.judge.options))  # `bon run` prints its notes first
    [note] = [n for n in plan.notes if "early rejection" in n]
    assert note.startswith("early rejection will not save time here: est.") and "best-of-4" in note
    out = bon("check", "configs/demo.yaml", *(a for s in sets for a in ("--set", s)))
    text = " ".join(out.stdout.split())
    assert out.returncode == 0 and "early rejection will not save time here" in text
    length = [*sets, "judge.name=length", "n=32"]
    out = bon("check", "configs/demo.yaml", *(a for s in length for a in ("--set", s)))
    assert "early rejection est. 0." in " ".join(out.stdout.split())
    cheap = load_config("configs/demo.yaml", length)
    assert not [n for n in lengths(cheap, prompts, build_judge("length")).notes if "early rejection" in n]

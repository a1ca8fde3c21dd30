"""Selective answering to a target coverage (`selection.coverage`, `bon select --coverage/--calibrate-on`) and the
length-penalised pick, on fake-policy runs and on the released AlpacaEval pools."""

from __future__ import annotations

import json
import math

import pytest

from bon.core.errors import ConfigError
from bon.core.records import Selection
from bon.core.rundir import RunDir
from bon.pipeline.rejudge import select_run
from bon.pipeline.runner import run
from tests.conftest import FakePolicy, run_config, two_turn_source
from tests.helpers import bon, contents, one_clear_line


def test_a_run_with_coverage_declines_its_share_at_the_end_and_a_rerun_changes_nothing(tmp_path, prompts_file):
    cfg = run_config(tmp_path, prompts_file, "selection.coverage=0.6")
    result = run(cfg, policy=FakePolicy())
    assert sum(s.declined for s in result.selections) == 2  # 5 prompts, 60% answered
    kept = [s.score for s in result.selections if not s.declined]
    assert result.threshold == min(kept) and all(s.threshold == result.threshold for s in result.selections)
    declined = [s for s in result.selections if s.declined]
    assert all(s.score <= result.threshold and "coverage 0.6" in s.reason for s in declined)
    manifest = RunDir(cfg.output_dir).manifest()
    assert manifest["selected_with"] == {"judge": "length", "coverage": 0.6, "threshold": result.threshold}
    before = contents(cfg.output_dir)
    again = run(cfg, policy=FakePolicy())  # resumed complete: the same picks and declines, recomputed
    assert again.selections == result.selections and contents(cfg.output_dir) == before


def test_coverage_is_refused_for_conversations_before_anything_runs(tmp_path):
    cfg = run_config(tmp_path, two_turn_source(tmp_path), "selection.coverage=0.5")
    with pytest.raises(ConfigError, match="selection.coverage: .* holds conversations"):
        run(cfg, policy=FakePolicy())
    assert not cfg.output_dir.exists()


def test_bon_select_coverage_and_calibration_on_another_run(tmp_path, prompts_file, finished):
    out = bon("select", str(finished), "--judge", "length", "--coverage", "0.8")
    assert out.returncode == 0, out.stderr
    assert "1 declined" in out.stdout and "80.0% of this run's prompts answered" in out.stdout
    selected = [s for s in RunDir(finished).read(Selection) if s.judge == "length"]
    tau = RunDir(finished).manifest()["selected_with"]["threshold"]
    assert sum(s.declined for s in selected) == 1 and min(s.score for s in selected if not s.declined) == tau
    outputs = json.loads((finished / "model_outputs.json").read_text())
    assert sum(o["output"].startswith("I'm sorry") for o in outputs) == 1

    other = run_config(tmp_path / "other", prompts_file)
    run(other, policy=FakePolicy())
    done = select_run(other.output_dir, "length", coverage=0.8, calibrate_on=finished)
    assert done.threshold == tau and done.calibrated_on == finished
    scores = [s.score for s in done.selections]  # τ is applied as decline_below: ties at τ are answered here
    assert done.answered == sum(x >= tau for x in scores) / len(scores) >= 0.8
    assert all(s.declined == (s.score < tau) for s in done.selections)
    assert RunDir(other.output_dir).manifest()["selected_with"]["calibrated_on"] == str(finished)

    before = contents(finished)
    for args, needle in [
        (["--coverage", "0.8", "--decline-below", "3"], "give --decline-below or --coverage, not both"),
        (["--coverage", "1.5"], "option --coverage: Input should be less than or equal to 1"),
        (["--calibrate-on", str(other.output_dir)], "--calibrate-on takes the threshold of a coverage"),
        (["--coverage", "0.5", "--calibrate-on", str(tmp_path / "nowhere")], "nowhere"),
    ]:
        one_clear_line(bon("select", str(finished), "--judge", "length", *args), needle)
    assert contents(finished) == before  # a refusal writes nothing


def test_bon_select_length_penalty_picks_shorter_answers(finished):
    plain = select_run(finished, "length").selections
    penalised = select_run(finished, "length", length_penalty=2.0).selections
    assert RunDir(finished).manifest()["selected_with"]["length_penalty"] == 2.0
    # the length judge scores length: penalising length by twice its z-score picks the shortest instead
    assert all(p.chosen_index != q.chosen_index for p, q in zip(plain, penalised) if p.score != q.score)
    assert any(p.chosen_index != q.chosen_index for p, q in zip(plain, penalised))


def test_tau_calibrated_on_half_the_instructions_covers_the_other_half_within_the_binomial_ci(shared_data):
    from bon.eval.pool import load_pool
    from bon.judges.length import LengthJudge
    from bon.pipeline.selection import cover, coverage_threshold, select

    pool = load_pool(shared_data / "alpaca_eval" / "annotations" / "v2")
    judge = LengthJudge()
    picks = [select(p.id, judge.score([p], pool.candidates(p.instruction))) for p in pool.prompts("none")]
    first, second = picks[::2], picks[1::2]
    answered, tau = cover(first, 0.9)
    assert sum(not s.declined for s in answered) == round(0.9 * len(first))  # exact on the half it is set on
    assert tau == coverage_threshold([s.score for s in first], 0.9)
    share = sum(s.score >= tau for s in second) / len(second)
    half_width = 1.96 * math.sqrt(0.9 * 0.1 / len(second))
    assert abs(share - 0.9) <= half_width, (share, half_width)

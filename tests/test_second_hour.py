"""What a new user meets in their second hour: counts that add up, refusals in the words they typed, exports that
say which selection they used, numbers that do not overclaim on a handful of items."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bon.core.io import read_records, write_records_atomic
from bon.core.records import Candidate, Judgement
from bon.core.rundir import FILES
from bon.eval.metrics import TOO_FEW, p_value_text, paired_gain
from tests.helpers import bon, one_clear_line


def said(out) -> str:
    return " ".join(out.stdout.split())


def test_a_judge_neither_in_the_run_nor_registered_gets_did_you_mean_over_both(finished):
    run = str(finished)
    one_clear_line(bon("select", run, "--judge", "lenght"), "neither a judge of this run", "did you mean 'length'")
    bon("judge", run, "--judge", "random", "--label", "coin")
    one_clear_line(bon("select", run, "--judge", "con"), "did you mean 'coin'")
    one_clear_line(bon("select", run, "--judge", "cosine"), f"run `bon judge {run} --judge cosine` first")


def test_select_counts_add_up_and_refusals_name_the_flags_typed(finished):
    run = str(finished)
    out = bon("select", run, "--judge", "length", "--decline-below", "27")
    found = re.search(r"(\d+) prompts selected with length: (\d+) answered, (\d+) declined", said(out))
    assert found and int(found[1]) == 5 and int(found[2]) + int(found[3]) == 5, said(out)
    for command in (["select", run, "--judge", "length"], ["export", "sft", run, "--out", "x"]):
        out = bon(*command, "--decline-below", "1", "--coverage", "0.5")
        one_clear_line(out, "give --decline-below or --coverage, not both")
        assert "decline_below" not in out.stderr
    one_clear_line(bon("select", run, "--judge", "length", "--coverage", "2"), "option --coverage")


def test_a_length_penalty_says_what_it_changed_and_when_it_cancels_the_judge(finished):
    run = str(finished)
    out = said(bon("select", run, "--judge", "length", "--length-penalty", "0.5"))
    assert re.search(r"length penalty λ=0.5: \d+ of 5 picks changed; mean pick length \d+ -> \d+ characters", out)
    assert "ties" not in out
    out = said(bon("select", run, "--judge", "length", "--length-penalty", "1"))  # z(length) - 1 * z(length) = 0
    assert "warning: at λ=1 every candidate ties on 5 prompts" in out and "the tie-break picked there" in out
    assert re.search(r"λ=1: [1-5] of 5 picks changed", out)  # the longest was kept before; index 0 wins the ties now


def test_an_export_says_which_selection_it_used_and_can_select_afresh(finished, tmp_path):
    run = Path(finished)
    assert bon("select", str(run), "--judge", "length", "--coverage", "0.2").returncode == 0
    stored = (run / "selections.jsonl").read_bytes()
    out = bon("export", "sft", str(run), "--out", str(tmp_path / "a"))
    assert "wrote 1 rows" in said(out) and "selection: judge length, threshold" in said(out)
    assert "coverage 0.2 (the last bon select)" in said(out)
    card = (tmp_path / "a" / "README.md").read_text()
    assert "Selection: judge length" in card and "coverage: 0.2" in card
    out = bon("export", "sft", str(run), "--out", str(tmp_path / "b"), "--coverage", "1")
    assert "wrote 5 rows" in said(out) and "coverage 1 (given to this export)" in said(out), said(out)
    out = bon("export", "preferences", str(run), "--out", str(tmp_path / "c"), "--decline-below", "1000")
    one_clear_line(out, "no row to export", "5 declined prompts")
    assert (run / "selections.jsonl").read_bytes() == stored  # an export never changes the run's selections


def test_truncated_candidates_stay_out_unless_asked_and_the_output_says_what_asking_gives(finished, tmp_path):
    run = Path(finished)
    path = run / FILES[Candidate]
    cands = [
        Candidate(**{**c.__dict__, "finish_reason": "length"}) if c.index > 0 else c
        for c in read_records(path, Candidate)
    ]
    write_records_atomic(path, cands)
    out = bon("export", "preferences", str(run), "--out", str(tmp_path / "p"))
    one_clear_line(out, "no row to export", "10 truncated candidates", "(--keep-truncated would give 5)")
    out = bon("export", "sft", str(run), "--out", str(tmp_path / "s"), "--top-k", "3")
    assert "wrote 5 rows" in said(out) and "--keep-truncated would give 15 rows" in said(out), said(out)
    out = bon("export", "preferences", str(run), "--out", str(tmp_path / "p"), "--keep-truncated")
    assert out.returncode == 0 and "wrote 5 rows" in said(out) and "would give" not in said(out)


def test_a_threshold_calibrated_on_another_scale_warns(finished, tmp_path):
    run = Path(finished)
    other = tmp_path / "other"
    shutil.copytree(run, other)
    path = other / FILES[Judgement]
    scaled = [Judgement(**{**j.__dict__, "score": j.score * 100}) for j in read_records(path, Judgement)]
    write_records_atomic(path, scaled)
    out = said(bon("select", str(run), "--judge", "length", "--coverage", "0.6", "--calibrate-on", str(other)))
    assert "0.0% of this run's prompts answered" in out
    assert "warning: the threshold from" in out and "answers 0.0% here against the 60% asked" in out
    out = said(bon("select", str(run), "--judge", "length", "--coverage", "0.6", "--calibrate-on", str(run)))
    assert "warning" not in out


def test_no_ci_and_no_p_value_under_the_minimum_and_p_at_its_resolution():
    few = paired_gain([1, 0, 1, 1], [0, 0, 0, 1])
    assert few.ci is None and few.p_value is None and few.said() == "+50.00 (too few, n=4)"
    many = paired_gain([1] * 30 + [0] * 10, [0] * 30 + [0] * 10)
    assert many.ci is not None and many.said().endswith("p<0.001") and "p=0.000999" not in many.said()
    assert p_value_text(0.0123, 1000) == "p=0.012" and p_value_text(1 / 1001, 1000) == "p<0.001"
    assert p_value_text(0.5, 100) == "p=0.50" and TOO_FEW == 10
    assert paired_gain([1] * TOO_FEW, [0] * TOO_FEW).ci is not None


def test_select_pool_on_two_instructions_states_no_ci_or_p_value(pool_dir):
    out = bon("eval", "select-pool", str(pool_dir), "--judge", "length", "--limit", "2")
    text = said(out)
    assert out.returncode == 0 and "too few (n=2)" in text and "p=" not in text and "p<" not in text, text
    data = json.loads(bon("eval", "select-pool", str(pool_dir), "--judge", "length", "--json").stdout)
    assert data["win_rate_ci"] is None and data["vs_random"]["p_value"] is None


@pytest.mark.parametrize("lam", ["0,0.01,0.02,0.03,1"])
def test_the_length_sweep_plot_has_ci_bars_and_labels_apart(pool_dir, tmp_path, lam):
    from bon.eval.pool import _label_offsets

    offsets = _label_offsets([100, 101, 102, 300], [50, 50.2, 50.1, 40])
    assert len(set(offsets[:3])) == 3 and offsets[3] == offsets[0]  # crowded points stack; a far one does not
    report = tmp_path / "sweep"
    out = bon("eval", "select-pool", str(pool_dir), "--judge", "length", "--length-penalty", lam, "--out", str(report))
    assert out.returncode == 0 and (report / "length_sweep.png").stat().st_size > 1000


@pytest.mark.parametrize("command", [["eval", "alpaca-eval"], ["eval", "gain"]])
def test_a_misspelt_annotator_is_said_before_the_run_is_read(finished, tmp_path, command):
    (Path(finished) / "model_outputs.json").write_text("not json")  # whatever the run holds, the name comes first
    out = bon(*command, str(finished), "--annotator", "weighted_alpaca_eval_gpt4_trubo", "--reference-outputs", "x")
    one_clear_line(out, "unknown annotator", "did you mean 'weighted_alpaca_eval_gpt4_turbo'")

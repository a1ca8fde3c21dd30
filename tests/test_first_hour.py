"""A new user's first hour (issue 22): what bon prints when a newcomer makes the usual mistakes."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from tests.conftest import BlindLength
from tests.helpers import bon, contents, one_clear_line


def test_select_refuses_a_judge_that_scored_nothing_unless_allowed(finished, monkeypatch):
    from bon.pipeline import rejudge

    monkeypatch.setattr(rejudge, "build_judge", lambda name, options: BlindLength())
    rejudge.judge_run(finished, "length", label="blind", allow_unjudged=True)
    monkeypatch.undo()
    before = contents(finished)
    refused = bon("select", str(finished), "--judge", "blind")
    one_clear_line(
        refused,
        "judge 'blind' could score none of the candidates of 5 of 5 prompts",
        "reference missing); nothing was changed.",
        "(bon select: --allow-unjudged)",
    )
    assert contents(finished) == before
    allowed = bon("select", str(finished), "--judge", "blind", "--allow-unjudged")
    said = " ".join(allowed.stdout.split())
    assert (
        allowed.returncode == 0
        and "5 prompts selected with blind: 5 answered, 0 declined, 5 of them without any score" in said
    )


@pytest.mark.parametrize("decline", [None, "0.5"])
def test_select_with_a_judge_that_scored_everything_reports_no_fallbacks(finished, decline):
    args = ["--decline-below", decline] if decline else []
    out = bon("select", str(finished), "--judge", "length", *args)
    assert out.returncode == 0 and "without any score" not in out.stdout, out.stdout + out.stderr


@pytest.mark.slow
def test_ctrl_c_says_what_is_kept_and_how_to_resume_and_the_resume_finishes(tmp_path):
    import signal
    import subprocess
    import time

    from tests.helpers import BON

    out = tmp_path / "run"
    args = ["run", "configs/demo.yaml", "--set", f"output_dir={out}", "--set", "n=2", "--set", "policy.max_tokens=16"]

    def interruptible() -> None:  # a background job inherits SIGINT ignored, and Python then keeps it so
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    p = subprocess.Popen(
        [*BON, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible
    )
    deadline = time.monotonic() + 300
    while not ((out / "candidates.jsonl").exists() and (out / "candidates.jsonl").stat().st_size):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    said = " ".join(err.split())
    assert p.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert re.search(
        rf"interrupted: \d+ candidates(, \d+ judgements)?(, \d+ selections)? kept in {re.escape(str(out))}", said
    )
    assert f"rerun `{shlex.join([*BON, *args])}` to resume" in said, said  # runnable as printed
    assert "Loading weights" not in err  # transformers' bar for a local load is not shown
    resumed = bon(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert sum(1 for _ in open(out / "selections.jsonl")) == 6


def test_gain_on_a_run_of_other_prompts_counts_its_instructions_not_its_picks(finished):
    """Gain asks several picks (k = 1, 2, ...) per instruction: the message counts instructions, once each."""

    ref = finished.parent / "ref.json"
    ref.write_text(json.dumps([{"instruction": "unrelated", "output": "x", "generator": "b", "dataset": "d"}]))
    out = bon("eval", "gain", str(finished), "--reference-outputs", str(ref), "--annotator", "precomputed:x.json")
    one_clear_line(out, f"{finished}/candidates.jsonl: 5 of 5 instructions have no baseline output")


def test_winrate_given_a_model_outputs_file_says_what_it_is_and_what_to_read(finished):
    out = bon("eval", "winrate", str(finished / "model_outputs.json"))
    one_clear_line(
        out,
        "model_outputs.json: this is a model_outputs file (instruction, output), not annotations",
        "then read RUN_DIR/alpaca_eval/v2/annotations_cache.json",
    )


def test_flags_are_counted_by_kind_with_an_example():
    from bon.core.records import Judgement
    from bon.pipeline.selection import flag_counts

    flags = [
        "digit mass 0.047 below 0.05: the judge barely rates",
        "digit mass 0.008 below 0.05: the judge barely rates",
        None,
        "answer truncated from 300 to 120 tokens to fit the judge's context (512); digit mass 0.010 below 0.05: "
        "the judge barely rates",
    ]
    judgements = [Judgement("p", i, "selfj", 1.0, flag=f) for i, f in enumerate(flags)]
    assert flag_counts(judgements) == [
        (3, "digit mass 0.047 below 0.05: the judge barely rates"),
        (1, "answer truncated from 300 to 120 tokens to fit the judge's context (512)"),
    ]


def test_the_run_summary_gives_rates_only_where_enough_was_timed():
    from types import SimpleNamespace

    from bon.cli.main import run_summary
    from bon.core.records import Prompt, Selection

    selections = [Selection("p", 0, False, 1.0, "length")]
    result = SimpleNamespace(
        prompts=[Prompt("p", "Hi?")], selections=selections, generated=8, judged=8, seconds={"sample": 4.0, "judge": 0.001},
        flags=[(2, "a flag")], flagged=2, judgements=8, threshold=None,
    )  # fmt: skip
    lines = run_summary(result, 5.0)
    assert (
        lines[0]
        == "1 prompts, 0 declined; sampled 8 candidates in 4.0 s (2.0/s), made 8 judgements in 0.0 s; wall 5.0 s"
    )
    assert lines[1:] == ["flagged judgements: 2 of 8 (flags by kind, with an example):", "      2  a flag"]
    result.generated = result.judged = 0
    assert "nothing left to sample or judge" in run_summary(result, 1.0)[0]
    two_turns = [Prompt("q1", "A?"), Prompt("q1:turn2", "B?", conversation="q1", turn=2), Prompt("q2", "C?")]
    result.prompts = two_turns + [Prompt("q2:turn2", "D?", conversation="q2", turn=2)]
    assert run_summary(result, 1.0)[0].startswith("2 questions, 4 turns, 0 declined")  # not "4 prompts"


def test_compare_report_gives_every_number_its_n_and_marks_too_few(tmp_path, pair_file, pool_dir):
    from bon.eval.compare import run_compare
    from bon.eval.compare_report import TOO_FEW, write_compare_report
    from tests.conftest import PAIRS
    from tests.conftest import compare_config as _config

    assert len(PAIRS) < TOO_FEW  # the fixture is small on purpose
    cfg = _config(tmp_path, pair_file, pool_dir)
    md, js, pngs = write_compare_report(run_compare(cfg, note=lambda m: None))
    report = md.read_text()
    assert f"too few (n={len(PAIRS)})" in report  # AURC and length ρ of the pairwise rows
    assert "per scenario group, with its pairs" in report and "too few (n=1)" in report.split("scenario group")[1]
    assert "number of prompts it averages" in report and "too few (n=" in report.split("Agreement between judges")[1]
    agreement = report.split("Agreement between judges")[1].split("\n\n")[1].splitlines()
    for row in agreement[2:]:  # a judge against itself: no number, never "too few"
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1 + agreement[2:].index(row)] == "—", row
    data = json.loads(js.read_text())
    assert isinstance(data["benchmarks"][0]["results"][0]["aurc"], float)  # results.json keeps every number
    assert any(p.name.startswith("risk_coverage_") for p in pngs)

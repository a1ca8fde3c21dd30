"""Hostile inputs, second round: user text printed verbatim, values outside their domain refused."""

from __future__ import annotations

import re
import shutil

import pytest

from bon.core.config import ConfigError
from bon.core.judging import build_judge
from bon.core.records import Judgement
from tests.conftest import BlindLength
from tests.helpers import bon, contents, one_clear_line

MARKUP = ["[/]", "[bold]x[/bold]", "[link=file:///etc]y", "a[/b]"]


@pytest.mark.parametrize("text", MARKUP)
def test_a_missing_config_path_with_markup_is_printed_verbatim(tmp_path, text):
    path = tmp_path / f"c{text.replace('/', '_')}.yaml"
    one_clear_line(bon("run", str(path)), str(path))


@pytest.mark.parametrize("text", MARKUP)
def test_a_judge_name_with_markup_is_printed_verbatim(finished, text):
    one_clear_line(bon("select", str(finished), "--judge", text), repr(text))


def test_bon_check_prints_a_path_with_markup_verbatim(tmp_path):
    path = tmp_path / "odd[bold]dir[red]"
    path.mkdir()
    shutil.copy("configs/demo.yaml", path / "demo.yaml")
    out = bon("check", str(path / "demo.yaml"), "--set", "prompts.source=configs/prompts/demo.jsonl")
    assert out.returncode in (0, 1) and "Traceback" not in out.stderr, out.stderr[-800:]
    assert "odd[bold]dir[red]" in " ".join(out.stdout.split())


def test_an_ensemble_without_members_is_refused():

    with pytest.raises(ConfigError, match="members: List should have at least 1 item"):
        build_judge("ensemble", {"members": []})


@pytest.mark.parametrize("key", ["nope", "rating_logprob", "DIGIT_MASS"])
def test_a_tie_break_on_a_number_no_judgement_records_is_refused(finished, key):
    before = contents(finished)
    out = bon("select", str(finished), "--judge", "length", "--tie-break", f"details:{key}")
    one_clear_line(out, f"tie_break 'details:{key}': judge 'length' records no '{key}'")
    assert contents(finished) == before


@pytest.mark.parametrize(
    "file, field, value",
    [
        ("candidates.jsonl", "index", 3),
        ("candidates.jsonl", "index", 10**23),
        ("judgements.jsonl", "candidate_index", 7),
        ("selections.jsonl", "chosen_index", 3),
    ],
)
@pytest.mark.parametrize("command", [["select", "--judge", "length"], ["judge", "--judge", "random"]])
def test_a_candidate_index_beyond_the_runs_n_is_refused_naming_file_and_line(finished, file, field, value, command):
    import json

    path = finished / file
    lines = path.read_text().splitlines()
    row = json.loads(lines[1])
    row[field] = value
    lines[1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    before = contents(finished)
    out = bon(command[0], str(finished), *command[1:])
    one_clear_line(out, f"{file}:2: field '{field}': {value} is not a candidate of this run (n=3: 0 to 2)")
    assert contents(finished) == before


# library errors that user input causes end in one line -------------------------------------------------


@pytest.mark.parametrize("prefs", [[None], [None, None], ["NaN"]])
def test_a_win_rate_of_annotations_without_preferences_is_one_line(tmp_path, prefs):
    import json

    rows = [{"instruction": f"q{i}", "output_1": "a", "output_2": "b"} for i in range(len(prefs))]
    for row, p in zip(rows, prefs):
        if p is not None:
            row["preference"] = p
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(rows).replace('"NaN"', "NaN"))
    one_clear_line(bon("eval", "winrate", str(path)), f"{path}: none of {len(prefs)} annotations holds a preference")


def _pool(folder, rows_a, rows_b):
    import json

    folder.mkdir()
    for name, rows in (("a", rows_a), ("b", rows_b)):
        data = [{"instruction": q, "output_1": "x", "output_2": o, "preference": p} for q, o, p in rows]
        (folder / f"{name}.json").write_text(json.dumps(data))
    return folder


def test_a_pool_with_no_instruction_rated_in_every_file_is_one_line(tmp_path):
    pool = _pool(tmp_path / "pool", [("q", "a", None), ("r", "b", 1)], [("q", "c", 1), ("r", "d", None)])
    one_clear_line(bon("eval", "select-pool", str(pool), "--judge", "length"), "no instruction has a preference")


def test_select_pool_out_onto_a_file_is_one_line_after_the_work(tmp_path):
    pool = _pool(tmp_path / "pool", [("q", "a", 2), ("r", "b", 1)], [("q", "cc", 1), ("r", "d", 2)])
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    one_clear_line(bon("eval", "select-pool", str(pool), "--judge", "length", "--out", str(blocker)), str(blocker))
    assert blocker.read_text() == "mine"


@pytest.mark.parametrize(
    "row, says",
    [
        ({"output": "x"}, "row 0: field 'instruction': expected a string, found None"),
        ({"instruction": "q", "output": None}, "row 0: field 'output': expected a string, found None"),
        ({"instruction": "q", "output": 3}, "row 0: field 'output': expected a string, found 3"),
    ],
)
def test_reference_outputs_rows_are_checked_where_they_are_read(finished, tmp_path, row, says):
    import json

    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps([row]))
    before = contents(finished)
    one_clear_line(bon("eval", "alpaca-eval", str(finished), "--reference-outputs", str(ref)), f"{ref}: {says}")
    assert contents(finished) == before


# quiet misreadings -------------------------------------------------------------------------------------


def _annotations_file(tmp_path):
    import json

    path = tmp_path / "ann.json"
    path.write_text(json.dumps([{"instruction": "q", "output_1": "a", "output_2": "b", "preference": 2}]))
    return path


@pytest.mark.parametrize("where", ["dir", "dir/"])
def test_lc_data_given_a_directory_is_an_error_not_a_note(tmp_path, where):
    (tmp_path / "dir").mkdir()
    lc = str(tmp_path / where)
    one_clear_line(bon("eval", "winrate", str(_annotations_file(tmp_path)), "--lc-data", lc), "is a directory")


@pytest.mark.parametrize("annotator", ["precomputed:", "precomputed:  ", "local:"])
def test_an_annotator_that_names_no_file_or_model_is_refused(finished, tmp_path, annotator):
    import json

    ref = tmp_path / "ref.json"
    rows = json.loads((finished / "model_outputs.json").read_text())
    ref.write_text(json.dumps([{"instruction": r["instruction"], "output": "base"} for r in rows]))
    out = bon("eval", "alpaca-eval", str(finished), "--reference-outputs", str(ref), "--annotator", annotator)
    one_clear_line(out, " ".join(f"--annotator {annotator!r} names no".split()))  # stderr is read with spaces folded


# a refusal leaves the directory as it was, or says what it kept and a rerun redoes it -----------------


@pytest.mark.parametrize("damage", ["{not json", '{"schema": 1, "kind": "candidate"}', "[1, 2]"])
@pytest.mark.parametrize("command", [["judge", "--judge", "random"], ["select", "--judge", "length"]])
def test_a_corrupt_candidates_line_is_refused_before_anything_is_written(finished, damage, command):
    path = finished / "candidates.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2] + [damage + "\n"] + lines[2:]))
    before = contents(finished)
    one_clear_line(bon(command[0], str(finished), *command[1:]), "candidates.jsonl:3:")
    assert contents(finished) == before


def test_a_judge_that_scores_nothing_keeps_its_failures_and_a_fixed_rerun_judges_them_again(finished, monkeypatch):
    from bon.core.io import read_records
    from bon.pipeline import rejudge
    from bon.pipeline.selection import UnjudgedError

    monkeypatch.setattr(rejudge, "build_judge", lambda name, options: BlindLength())
    with pytest.raises(UnjudgedError, match="kept under 'len2' and judged again when this command is rerun"):
        rejudge.judge_run(finished, "length", label="len2")
    kept = [j for j in read_records(finished / "judgements.jsonl", Judgement) if j.judge == "len2"]
    assert kept and not any(j.ok for j in kept)
    monkeypatch.undo()
    assert rejudge.judge_run(finished, "length", label="len2") == len(kept)  # the cause fixed: judged again
    again = [j for j in read_records(finished / "judgements.jsonl", Judgement) if j.judge == "len2"]
    assert len(again) == len(kept) and all(j.ok for j in again)
    assert rejudge.judge_run(finished, "length", label="len2") == 0  # and then nothing is left to do


# absurd sizes are refused before any work --------------------------------------------------------------


@pytest.mark.parametrize("n", ["1000000000000000000000000000000", "4097", "10**30"])
def test_an_absurd_n_is_refused_by_the_config(n):
    from bon.core.config import load_config

    with pytest.raises(ConfigError, match=rf"^--set n={re.escape(n)}: n: "):
        load_config(None, [f"n={n}"])


@pytest.mark.parametrize(
    "n, rows, says",
    [
        (129, None, "n 129 is more candidates than the transformers engine decodes at once (128 rows"),
        (500, None, "n 500 is more candidates than the transformers engine decodes at once (128 rows"),
        (64, 32, "policy.max_rows 32 cannot hold one prompt's n=64 rows"),
        (200, 256, None),
    ],
)
def test_n_beyond_the_engines_rows_is_refused_before_the_run_directory_exists(tmp_path, n, rows, says):
    sets = ["--set", f"n={n}", "--set", f"output_dir={tmp_path / 'run'}", "--set", "policy.device=cpu"]
    if rows:
        sets += ["--set", f"policy.max_rows={rows}"]
    check = bon("check", "configs/demo.yaml", *sets)
    said = " ".join((check.stdout + check.stderr).split())
    if says is None:
        assert check.returncode == 0 and "more candidates than" not in said, said
        return
    assert check.returncode in (1, 2) and says in said, said
    one_clear_line(bon("run", "configs/demo.yaml", *sets), says)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["1000000000", "100001"])
def test_an_absurd_bootstrap_is_refused(tmp_path, value):
    from bon.core.config import load_config
    from bon.eval.compare import CompareConfig

    with pytest.raises(ConfigError, match="bootstrap: Input should be less than or equal to 100000"):
        load_config("configs/compare_cpu.yaml", [f"bootstrap={value}"], model=CompareConfig)


def test_the_default_kv_budget_is_checked_before_the_run_directory_exists(tmp_path):
    """Unset, policy.max_kv_tokens is a quarter of the RAM the weights leave, in the model's KV bytes per token
    (SmolLM2: 46080): 128 rows of 8,000 tokens each need ~47 GB and are refused from the config alone."""
    sets = ["--set", "n=128", "--set", "policy.max_tokens=8000", "--set", f"output_dir={tmp_path / 'run'}"]
    sets += ["--set", "policy.device=cpu"]
    check = bon("check", "configs/demo.yaml", *sets)
    said = " ".join(check.stdout.split())
    assert (
        check.returncode == 1
        and "policy.max_kv_tokens' default, a quarter of the RAM beside the weights at 46080 bytes" in said
    )
    one_clear_line(bon("run", "configs/demo.yaml", *sets), "cannot hold 6 prompts' n=128 rows")
    assert not (tmp_path / "run").exists()
    ok = bon("check", "configs/demo.yaml", "--set", "policy.device=cpu", "--set", f"output_dir={tmp_path / 'ok'}")
    assert ok.returncode == 0 and "policy KV cache" in ok.stdout


def test_a_run_whose_judge_scores_nothing_judges_and_selects_those_prompts_again_when_rerun(tmp_path, prompts_file):
    from bon.core.io import read_records
    from bon.core.records import Candidate, Selection
    from bon.pipeline.runner import run
    from bon.pipeline.selection import UnjudgedError
    from tests.conftest import FakePolicy
    from tests.conftest import run_config as config

    cfg = config(tmp_path, prompts_file)  # five prompts, n=3, judged with `length`
    with pytest.raises(UnjudgedError, match="kept under 'length' and judged again when this command is rerun"):
        run(cfg, policy=FakePolicy(), judge=BlindLength())
    cands = read_records(cfg.output_dir / "candidates.jsonl", Candidate)
    assert not any(j.ok for j in read_records(cfg.output_dir / "judgements.jsonl", Judgement))
    policy = FakePolicy()
    result = run(cfg, policy=policy)  # the cause fixed
    assert policy.calls == 0 and read_records(cfg.output_dir / "candidates.jsonl", Candidate) == cands
    judged = read_records(cfg.output_dir / "judgements.jsonl", Judgement)
    assert len(judged) == len(cands) and all(j.ok for j in judged)
    selections = read_records(cfg.output_dir / "selections.jsonl", Selection)
    assert len(selections) == 5 and all(s.score is not None and not s.declined for s in selections)
    assert [s.chosen_index for s in result.selections] == [s.chosen_index for s in selections]

"""Generate once, judge many: `judge_run` appends, `select_run` re-selects, candidates untouched."""

import json

import pytest

from bon.core.config import ConfigError
from bon.core.records import Judgement, Selection
from bon.core.rundir import RunDirError
from bon.pipeline.rejudge import judge_run, select_run
from bon.pipeline.runner import run
from tests.conftest import FakePolicy
from tests.conftest import run_config as config


@pytest.fixture
def finished(tmp_path, prompts_file):
    cfg = config(tmp_path, prompts_file)  # judged with `length`
    run(cfg, policy=FakePolicy())
    return cfg.output_dir


def test_judge_then_select_with_another_judge(finished):
    candidates = (finished / "candidates.jsonl").read_bytes()
    assert judge_run(finished, "random", {"seed": 5}) == 15
    assert judge_run(finished, "random", {"seed": 5}) == 0  # rerun: nothing left to do
    assert (finished / "candidates.jsonl").read_bytes() == candidates
    from bon.core.rundir import RunDir

    rd = RunDir(finished)
    by_judge = {}
    for j in rd.read(Judgement):
        by_judge.setdefault(j.judge, {})[(j.prompt_id, j.candidate_index)] = j.score
    assert set(by_judge) == {"length", "random"} and len(by_judge["random"]) == 15
    manifest = json.loads((finished / "manifest.json").read_text())
    assert manifest["judges"]["random"]["options"] == {"seed": 5}

    done = select_run(finished, "random")
    selections, outputs = done.selections, done.outputs
    for s in selections:
        scores = {i: by_judge["random"][(s.prompt_id, i)] for i in range(3)}
        assert s.chosen_index == max(scores, key=scores.get) and s.judge == "random"
    kept = rd.read(Selection)
    assert sorted({s.judge for s in kept}) == ["length", "random"] and len(kept) == 10
    rows = json.loads(outputs.read_text())
    assert rows[0]["generator"] == "SmolLM2-135M-Instruct-bo3-random"
    assert json.loads((finished / "manifest.json").read_text())["selected_with"]["judge"] == "random"

    again = select_run(finished, "random", decline_below=0.5).selections  # replaces its own lines
    assert len(rd.read(Selection)) == 10 and any(s.declined for s in again) == any(s.score < 0.5 for s in selections)


def test_labels_keep_settings_apart(finished):
    judge_run(finished, "random", {"seed": 1})
    with pytest.raises(RunDirError, match="made by random with options {'seed': 1}; pass another --label"):
        judge_run(finished, "random", {"seed": 2})
    with pytest.raises(RunDirError, match="judgements named 'length' were made by length"):
        judge_run(finished, "random", label="length")
    assert judge_run(finished, "random", {"seed": 2}, label="random2") == 15


def test_errors_are_clear(finished, tmp_path):
    with pytest.raises(RunDirError, match="have no 'ppl' judgement"):
        select_run(finished, "ppl")
    with pytest.raises(RunDirError, match="not a run directory"):
        judge_run(tmp_path / "nowhere", "length")
    with pytest.raises(ConfigError, match="judge 'random' options: sed: unknown key"):
        judge_run(finished, "random", {"sed": 1})
    with pytest.raises(KeyError, match="Did you mean 'length'"):
        judge_run(finished, "lenght")


def test_a_run_directory_stands_alone_copied_elsewhere_without_its_prompt_file(finished, prompts_file, tmp_path):
    """The run keeps its prompts: a copy in another folder is judged, selected, exported and viewed with the prompt
    file gone; a run written before bon kept them names the missing file."""
    import shutil

    from tests.helpers import bon, one_clear_line

    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(finished, copy)
    prompts_file.unlink()
    for args in (
        ("judge", str(copy), "--judge", "random"),
        ("select", str(copy), "--judge", "random"),
        ("export", "sft", str(copy), "--out", str(tmp_path / "sft")),
        ("view", str(copy)),
    ):
        out = bon(*args, cwd=tmp_path / "elsewhere")
        assert out.returncode == 0, (args, out.stderr)
    (copy / "prompts.jsonl").unlink()  # as bb53da8 wrote runs
    one_clear_line(bon("select", str(copy), "--judge", "random"), "keeps no prompts.jsonl", str(prompts_file))

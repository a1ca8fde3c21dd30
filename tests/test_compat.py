"""Run directories written by older bons (main f4e461e and 0d39e3e) resume and re-select under this one.

`tests/data/run_<commit>/` was made by that commit's code with the fake policy and the length judge:
``partial`` died while sampling its second batch; ``finished`` was also judged by ``random``
(label ``rand5``) and re-selected with it. 0d39e3e's also holds ``compared``, a `bon compare` of the
length and random judges on a pairwise file.
"""

import shutil

import pytest

from bon.core.config import load_config
from bon.core.records import Judgement, Selection
from bon.core.rundir import RunDir
from bon.pipeline.rejudge import judge_run, select_run
from bon.pipeline.runner import run
from tests.conftest import ROOT, FakePolicy

OLD = ["f4e461e", "0d39e3e"]
BASE = ["prompts.source=prompts.jsonl", "n=3", "batch_size=2", "judge.name=length"]
RECORDS = ("candidates.jsonl", "judgements.jsonl", "selections.jsonl", "model_outputs.json")


def _copy(tmp_path, monkeypatch, commit):
    work = tmp_path / "old"
    shutil.copytree(ROOT / "tests" / "data" / f"run_{commit}", work)
    monkeypatch.chdir(work)  # the stored configs name relative paths
    return work


@pytest.mark.parametrize("commit", OLD)
def test_an_old_interrupted_run_resumes_to_the_uninterrupted_files(tmp_path, monkeypatch, commit):
    work = _copy(tmp_path, monkeypatch, commit)
    policy = FakePolicy()
    result = run(load_config(None, ["output_dir=partial", *BASE]), policy=policy)
    assert policy.calls == 2 and result.generated == 9  # only the two batches the old run never sampled
    fresh = run(load_config(None, ["output_dir=fresh", *BASE]), policy=FakePolicy())
    assert fresh.generated == 15
    for name in RECORDS:
        assert (work / "partial" / name).read_bytes() == (work / "fresh" / name).read_bytes(), name


@pytest.mark.parametrize("commit", OLD)
def test_an_old_finished_run_rejudges_nothing_and_reselects(tmp_path, monkeypatch, commit):
    work = _copy(tmp_path, monkeypatch, commit)
    before = (work / "finished" / "judgements.jsonl").read_bytes()
    assert judge_run(work / "finished", "random", {"seed": 5}, label="rand5") == 0  # the old label keeps its meaning
    assert (work / "finished" / "judgements.jsonl").read_bytes() == before
    selections = select_run(work / "finished", "length").selections
    rd = RunDir(work / "finished")
    by_length = {s.prompt_id: s for s in rd.read(Selection) if s.judge == "length"}
    assert [s.chosen_index for s in selections] == [by_length[s.prompt_id].chosen_index for s in selections]
    old_rand = [s for s in rd.read(Selection) if s.judge == "rand5"]
    assert len(old_rand) == 5 and len([j for j in rd.read(Judgement) if j.judge == "rand5"]) == 15
    policy = FakePolicy()
    assert run(load_config(None, ["output_dir=finished", *BASE]), policy=policy).generated == 0 and policy.calls == 0


def test_an_old_comparison_judges_nothing_again_and_keeps_its_labels(tmp_path, monkeypatch):
    from bon.core.rundir import RunDirError
    from bon.eval.compare import CompareConfig, run_compare

    work = _copy(tmp_path, monkeypatch, "0d39e3e")
    stored = {p: p.read_bytes() for p in (work / "compared").rglob("*.jsonl")}
    result = run_compare(load_config(work / "compare.yaml", model=CompareConfig), note=lambda m: None)
    assert {p: p.read_bytes() for p in (work / "compared").rglob("*.jsonl")} == stored  # nothing judged again
    assert [r.judge for r in result.benchmarks[0].results] == ["length", "rand5"]
    changed = work / "changed.yaml"
    changed.write_text((work / "compare.yaml").read_text().replace('"seed": 5', '"seed": 6'))
    with pytest.raises(RunDirError, match="judge 'rand5' was run as"):
        run_compare(load_config(changed, model=CompareConfig), note=lambda m: None)

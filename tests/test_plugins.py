"""Judges from outside bon, for real: a package with its own pyproject.toml and dist-info on the path, found by
import path and by entry point; a plain TRL-style reward function; and every way a user's judge can break its
contract, each a flagged judgement or one line naming the judge (the Ray engine: tests/test_ray.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bon.core.records import Judgement
from bon.core.rundir import RunDir
from bon.pipeline.runner import run
from tests.conftest import FakePolicy, compare_config, run_config
from tests.helpers import bon, contents, one_clear_line, outside_package


@pytest.fixture
def outside(tmp_path, monkeypatch) -> Path:
    folder = outside_package(tmp_path / "outside")
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in [m for m in sys.modules if m.startswith("wordjudges")]:
        del sys.modules[name]  # the next test's package is another folder


def _judged(run_dir: Path, label: str) -> list[Judgement]:
    return [j for j in RunDir(run_dir).read(Judgement) if j.judge == label]


def test_a_class_by_import_path_runs_with_options_from_its_constructor(outside, tmp_path, prompts_file):
    cfg = run_config(tmp_path, prompts_file, "judge.name=wordjudges:WordJudge", "judge.options.bonus=0.5")
    run(cfg, policy=FakePolicy())
    judged = _judged(cfg.output_dir, "wordjudges:WordJudge")
    assert len(judged) == 15 and all(j.score == len(c.split()) + 0.5 for j, c in zip(judged, _texts(cfg.output_dir)))
    manifest = json.loads((cfg.output_dir / "manifest.json").read_text())
    assert manifest["config"]["judge"] == {"name": "wordjudges:WordJudge", "options": {"bonus": 0.5}}
    with pytest.raises(Exception, match=r"options.bonus: Input should be a valid number"):
        run_config(tmp_path, prompts_file, "judge.name=wordjudges:WordJudge", "judge.options.bonus=lots")
    with pytest.raises(Exception, match=r"options.bonsu: unknown key; did you mean 'bonus'"):
        run_config(tmp_path, prompts_file, "judge.name=wordjudges:WordJudge", "judge.options.bonsu=1")


def _texts(run_dir: Path) -> list[str]:
    from bon.core.records import Candidate

    return [c.text for c in RunDir(run_dir).read(Candidate)]


def test_a_trl_reward_function_judges_a_run_and_gets_the_references_it_asks_for(outside, finished):
    out = bon("judge", str(finished), "--judge", "wordjudges:word_count")
    assert out.returncode == 0, out.stderr
    assert [j.score for j in _judged(finished, "wordjudges:word_count")] == [
        float(len(t.split())) for t in _texts(finished)
    ]
    out = bon("judge", str(finished), "--judge", "wordjudges:with_reference", "--set", "scale=2", "--label", "ref")
    assert out.returncode == 0, out.stderr
    assert {j.score for j in _judged(finished, "ref")} <= {0.0, 2.0}
    assert bon("select", str(finished), "--judge", "ref").returncode == 0


def test_an_entry_point_is_listed_with_its_package_and_used_by_name(outside, finished):
    listed = " ".join(bon("judges", "list").stdout.split())
    assert "words [entry point of wordjudges 0.1] More words, higher score." in listed
    assert (
        "broken [entry point of wordjudges 0.1] cannot be used: judge 'broken': cannot import wordjudges_gone" in listed
    )
    assert bon("judge", str(finished), "--judge", "words").returncode == 0
    assert len(_judged(finished, "words")) == 15
    one_clear_line(bon("judge", str(finished), "--judge", "broken"), "judge 'broken': cannot import wordjudges_gone")
    assert "bonus: float = 0.0" in bon("judges", "list", "--options", "words").stdout


def test_compare_takes_outside_judges(outside, tmp_path, pair_file, pool_dir):
    from bon.eval.compare import run_compare

    judges = [{"name": "wordjudges:word_count", "label": "wc"}, {"name": "words"}]
    result = run_compare(compare_config(tmp_path, pair_file, pool_dir, judges=judges), note=lambda _: None)
    names = {r.judge for b in result.benchmarks for r in b.results}
    assert names == {"wc", "words"}
    assert (tmp_path / "cmp" / "judgements" / "pool" / "wc.jsonl").exists()


@pytest.mark.parametrize(
    ("name", "flag"),
    [
        ("words_as_text", "the judge returned 'high' (str), not a number"),
        ("raises", "the judge raised RuntimeError: reward server down"),
    ],
)
def test_a_judge_that_answers_badly_gives_flagged_judgements_never_a_number(outside, finished, name, flag):
    out = bon("judge", str(finished), "--judge", f"wordjudges:{name}", "--allow-unjudged")
    assert out.returncode == 0, out.stderr
    judged = _judged(finished, f"wordjudges:{name}")
    assert len(judged) == 15 and all(j.score is None and j.flag == flag for j in judged)


def test_nan_inf_and_none_are_flagged_and_a_hung_judge_times_out(outside, finished):
    assert bon("judge", str(finished), "--judge", "wordjudges:not_a_number", "--allow-unjudged").returncode == 0
    flags = {j.flag for j in _judged(finished, "wordjudges:not_a_number")}
    assert flags == {
        "the judge returned a non-finite score nan",
        "the judge returned a non-finite score inf",
        "the judge returned None (no score)",
    }
    out = bon("judge", str(finished), "--judge", "wordjudges:hangs", "--set", "timeout_s=0.2", "--allow-unjudged")
    assert out.returncode == 0, out.stderr
    assert {j.flag for j in _judged(finished, "wordjudges:hangs")} == {"no answer within timeout_s 0.2"}


def test_a_wrong_count_an_unknown_path_and_a_missing_module_are_one_line_and_keep_the_run(outside, finished):
    before = contents(finished)
    one_clear_line(
        bon("judge", str(finished), "--judge", "wordjudges:one_short"),
        "judge 'wordjudges:one_short' returned 5 scores for 6 candidates",
        "from candidate ('q0', 0)",
    )
    one_clear_line(bon("judge", str(finished), "--judge", "wordjudges:Nope"), "wordjudges has no 'Nope'")
    one_clear_line(bon("judge", str(finished), "--judge", "nowhere.judges:J"), "cannot import nowhere.judges")
    for key in ("candidates.jsonl", "judgements.jsonl", "selections.jsonl"):
        assert contents(finished)[key] == before[key]


def test_a_run_config_names_a_missing_judge_in_one_line(tmp_path, prompts_file):
    path = tmp_path / "run.yaml"
    path.write_text(f"prompts: {{source: {prompts_file}}}\njudge: {{name: 'nowhere.judges:J'}}\n")
    one_clear_line(bon("run", str(path)), "run.yaml", "judge.name", "cannot import nowhere.judges")


def test_a_judge_written_to_bons_protocol_keeps_its_options_declaration_and_records(outside, finished):
    from bon.core.judging import JUDGES, build_judge

    cls = JUDGES.get("wordjudges:DeclaredJudge")
    assert cls.declaration.conversation == "answer" and cls.summary.startswith("A judge written to bon's")
    judge = build_judge("wordjudges:DeclaredJudge", {"target": 20})
    assert judge.describe() == "closeness to 20 characters"
    assert bon("judge", str(finished), "--judge", "wordjudges:DeclaredJudge", "--set", "target=20").returncode == 0
    judged = _judged(finished, "wordjudges:DeclaredJudge")  # relabelled: a judgement carries the name it runs under
    assert [j.score for j in judged] == [-abs(len(t) - 20) for t in _texts(finished)]
    one_clear_line(bon("judge", str(finished), "--judge", "wordjudges:DeclaredJudge", "--set", "tagret=1"), "tagret")


@pytest.mark.slow  # SmolLM2 samples; the judge is the user's
def test_bon_run_samples_with_the_real_policy_and_a_users_judge(outside, tmp_path):
    out = bon(
        "run", "configs/demo.yaml", "--set", "judge.name=wordjudges:WordJudge", "--set", "n=2",
        "--set", "prompts.limit=2", "--set", "policy.max_tokens=8", "--set", f"output_dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert len(_judged(tmp_path / "run", "wordjudges:WordJudge")) == 4

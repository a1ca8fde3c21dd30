"""The pipeline with a fake policy and the length judge: files, resume, repairs, declines."""

import json
import re

import pytest

from bon.core.config import load_config
from bon.core.records import Candidate, Judgement, Selection
from bon.core.rundir import RunDirError
from bon.pipeline.runner import run
from tests.conftest import FakePolicy
from tests.conftest import run_config as config

FILES = ("manifest.json", "candidates.jsonl", "judgements.jsonl", "selections.jsonl", "model_outputs.json")


def read(path):
    return path.read_text(encoding="utf-8")


def test_run_writes_all_files(tmp_path, prompts_file):
    cfg = config(tmp_path, prompts_file)
    result = run(cfg, policy=FakePolicy())
    assert sorted(p.name for p in cfg.output_dir.iterdir()) == sorted(
        [*FILES, "prompts.json", "prompts.jsonl"]
    )  # .lock is removed when the run ends
    assert result.generated == 15 and result.judged == 15
    outputs = json.loads(read(cfg.output_dir / "model_outputs.json"))
    assert [set(o) for o in outputs] == [{"instruction", "output", "generator", "dataset"}] * 5
    cands = {(c.prompt_id, c.index): c for c in result.run_dir.read(Candidate)}
    for s, o in zip(result.selections, outputs):
        longest = max(range(3), key=lambda i: (len(cands[(s.prompt_id, i)].text), -i))
        assert s.chosen_index == longest and o["output"] == cands[(s.prompt_id, longest)].text
    assert outputs[0]["generator"] == "SmolLM2-135M-Instruct-bo3-length"
    manifest = json.loads(read(cfg.output_dir / "manifest.json"))
    assert manifest["config"]["n"] == 3 and manifest["packages"]["pydantic"] and manifest["seeds"]["run"] == 0


def test_rerun_of_a_finished_run_does_nothing(tmp_path, prompts_file):
    cfg = config(tmp_path, prompts_file)
    run(cfg, policy=FakePolicy())
    before = {f: read(cfg.output_dir / f) for f in FILES}
    policy = FakePolicy()
    result = run(cfg, policy=policy)
    assert policy.calls == 0 and result.generated == 0 and result.judged == 0
    assert {f: read(cfg.output_dir / f) for f in FILES} == before


def test_crash_then_resume_equals_uninterrupted(tmp_path, prompts_file):
    ref_cfg = config(tmp_path / "ref", prompts_file)
    run(ref_cfg, policy=FakePolicy())
    cfg = config(tmp_path, prompts_file)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, policy=FakePolicy(fail_after_calls=1))  # dies while sampling the second batch
    assert len(read(cfg.output_dir / "candidates.jsonl").splitlines()) == 6
    assert not (cfg.output_dir / "model_outputs.json").exists()
    resumed = FakePolicy()
    run(cfg, policy=resumed)
    assert resumed.calls == 2  # batches 2 and 3 only
    for f in FILES[1:]:
        assert read(cfg.output_dir / f) == read(ref_cfg.output_dir / f), f


def test_torn_lines_and_partial_batches_are_redone(tmp_path, prompts_file):
    ref_cfg = config(tmp_path / "ref", prompts_file)
    run(ref_cfg, policy=FakePolicy())
    cfg = config(tmp_path, prompts_file)
    cfg.output_dir.mkdir(parents=True)
    ref_lines = {f: read(ref_cfg.output_dir / f).splitlines(keepends=True) for f in FILES[1:4]}
    # a kill -9 after 4 candidates and 2 judgements of batch 1, in the middle of a line
    (cfg.output_dir / "candidates.jsonl").write_text("".join(ref_lines["candidates.jsonl"][:4]) + '{"schema": 1, "ki')
    (cfg.output_dir / "judgements.jsonl").write_text("".join(ref_lines["judgements.jsonl"][:2]) + '{"sch')
    (cfg.output_dir / "manifest.json").write_text(
        read(ref_cfg.output_dir / "manifest.json").replace(str(ref_cfg.output_dir), str(cfg.output_dir))
    )
    result = run(cfg, policy=FakePolicy())
    assert result.generated == 11 and result.judged == 13
    for f in FILES[1:]:
        assert read(cfg.output_dir / f) == read(ref_cfg.output_dir / f), f
    assert len(result.run_dir.read(Judgement)) == 15 and len(result.run_dir.read(Selection)) == 5


def test_resume_with_another_config_is_refused_and_loses_nothing(tmp_path, prompts_file):
    cfg = config(tmp_path, prompts_file)
    run(cfg, policy=FakePolicy())
    before = read(cfg.output_dir / "candidates.jsonl")
    with pytest.raises(RunDirError, match=r"different config \(n: 3 -> 4\)"):
        run(config(tmp_path, prompts_file, "n=4"), policy=FakePolicy())
    assert read(cfg.output_dir / "candidates.jsonl") == before


def test_decline(tmp_path, prompts_file):
    best = sorted(s.score for s in run(config(tmp_path / "plain", prompts_file), policy=FakePolicy()).selections)
    threshold = best[2]  # a middle best score: some prompts fall below it, some reach it
    assert best[0] < threshold
    cfg = config(tmp_path, prompts_file, f"selection.decline_below={threshold}", "selection.decline_message=NO")
    result = run(cfg, policy=FakePolicy())
    outputs = json.loads(read(cfg.output_dir / "model_outputs.json"))
    declined = [s.declined for s in result.selections]
    assert any(declined) and not all(declined)
    for s, o in zip(result.selections, outputs):
        assert (o["output"] == "NO") == s.declined
        assert s.declined == (s.score < threshold)
    assert all(s.chosen_index is None for s in result.selections if s.declined)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["skip", "truncate"])
def test_prompts_over_the_policy_context_are_skipped_or_truncated_with_a_flag(tmp_path, mode):
    """SmolLM2 with a 96-token context: the long prompt gets a declined selection (skip) or a flagged,
    left-truncated prompt (truncate); the short one runs as usual."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        '{"id": "short", "instruction": "Name a fruit."}\n{"id": "long", "instruction": "'
        + "Tell me about cats. " * 30
        + '"}\n'
    )
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            f"prompts.source={prompts}",
            "n=2",
            "judge.name=length",
            "policy.max_tokens=8",
            "policy.context_length=96",
            f"policy.on_overflow={mode}",
        ],
    )
    result = run(cfg)
    cands = result.run_dir.read(Candidate)
    by_id = {s.prompt_id: s for s in result.selections}
    assert by_id["short"].chosen_index is not None and not by_id["short"].declined
    assert all(c.flag is None for c in cands if c.prompt_id == "short")
    outputs = json.loads(read(cfg.output_dir / "model_outputs.json"))
    if mode == "skip":
        assert {c.prompt_id for c in cands} == {"short"}
        assert by_id["long"].declined and by_id["long"].reason.startswith("skipped: prompt of ")
        assert outputs[1]["output"] == cfg.selection.decline_message and by_id["long"].skipped
        from bon.pipeline.rejudge import judge_run, select_run  # generate once, judge many: the skip stays a skip

        assert judge_run(cfg.output_dir, "random") == 2
        selections = select_run(cfg.output_dir, "random").selections
        assert [(s.prompt_id, s.skipped, s.judge) for s in selections] == [
            ("short", False, "random"),
            ("long", True, "random"),
        ]
    else:
        long = [c for c in cands if c.prompt_id == "long"]
        assert len(long) == 2 and all(
            c.prompt_tokens == 88 and c.flag.startswith("prompt left-truncated from ") for c in long
        )
        assert not by_id["long"].declined


@pytest.mark.slow
def test_engine_refuses_a_sequence_longer_than_its_context(smollm2):
    from bon.engines.contract import SamplingSettings
    from bon.engines.tokens import ContextLengthError

    with pytest.raises(ContextLengthError, match=r"#1 \(8190 tokens\)"):
        smollm2.sample([[1, 2], [5] * 8190], 1, [0, 0], SamplingSettings(1.0, 1.0, 8))
    with pytest.raises(ContextLengthError):
        smollm2.next_token_logprobs([[5] * 8192], [1])


@pytest.mark.slow
def test_early_rejection_stops_the_worst_partial_candidates(tmp_path, prompts_file):
    """SmolLM2 policy, length judge: after each 4-token chunk half of each prompt's unfinished candidates
    stop; they stay in the run as rejected records with a failed judgement and are never selected."""
    cfg = config(
        tmp_path,
        prompts_file,
        "n=4",
        "policy.max_tokens=12",
        "prompts.limit=2",
        "early_rejection.chunk_tokens=4",
        "early_rejection.keep_fraction=0.5",
    )
    result = run(cfg)
    cands = result.run_dir.read(Candidate)
    judged = {(j.prompt_id, j.candidate_index): j for j in result.run_dir.read(Judgement)}
    assert len(cands) == 8 and len(judged) == 8
    rejected = [c for c in cands if c.finish_reason == "rejected"]
    assert rejected and all(c.flag.startswith("rejected early after ") for c in rejected)
    assert all(re.search(r"partial score (-?\d+\.\d{3}|none), kept", c.flag) for c in rejected)  # 3 decimals
    assert all(judged[(c.prompt_id, c.index)].score is None for c in rejected)
    assert all(judged[(c.prompt_id, c.index)].score is not None for c in cands if c not in rejected)
    picks = {(s.prompt_id, s.chosen_index) for s in result.selections}
    assert not picks & {(c.prompt_id, c.index) for c in rejected}
    assert sum(c.completion_tokens for c in cands) < 8 * 12  # fewer tokens than full best-of-4


@pytest.mark.slow
def test_early_rejection_judges_only_rounds_that_cut_and_a_lone_survivor_never_pauses(tmp_path, prompts_file):
    """n=4, keep 0.5: a round judges 4 partial answers, the next 2; the one left decodes to its end unjudged
    (judging it could change nothing), and every paused prompt of a round is judged in the same call."""
    from bon.core.config import EarlyRejectionConfig
    from bon.core.prompts import load_prompts
    from bon.judges.length import LengthJudge
    from bon.pipeline.early_rejection import EarlyRejectionPolicy
    from bon.pipeline.policy import EnginePolicy

    calls: list[list[int]] = []

    class Counting(LengthJudge):
        def score(self, prompts, candidates):
            calls.append([sum(c.prompt_id == p.id for c in candidates) for p in prompts])
            return super().score(prompts, candidates)

    cfg = config(tmp_path, prompts_file, "n=4", "policy.max_tokens=48", "prompts.limit=2")
    er = EarlyRejectionConfig(chunk_tokens=4, keep_fraction=0.5)
    policy = EarlyRejectionPolicy(EnginePolicy(cfg.policy), Counting(), er)
    prompts = load_prompts(cfg.prompts)
    cands = policy.generate(prompts, 4, seed=0)
    policy.close()
    assert calls and all(size >= 2 for call in calls for size in call)  # no lone candidate is ever judged
    assert sum(len(call) for call in calls) <= 2 * len(prompts)  # two rounds per prompt at most: 4 -> 2 -> 1
    for p in prompts:
        survivors = [c for c in cands if c.prompt_id == p.id and c.finish_reason != "rejected"]
        assert 1 <= len(survivors) <= 4
        longest = max(survivors, key=lambda c: c.completion_tokens)
        assert longest.completion_tokens > 8  # the last survivor went on past the last round


def test_early_rejection_is_a_config_of_either_engine(tmp_path, prompts_file):
    cfg = config(tmp_path, prompts_file, "engine=ray", "early_rejection.keep_fraction=0.5")
    assert cfg.engine == "ray" and cfg.early_rejection is not None and cfg.early_rejection.keep_fraction == 0.5


def test_a_kv_budget_too_small_for_one_prompt_is_refused_before_any_work(tmp_path, prompts_file):
    from bon.core.errors import SizeError

    cfg = config(tmp_path, prompts_file, "policy.max_kv_tokens=100")  # 3 rows x (prompt + 256 tokens) > 100
    with pytest.raises(SizeError, match=r"policy.max_kv_tokens 100 cannot hold 5 prompts' n=3 rows"):
        run(cfg)
    assert not cfg.output_dir.exists()  # refused before the run directory is made

"""The policy's own confidence, measured while it decodes (issue 45, item 1): per candidate the sums of its sampled
tokens' log-probabilities, the entropies and self-certainty's terms of its next-token distributions, before temperature
and top-p; they equal what one teacher-forced pass computes, and candidates.jsonl carries them (optional fields)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import bon
from bon.core.io import DataFileError, append_records, read_records
from bon.core.records import Candidate, to_json
from bon.engines.contract import SamplingSettings
from bon.engines.stream import confidence_terms
from tests.helpers import prompts_of_random_tokens, tiny_engine


def test_the_terms_are_the_distributions_log_probability_entropy_and_kl_from_uniform():
    logits = torch.tensor([[0.0, math.log(3.0)], [5.0, 5.0]])  # p = (1/4, 3/4); then uniform
    terms = confidence_terms(logits, torch.tensor([1, 0]))
    p = torch.tensor([0.25, 0.75], dtype=torch.float64)
    assert terms[0].tolist() == pytest.approx(
        [math.log(0.75), float(-(p * p.log()).sum()), float((0.5 * (0.5 / p).log()).sum())]  # KL(uniform || p)
    )
    assert terms[1].tolist() == pytest.approx([math.log(0.5), math.log(2.0), 0.0])


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_the_decode_loops_sums_equal_a_teacher_forced_pass_as_rows_end_pause_and_are_rejected(temperature):
    engine = tiny_engine()
    engine.eos_ids = frozenset({5, 6, 7})  # rows end at different steps; the end token is not summed
    settings = SamplingSettings(temperature=temperature, top_p=0.9, max_tokens=20)
    prompts = prompts_of_random_tokens(5)
    loop = engine.session(settings, max_rows=8, max_kv_tokens=10_000)
    for k, ids in enumerate(prompts):
        loop.add(k, ids, 3, k, pause_every=6 if k % 2 else None)
    got: dict[int, list] = {}
    while len(got) < len(prompts):
        loop.advance([k for k in range(len(prompts)) if k not in got])
        for k in loop.paused():
            loop.resume(k, sorted(loop.partial(k))[:2])  # one candidate of three rejected mid-answer
        got.update((k, loop.result(k)) for k in loop.finished())
    samples = [(prompts[k], s) for k in range(len(prompts)) for s in got[k]]
    assert any(s.finish_reason == "rejected" for _, s in samples) and any(s.finish_reason == "stop" for _, s in samples)
    forced = engine.continuation_confidence([p for p, _ in samples], [list(s.token_ids) for _, s in samples])
    for (_, s), f in zip(samples, forced):
        c = s.confidence
        assert c is not None and c.tokens == len(s.token_ids) == f.tokens
        for free, teacher in ((c.logprob, f.logprob), (c.entropy, f.entropy), (c.certainty, f.certainty)):
            assert free / max(1, c.tokens) == pytest.approx(teacher / max(1, f.tokens), abs=1e-4)


def test_confidence_fields_round_trip_old_candidates_load_and_bad_values_name_the_field(tmp_path):
    path = tmp_path / "candidates.jsonl"
    measured = Candidate(
        "q0", 0, "Hi", 1, 9, 2, "stop", "p", token_ids=(4,), confidence_tokens=1, logprob_sum=-0.5, entropy_sum=1.25,
        certainty_sum=3.0,
    )  # fmt: skip
    append_records(path, [measured, Candidate("q0", 1, "Yo", 2, 9, 2, "stop", "p")])
    assert "logprob_sum" not in to_json(Candidate("q0", 1, "Yo", 2, 9, 2, "stop", "p"))  # unmeasured: left out
    assert read_records(path, Candidate)[0] == measured
    assert read_records(path, Candidate)[1].confidence_tokens is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(to_json(measured) | {"entropy_sum": "high"}) + "\n")
    with pytest.raises(DataFileError, match=r"bad.jsonl:1: field 'entropy_sum': expected a number or null"):
        read_records(bad, Candidate)


@pytest.mark.slow
def test_smollm2_candidates_carry_their_confidence_and_it_equals_the_teacher_forced_pass(tmp_path):
    cfg = bon.load_config(n=3, judge={"name": "length"}, policy={"max_tokens": 12}, output_dir=str(tmp_path / "run"))
    run = bon.run(cfg, ["Name a colour.", "Say hi."])
    cands = run.candidates()
    assert all(c.confidence_tokens == len(c.token_ids or ()) for c in cands)
    from bon.core.config import ModelConfig
    from bon.engines.hf import load

    hf = load(ModelConfig(model=cfg.policy.model))  # the policy's model, for one teacher-forced pass
    prompts = {p.id: hf.chat_ids(p.messages()) for p in run.prompts()}
    forced = hf.continuation_confidence([prompts[c.prompt_id] for c in cands], [list(c.token_ids or ()) for c in cands])
    for c, f in zip(cands, forced):
        assert c.logprob_sum is not None and c.entropy_sum is not None and c.certainty_sum is not None
        n = c.confidence_tokens or 1
        assert c.logprob_sum / n == pytest.approx(f.logprob / n, abs=1e-4)
        assert c.entropy_sum / n == pytest.approx(f.entropy / n, abs=1e-4)
        assert c.certainty_sum / n == pytest.approx(f.certainty / n, abs=1e-4)


def _measured(prompt_id: str, index: int, tokens: int, logprob: float, entropy: float, certainty: float) -> Candidate:
    return Candidate(
        prompt_id, index, "x" * tokens, index, 9, tokens, "stop", "p", token_ids=(4,) * tokens,
        confidence_tokens=tokens, logprob_sum=logprob, entropy_sum=entropy, certainty_sum=certainty,
    )  # fmt: skip


def test_the_free_judges_read_the_recorded_sums_and_load_no_model():
    from bon.core.judging import JUDGES, build_judge
    from bon.core.records import Prompt

    prompts = [Prompt("q", "Say hi.")]
    cands = [_measured("q", 0, 4, -2.0, 6.0, 10.0), _measured("q", 1, 2, -0.2, 1.0, 9.0), _measured("q", 2, 0, 0, 0, 0)]
    means = {"logprob": [-0.5, -0.1], "entropy": [-1.5, -0.5], "self_certainty": [2.5, 4.5]}
    for name, want in means.items():
        assert JUDGES.get(name).declaration.free
        judge = build_judge(name, {})
        got = judge.score(prompts, cands)
        assert [j.score for j in got[:2]] == pytest.approx(want)
        assert got[2].score is None and got[2].flag == "empty candidate"
        assert all(j.details == {"tokens": c.confidence_tokens, "source": "recorded"} for j, c in zip(got, cands[:2]))
        assert judge._engine is None, "recorded sums need no model"


@pytest.mark.slow
def test_smollm2_free_judges_agree_with_their_teacher_forced_fallback_and_logprob_orders_as_ppl(tmp_path):
    cfg = bon.load_config(n=4, judge={"name": "logprob"}, policy={"max_tokens": 12}, output_dir=str(tmp_path / "run"))
    run = bon.run(cfg, ["Name a colour.", "Say hi."])
    cands = run.candidates()
    bare = [dataclasses.replace(c, confidence_tokens=None, logprob_sum=None, entropy_sum=None, certainty_sum=None)
            for c in cands]  # fmt: skip
    from bon.core.judging import build_judge

    for name in ("self_certainty", "logprob", "entropy"):
        judge = build_judge(name, {})
        free, forced = judge.score(run.prompts(), cands), judge.score(run.prompts(), bare)
        assert {j.details["source"] for j in free} == {"recorded"}
        assert {j.details["source"] for j in forced} == {"teacher-forced"}
        assert [j.score for j in free] == pytest.approx([j.score for j in forced], abs=1e-4)
    ppl = build_judge("ppl", {}).score(run.prompts(), cands)
    logprob = build_judge("logprob", {}).score(run.prompts(), cands)
    by_score = lambda js: sorted(range(len(js)), key=lambda k: (js[k].score, k))  # noqa: E731
    assert by_score(ppl) == by_score(logprob)

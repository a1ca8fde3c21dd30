"""Preflight runs once, as one generator of findings: `bon run` raises the first refusal it yields, `bon check`
reports every one, in the same order."""

from __future__ import annotations

import pytest

from bon.core.judging import build_judge
from bon.core.prompts import load_prompts
from bon.pipeline import preflight
from tests.conftest import run_config


def test_run_raises_the_first_refusal_check_reports_and_check_reports_them_all(tmp_path, prompts_file, tiny_lm):
    """Two refusals at once (the policy's context, the judge's batch): `bon run` stops at the first, which is the
    first `bon check` shows; `bon check` shows the second too."""
    cfg = run_config(
        tmp_path,
        prompts_file,
        f"policy.model={tiny_lm}",
        "policy.context_length=40",
        "judge.name=selfj",
        f"judge.options.model={tiny_lm}",
        "judge.options.batch_size=100000000",
    )
    judge = build_judge("selfj", cfg.judge.options)
    found = list(preflight.findings(cfg, load_prompts(cfg.prompts), judge))
    refusals = [f for f in found if f.error is not None]
    assert [f.label for f in refusals] == ["policy", "judge"]
    report = preflight.check(cfg, judge)
    assert report.problems == [f.text for f in refusals]
    with pytest.raises(type(refusals[0].error)) as e:
        preflight.lengths(cfg, load_prompts(cfg.prompts), judge)
    assert f"policy: {e.value}" == report.problems[0]


def test_a_conversation_run_preflights_once_per_turn(tmp_path, monkeypatch):
    """A two-turn run checks its first turn with the conversations' bounds in one pass, and its second turn once
    (its prompts hold the kept answers, known only then): two passes, not three."""
    from bon.pipeline import runner
    from tests.conftest import FakePolicy, two_turn_source

    calls: list[int] = []
    real = runner.lengths
    monkeypatch.setattr(runner, "lengths", lambda *a, **k: (calls.append(len(a[1])), real(*a, **k))[1])
    cfg = run_config(tmp_path, two_turn_source(tmp_path))
    runner.run(cfg, policy=FakePolicy())
    assert calls == [2, 2]

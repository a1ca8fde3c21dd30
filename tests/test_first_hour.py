"""A new user's first hour (issue 22): what bon prints when a newcomer makes the usual mistakes."""

from __future__ import annotations

import pytest

from tests.test_cli import bon
from tests.test_hostile import BlindLength
from tests.test_reliability import contents, finished, one_clear_line  # noqa: F401 (fixture)


def test_select_refuses_a_judge_that_scored_nothing_unless_allowed(finished, monkeypatch):  # noqa: F811
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
    assert allowed.returncode == 0 and "5 prompts selected with blind, 0 declined, 5 of them without any score" in said


@pytest.mark.parametrize("decline", [None, "0.5"])
def test_select_with_a_judge_that_scored_everything_reports_no_fallbacks(finished, decline):  # noqa: F811
    args = ["--decline-below", decline] if decline else []
    out = bon("select", str(finished), "--judge", "length", *args)
    assert out.returncode == 0 and "without any score" not in out.stdout, out.stdout + out.stderr

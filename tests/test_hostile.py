"""Hostile inputs, second round: user text printed verbatim, values outside their domain refused."""

from __future__ import annotations

import shutil

import pytest

from bon.core.config import ConfigError
from tests.test_cli import bon
from tests.test_reliability import contents, finished, one_clear_line  # noqa: F401 (fixture)

MARKUP = ["[/]", "[bold]x[/bold]", "[link=file:///etc]y", "a[/b]"]


@pytest.mark.parametrize("text", MARKUP)
def test_a_missing_config_path_with_markup_is_printed_verbatim(tmp_path, text):
    path = tmp_path / f"c{text.replace('/', '_')}.yaml"
    one_clear_line(bon("run", str(path)), str(path))


@pytest.mark.parametrize("text", MARKUP)
def test_a_judge_name_with_markup_is_printed_verbatim(finished, text):  # noqa: F811
    one_clear_line(bon("select", str(finished), "--judge", text), repr(text))


def test_bon_check_prints_a_path_with_markup_verbatim(tmp_path):
    path = tmp_path / "odd[bold]dir[red]"
    path.mkdir()
    shutil.copy("configs/demo.yaml", path / "demo.yaml")
    out = bon("check", str(path / "demo.yaml"), "--set", "prompts.source=configs/prompts/demo.jsonl")
    assert out.returncode in (0, 1) and "Traceback" not in out.stderr, out.stderr[-800:]
    assert "odd[bold]dir[red]" in " ".join(out.stdout.split())


def test_an_ensemble_without_members_is_refused():
    from bon.core.judging import build_judge

    with pytest.raises(ConfigError, match="members: List should have at least 1 item"):
        build_judge("ensemble", {"members": []})


@pytest.mark.parametrize("key", ["nope", "rating_logprob", "DIGIT_MASS"])
def test_a_tie_break_on_a_number_no_judgement_records_is_refused(finished, key):  # noqa: F811
    before = contents(finished)
    out = bon("select", str(finished), "--judge", "length", "--tie-break", f"details:{key}")
    one_clear_line(out, f"tie_break 'details:{key}': judge 'length' records no '{key}'")
    assert contents(finished) == before

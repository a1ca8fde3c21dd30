"""Every command's output fits 80 columns: no line is longer, and no table cell wraps (a table has as many row
lines at 80 columns as at 400). Sentences (notes, `bon judges list`, `bon check`'s findings) wrap at the terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FakePolicy
from tests.helpers import bon

TABLE_LINE = ("│", "┃")  # a row or header line of a rich table; a wrapped cell adds one


def _fits(*args: str, cwd: Path | None = None) -> str:
    where = {"cwd": cwd} if cwd else {}
    narrow = bon(*args, env_extra={"COLUMNS": "80"}, **where)
    wide = bon(*args, env_extra={"COLUMNS": "400"}, **where)
    assert narrow.returncode == wide.returncode == 0, narrow.stdout + narrow.stderr
    lines = narrow.stdout.splitlines()
    assert [line for line in lines if len(line) > 80] == [], f"bon {' '.join(args)}"
    rows = [len([x for x in out.stdout.splitlines() if x.startswith(TABLE_LINE)]) for out in (narrow, wide)]
    assert rows[0] == rows[1], f"bon {' '.join(args)}: a table cell wraps at 80 columns:\n{narrow.stdout}"
    return narrow.stdout


def test_listing_commands_fit_80_columns():
    _fits("judges", "list")
    _fits("judges", "list", "--options", "selfj")


@pytest.mark.slow  # `bon run` reads SmolLM2's tokenizer (bon prepare) before it finds the run finished
def test_run_directory_commands_fit_80_columns(tmp_path, prompts_file, pool_dir, pair_file, monkeypatch):
    from bon.core.config import load_config
    from bon.pipeline.runner import run as run_pipeline

    monkeypatch.chdir(tmp_path)  # relative paths: a path longer than the line would fold whatever bon does
    here, run, pool, pairs = tmp_path, "run", pool_dir.name, pair_file.name
    sets = [f"output_dir={run}", f"prompts.source={prompts_file.name}", "n=3", "judge.name=length"]
    (here / "run.yaml").write_text(json.dumps(load_config(None, sets).model_dump(mode="json")))
    run_pipeline(load_config(here / "run.yaml"), policy=FakePolicy())
    assert "nothing to sample or judge" in _fits("run", "run.yaml", cwd=here)  # a finished run's table again
    for args in (
        ("select", run, "--judge", "length", "--decline-below", "3"),
        ("select", run, "--judge", "length", "--coverage", "0.6"),
        ("view", run),
        ("export", "preferences", run, "--out", "prefs", "--overwrite"),
        ("eval", "winrate", f"{pool}/a.json"),
        ("eval", "select-pool", pool, "--judge", "length"),
        ("eval", "pairwise", pairs, "--judge", "length"),
    ):
        _fits(*args, cwd=here)


@pytest.mark.slow  # SmolLM2's tokenizer (bon prepare)
def test_check_fits_80_columns():
    _fits("check", "configs/demo.yaml", "--set", "early_rejection.keep_fraction=0.5")


def test_show_prints_the_title_on_its_own_line_and_leaves_the_callers_table_as_given(capsys):
    from rich.table import Table

    from bon.cli.common import show

    table = Table(title="a title longer than the narrow table below it")
    table.add_column("k")
    table.add_row("v")
    show(table)
    assert capsys.readouterr().out.splitlines()[0] == "a title longer than the narrow table below it"
    assert table.title == "a title longer than the narrow table below it"

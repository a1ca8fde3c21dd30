"""One rule for every user-given name that becomes a path component or a line of a file."""

from __future__ import annotations

import pytest

from bon.core.config import ConfigError, load_config
from bon.core.names import check_name, name_problem
from tests.helpers import bon, contents, one_clear_line

BAD = ["..", ".", ".hidden", "-rf", "a/b", "a\\b", "a\nb", "a\rb", "a\tb", "", "x" * 101, "a b", "a\0b", "../../up"]
GOOD = ["selfj", "autoj64", "SmolLM2-135M-Instruct-bo8-selfj", "mt_bench", "a+b", "v1.0", "x" * 100, "名前"]


@pytest.mark.parametrize("name", BAD)
def test_names_that_leave_their_folder_hide_or_break_a_line_are_refused(name):
    assert name_problem(name)
    with pytest.raises(ConfigError, match=r"^--label .* is not a usable name: it becomes a file or folder name"):
        check_name(name, "--label")


@pytest.mark.parametrize("name", GOOD)
def test_ordinary_names_pass(name):
    assert name_problem(name) is None and check_name(name, "--name") == name


@pytest.mark.parametrize("name", ["..", "a/b", ".x"])
def test_a_compare_benchmark_or_judge_label_is_refused_where_the_config_says_it(tmp_path, name):
    from bon.eval.compare import CompareConfig

    path = tmp_path / "c.yaml"
    path.write_text(f"judges:\n  - {{name: length}}\nbenchmarks:\n  - {{name: '{name}', kind: pairwise, path: x}}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:4: benchmarks\.0\.name: .* is not a usable name"):
        load_config(path, model=CompareConfig)
    path.write_text(
        f"judges:\n  - {{name: length, label: '{name}'}}\nbenchmarks:\n  - {{name: b, kind: pairwise, path: x}}\n"
    )
    with pytest.raises(ConfigError, match=r"c\.yaml:2: judges\.0\.label: .* is not a usable name"):
        load_config(path, model=CompareConfig)


def test_a_run_generator_name_with_a_newline_or_a_slash_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('n: 2\nname: "m\\nx"\n')
    with pytest.raises(ConfigError, match=r"c\.yaml:2: name: 'm\\nx' is not a usable name"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"name: '\.\./x' is not a usable name"):
        load_config(None, ["name=../x"])


@pytest.mark.parametrize("label", ["../outside", "a\nb", ".."])
def test_bon_judge_label_is_refused_before_the_run_changes(finished, label):
    before = contents(finished)
    one_clear_line(
        bon("judge", str(finished), "--judge", "random", "--label", label), "--label", "is not a usable name"
    )
    assert contents(finished) == before


@pytest.mark.parametrize("name", ["m\nx", "-m", ".m"])
def test_bon_export_name_is_refused_without_writing(finished, tmp_path, name):
    out = tmp_path / "out"
    one_clear_line(bon("export", "alpaca-eval", str(finished), "--name", name, "--out", str(out)), "--name")
    assert not out.exists()

"""Reliability, third round: every user input checked where it enters, named in one line.

1. Models built from user input (options, nested options, CLI flags that become config) go through `problems()`.
2. A run file that exists but cannot be read is an error naming the file and the OS reason, never "absent".
3. An empty input is named as empty.
4. Third-party progress output stays off the failure path.
5. A row whose fields contradict each other is refused naming both fields.
"""

from __future__ import annotations

import json

import pytest

from bon.core.config import ConfigError, load_config
from tests.helpers import bon, contents, one_clear_line

# Every place a model is built from user input, reached from the command line with a bad value inside it.
NESTED = [
    (
        ["--judge", "pairwise", "--set", "comparator=scalar", "--set", "comparator_options={tie_threshold: -1}"],
        "comparator_options: comparator 'scalar' options: tie_threshold: Input should be greater than or equal to 0",
    ),
    (
        [
            "--judge",
            "pairwise",
            "--set",
            "comparator=scalar",
            "--set",
            "comparator_options={judge: cosine, options: {batch_size: 0}}",
        ],
        "comparator 'scalar' options: options: judge 'cosine' options: batch_size: Input should be greater than",
    ),
    (
        ["--judge", "pairwise", "--set", "comparator_options={bogus: 1}"],
        "comparator 'autoj' options: bogus: unknown key",
    ),
    (
        ["--judge", "ensemble", "--set", "members=[{name: cosine, options: {against: nothing}}]"],
        "members.0.options: judge 'cosine' options: against: Input should be 'reference' or 'instruction'",
    ),
    (
        ["--judge", "ensemble", "--set", "members=[{name: length, weight: heavy}]"],
        "members.0.weight: Input should be a valid number",
    ),
]


@pytest.mark.parametrize(("args", "says"), NESTED, ids=[f"nested{i}" for i in range(len(NESTED))])
def test_nested_options_from_the_command_line_are_one_line_naming_the_path(finished, args, says):
    before = contents(finished)
    one_clear_line(bon("judge", str(finished), *args), says)
    assert contents(finished) == before


def test_nested_options_in_a_config_are_refused_when_it_is_loaded_naming_the_key(tmp_path):
    sets = [
        "judge.name=pairwise",
        "judge.options.comparator=scalar",
        "judge.options.comparator_options.tie_threshold=-1",
    ]
    with pytest.raises(ConfigError, match=r"judge: options.comparator_options: comparator .scalar. options: tie_thr"):
        load_config(None, [f"output_dir={tmp_path / 'r'}", *sets])


def test_cli_flags_that_become_a_model_config_are_one_line(finished, tmp_path):
    rows = [{"instruction": f"Question number {i}?", "output": "x", "generator": "b", "dataset": "d"} for i in range(5)]
    reference = tmp_path / "ref.json"
    reference.write_text(json.dumps(rows))
    args = ["--annotator", "local:embedded:SmolLM2-135M-Instruct", "--reference-outputs", str(reference)]
    out = bon("eval", "alpaca-eval", str(finished), *args, "--backend", "bogus")
    one_clear_line(out, "option --backend: Input should be 'transformers', 'vllm' or 'openai' (got 'bogus')")


def test_a_validation_error_from_anywhere_in_a_command_is_one_line_not_a_traceback(finished, monkeypatch):
    from pydantic import BaseModel

    class Inner(BaseModel):
        size: int

    def broken(*args, **kwargs):
        Inner.model_validate({"size": "big"})

    monkeypatch.setattr("bon.pipeline.rejudge.select_run", broken)
    one_clear_line(
        bon("select", str(finished), "--judge", "length"), "invalid Inner: size: Input should be a valid integer"
    )


def _loop(path):
    path.unlink(missing_ok=True)
    path.symlink_to(path.name)  # a link to itself: ELOOP


def _dangling(path):
    path.unlink(missing_ok=True)
    path.symlink_to(path.parent / "gone.jsonl")


def _directory(path):
    path.unlink(missing_ok=True)
    path.mkdir()


@pytest.mark.parametrize("name", ["candidates.jsonl", "judgements.jsonl", "selections.jsonl", "manifest.json"])
@pytest.mark.parametrize(
    ("damage", "reason"),
    [(_loop, "Too many levels of symbolic links"), (_dangling, "No such file or directory"), (_directory, "Is a dir")],
)
@pytest.mark.parametrize("command", [["select", "--judge", "length"], ["judge", "--judge", "random"], ["view"]])
def test_a_run_file_there_but_unreadable_is_named_with_the_os_reason_never_read_as_absent(
    finished, name, damage, reason, command
):
    damage(finished / name)
    out = bon(command[0], str(finished), *command[1:])
    one_clear_line(out, f"{name}: cannot read ({reason}")
    assert "lack candidates" not in out.stderr and "bon run" not in out.stderr


def test_a_resumed_run_over_an_unreadable_file_stops_before_sampling(tmp_path, prompts_file):
    from bon.pipeline.runner import run
    from tests.conftest import FakePolicy, run_config

    cfg = run_config(tmp_path, prompts_file)
    run(cfg, policy=FakePolicy())
    _loop(cfg.output_dir / "candidates.jsonl")
    with pytest.raises(Exception, match="candidates.jsonl: cannot read \\(Too many levels of symbolic links\\)"):
        run(cfg, policy=FakePolicy())
    assert (cfg.output_dir / "candidates.jsonl").is_symlink()  # nothing resampled over it


def test_a_prompt_source_that_is_a_symlink_loop_is_not_called_missing(tmp_path):
    source = tmp_path / "p.jsonl"
    _loop(source)
    out = bon("run", "configs/demo.yaml", "--set", f"prompts.source={source}", "--set", f"output_dir={tmp_path / 'r'}")
    one_clear_line(out, "p.jsonl: cannot read (Too many levels of symbolic links)")


def _ref(tmp_path, rows):
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize("content", ["[]", "", "\n  \n"])
def test_empty_outputs_are_named_empty_in_every_command_that_reads_them(finished, tmp_path, content):
    (finished / "model_outputs.json").write_text(content)
    rows = [{"instruction": f"Question number {i}?", "output": "x", "generator": "b", "dataset": "d"} for i in range(5)]
    reference = _ref(tmp_path, rows)
    annotate = ["--annotator", "local:embedded:SmolLM2-135M-Instruct", "--reference-outputs", str(reference)]
    for args in (
        ["eval", "alpaca-eval", str(finished), *annotate],
        ["export", "alpaca-eval", str(finished), "--name", "x", "--reference-outputs", str(reference)],
    ):
        out = bon(*args)
        one_clear_line(out, "model_outputs.json: is empty")
        assert "no baseline output" not in out.stderr and "no preference" not in out.stderr


@pytest.mark.parametrize("content", ["[]", ""])
def test_empty_references_annotations_pools_and_prompt_sets_are_named_empty(finished, tmp_path, content):
    empty = tmp_path / "empty.json"
    empty.write_text(content)
    one_clear_line(bon("eval", "winrate", str(empty)), "empty.json: is empty")
    one_clear_line(bon("eval", "gain", str(finished), "--reference-outputs", str(empty)), "empty.json: is empty")
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "a.json").write_text(content)
    (pool / "b.json").write_text(content)
    one_clear_line(bon("eval", "select-pool", str(pool), "--judge", "length"), "a.json: is empty")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(content.replace("[]", ""))
    out = bon("run", "configs/demo.yaml", "--set", f"prompts.source={prompts}", "--set", f"output_dir={tmp_path / 'r'}")
    one_clear_line(out, "p.jsonl: is empty (no prompt rows)")
    one_clear_line(bon("eval", "pairwise", str(prompts), "--judge", "length"), "p.jsonl: is empty")


def test_a_failing_official_annotator_prints_its_one_line_and_no_progress_bars(finished, tmp_path):
    rows = [{"instruction": f"Question number {i}?", "output": "x", "generator": "b", "dataset": "d"} for i in range(5)]
    args = ["--annotator", "weighted_alpaca_eval_gpt4_turbo", "--base-url", "http://127.0.0.1:9/v1"]
    out = bon("eval", "alpaca-eval", str(finished), *args, "--reference-outputs", str(_ref(tmp_path, rows)))
    one_clear_line(out, "the API could not be reached", "nothing new was annotated or cached")
    assert out.stderr.strip().count("\n") == 0 and "%|" not in out.stderr + out.stdout  # tqdm's bars held back


def test_held_stderr_drops_third_party_output_unless_verbose(capsys):
    import sys

    from bon.core.io import VERBOSE, held_stderr

    with held_stderr():
        print("bar 100%", file=sys.stderr)
    assert capsys.readouterr().err == ""  # nothing a user can act on
    with pytest.raises(RuntimeError), held_stderr():
        print("bar 10%", file=sys.stderr)
        raise RuntimeError("the one line")
    assert capsys.readouterr().err == ""
    token = VERBOSE.set(True)
    try:
        with pytest.raises(RuntimeError), held_stderr():
            print("bar 10%", file=sys.stderr)
            raise RuntimeError("the one line")
    finally:
        VERBOSE.reset(token)
    assert capsys.readouterr().err == "bar 10%\n"  # bon --verbose shows it


@pytest.mark.slow
def test_alpaca_eval_annotating_is_quiet_on_success_and_verbose_shows_its_bars(finished, tmp_path):
    rows = [{"instruction": f"Question number {i}?", "output": "x", "generator": "b", "dataset": "d"} for i in range(5)]
    args = ["eval", "alpaca-eval", str(finished), "--annotator", "local:embedded:SmolLM2-135M-Instruct"]
    verbose = bon("--verbose", *args, "--reference-outputs", str(_ref(tmp_path, rows)))
    assert verbose.returncode == 0 and "Annotation chunk" in verbose.stderr, verbose.stderr[-2000:]
    quiet = bon(*args, "--reference-outputs", str(_ref(tmp_path, rows)))
    assert quiet.returncode == 0 and "%|" not in quiet.stderr and "Saving_path" not in quiet.stderr, quiet.stderr


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ({"instruction": "Hi?", "turns": ["Hi?", "And?"]}, "fields 'instruction' and 'turns' both give the prompt"),
        (
            {"instruction": "Hi?", "messages": [{"role": "user", "content": "Hi?"}]},
            "fields 'instruction' and 'messages' both give the prompt",
        ),
        (
            {"turns": ["Hi?"], "messages": [{"role": "user", "content": "Hi?"}]},
            "fields 'turns' and 'messages' both give the prompt",
        ),
        ({"id": "a", "question_id": 7, "instruction": "Hi?"}, "fields 'id' and 'question_id' give two ids ('a' and 7)"),
        (
            {"turns": ["Hi?"], "reference": ["A.", "B."]},
            "field 'reference': 2 reference answers for the 1 turns of field 'turns'",
        ),
    ],
)
def test_a_row_that_says_two_things_is_refused_naming_both_fields(tmp_path, row, says):
    source = tmp_path / "p.jsonl"
    source.write_text(json.dumps({"instruction": "Fine?"}) + "\n" + json.dumps(row) + "\n")
    out = bon("run", "configs/demo.yaml", "--set", f"prompts.source={source}", "--set", f"output_dir={tmp_path / 'r'}")
    one_clear_line(out, f"p.jsonl:2: {says}")
    assert not (tmp_path / "r").exists()


def test_rows_that_agree_with_themselves_still_load(tmp_path):
    from bon.core.config import PromptsConfig
    from bon.core.prompts import load_prompts

    source = tmp_path / "p.jsonl"
    rows = [
        {"id": 7, "question_id": 7, "instruction": "Hi?"},
        {"instruction": "Yo?", "turns": None},
        {"turns": ["A?", "B?"], "reference": ["a", None]},
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = load_prompts(PromptsConfig(source=str(source)))
    assert [p.id for p in prompts][0] == "7" and prompts[2].references == ("a", None)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_file_a_run_writes_has_the_umasks_permissions_and_the_lock_is_gone(tmp_path, prompts_file, mask):
    import os
    import stat

    from bon.eval.training import export_sft
    from bon.pipeline.rejudge import select_run
    from bon.pipeline.runner import run
    from tests.conftest import FakePolicy, run_config

    old = os.umask(mask)
    try:
        cfg = run_config(tmp_path, prompts_file)
        run(cfg, policy=FakePolicy())
        select_run(cfg.output_dir, "length", coverage=0.8)
        export_sft(cfg.output_dir, tmp_path / "sft")
    finally:
        os.umask(old)
    files = [p for p in [*cfg.output_dir.rglob("*"), *(tmp_path / "sft").rglob("*")] if p.is_file()]
    assert {p.name for p in files} >= {"manifest.json", "model_outputs.json", "selections.jsonl", "candidates.jsonl"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask, p
    for folder in (tmp_path / "sft", tmp_path / "sft" / "data"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask, folder
    assert not (cfg.output_dir / ".lock").exists()  # removed when the command that held it ended


def test_a_second_process_is_still_refused_while_the_lock_is_held(tmp_path):
    import subprocess
    import sys

    from bon.core.io import lock_dir

    with lock_dir(tmp_path / "d"):
        code = f"from bon.core.io import lock_dir\nwith lock_dir({str(tmp_path / 'd')!r}): pass"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode != 0 and "is in use by another bon process" in out.stderr
    with lock_dir(tmp_path / "d"):  # released and removed: the next one takes a fresh lock
        assert (tmp_path / "d" / ".lock").exists()
    assert not (tmp_path / "d" / ".lock").exists()


def test_the_resume_hint_repeats_the_command_as_it_was_typed(monkeypatch):
    from bon.cli.common import interrupted

    monkeypatch.setattr("sys.argv", [".venv/bin/bon", "run", "configs/demo.yaml", "--set", "n=4"])
    assert interrupted().endswith("rerun `.venv/bin/bon run configs/demo.yaml --set n=4` to resume")
    monkeypatch.setattr("sys.argv", ["/x/bon/__main__.py", "select", "runs/a b"])
    monkeypatch.setattr("sys.orig_argv", [".venv/bin/python", "-m", "bon", "select", "runs/a b"])
    assert interrupted().endswith("rerun `.venv/bin/python -m bon select 'runs/a b'` to resume")

"""Hostile inputs and faults: no silent corruption, no silent wrong answer, no traceback.

Each test names the class of defect it guards (issue 13); the command-line ones run `bon` (in this
process, `tests.helpers.bon`; as a process where a lock, a kill or a signal is the point) and check
exit code 2, one line naming the file, and no traceback.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from bon.core.config import ConfigError, load_config
from bon.core.io import DataFileError, DirectoryInUseError, append_records, lock_dir, read_records, write_json_atomic
from bon.core.records import Judgement
from bon.core.rundir import RunDir, RunDirError
from bon.pipeline.rejudge import judge_run, select_run
from bon.pipeline.runner import run
from bon.pipeline.selection import UnjudgedError
from tests.conftest import FakePolicy, finished_ae_run
from tests.conftest import run_config as config
from tests.helpers import bon, contents, one_clear_line

# 1. every appender repairs a torn tail first ------------------------------------------------------------


def test_append_cuts_a_torn_tail_before_writing(tmp_path):
    path = tmp_path / "j.jsonl"
    good = Judgement("q0", 0, "length", 1.0)
    append_records(path, [good])
    with open(path, "ab") as f:
        f.write(b'{"schema": 1, "kind": "judg')  # a write cut short by a crash
    append_records(path, [Judgement("q0", 1, "length", 2.0)])
    assert [j.candidate_index for j in read_records(path, Judgement)] == [0, 1]
    assert path.read_bytes().count(b"\n") == 2


def test_bon_judge_after_a_torn_write_keeps_the_file_valid(finished, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(finished, twin)
    judge_run(twin, "random")  # the uninterrupted reference
    limit_kb = (finished / "judgements.jsonl").stat().st_size // 1024 + 1  # the next appends cross it mid-line
    cut = subprocess.run(
        ["bash", "-c", f"ulimit -f {limit_kb}; exec {sys.executable} -m bon judge {finished} --judge random"],
        capture_output=True,
        text=True,
    )
    one_clear_line(cut, "judgements.jsonl", "File too large", "rerun")
    assert not (finished / "judgements.jsonl").read_bytes().endswith(b"\n")  # it really tore a line
    assert bon("judge", str(finished), "--judge", "random").returncode == 0
    assert bon("select", str(finished), "--judge", "random").returncode == 0
    assert (finished / "judgements.jsonl").read_bytes() == (twin / "judgements.jsonl").read_bytes()


# 2. a resume refuses prompts that changed under the same id ----------------------------------------------


def test_resume_refuses_an_edited_instruction(tmp_path, prompts_file):
    cfg = config(tmp_path, prompts_file)
    run(cfg, policy=FakePolicy())
    prompts_file.write_text(prompts_file.read_text().replace("Question number 1?", "Write a limerick about tax law."))
    with pytest.raises(RunDirError, match=r"1 prompts changed since this run sampled them .*'q1'"):
        run(cfg, policy=FakePolicy())
    judge_run(cfg.output_dir, "random")  # readers use the prompts the run keeps, not the edited file
    select_run(cfg.output_dir, "length")
    kept = cfg.output_dir / "prompts.jsonl"  # and an edit there is refused by the fingerprints
    kept.write_text(kept.read_text().replace("Question number 1?", "Write a limerick about tax law."))
    with pytest.raises(RunDirError, match="'q1'"):
        judge_run(cfg.output_dir, "random")
    with pytest.raises(RunDirError, match="'q1'"):
        select_run(cfg.output_dir, "length")


def test_resume_accepts_new_prompts(tmp_path, prompts_file):
    cfg = config(tmp_path, prompts_file)
    run(cfg, policy=FakePolicy())
    with open(prompts_file, "a") as f:
        f.write('{"id": "q9", "instruction": "A new one?"}\n')
    assert run(cfg, policy=FakePolicy()).generated == 3


# 3. one process per run directory -------------------------------------------------------------------------


def test_a_second_process_fails_at_once_naming_the_holder(tmp_path, prompts_file):
    cfg = config(tmp_path, prompts_file)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from bon.core.io import lock_dir\n"
            f"with lock_dir({str(cfg.output_dir)!r}):\n print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DirectoryInUseError, match=f"pid {holder.pid}"):
            run(cfg, policy=FakePolicy())
        assert not (cfg.output_dir / "candidates.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel drops the lock with the process
        holder.wait()
    assert run(cfg, policy=FakePolicy()).generated == 15


def test_the_lock_is_reentrant_within_one_process(tmp_path):
    with lock_dir(tmp_path / "d"):
        with lock_dir(tmp_path / "d"):  # e.g. a command calling another in the same process
            pass
        child = subprocess.run(
            [sys.executable, "-c", f"from bon.core.io import lock_dir\nwith lock_dir({str(tmp_path / 'd')!r}): pass"],
            capture_output=True,
            text=True,
        )
        assert child.returncode != 0 and f"pid {os.getpid()}" in child.stderr
    with lock_dir(tmp_path / "d"):  # released on exit
        pass


# 4. numbers that are not numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, needle",
    [
        ("n=true", "n: expected a number, found True"),
        ("selection.decline_below=.nan", "selection.decline_below: Input should be a finite number"),
        ("selection.decline_below=nan", "selection.decline_below: Input should be a finite number"),
        ("policy.temperature=.inf", "policy.temperature: Input should be a finite number"),
        ("judge.options.seed=true", r"judge: options\.seed: expected a number, found True"),
    ],
)
def test_config_refuses_non_numbers(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, ["judge.name=random", override])


def test_non_finite_scores_are_refused_at_load(tmp_path):
    from bon.eval.benchmarks import load_scores

    for bad in ("NaN", "Infinity", "-Infinity"):
        path = tmp_path / "s.jsonl"
        path.write_text(
            '{"instruction": "q", "output": "a", "score": 3}\n'
            f'{{"instruction": "q", "output": "b", "score": {bad}}}\n'
        )
        with pytest.raises(DataFileError, match=rf"s.jsonl:2: not valid JSON \({bad} is not a number JSON allows\)"):
            load_scores(path)
    path.write_text('{"instruction": "q", "output": "a", "score": true}\n')
    with pytest.raises(DataFileError, match="s.jsonl:1: field 'score': expected"):
        load_scores(path)


def test_boolean_preference_is_refused(tmp_path):
    from bon.eval.annotations import read_annotations

    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"instruction": "q", "output_1": "a", "output_2": "b", "preference": True}]))
    with pytest.raises(DataFileError, match="row 0: field 'preference': expected a number, found True"):
        read_annotations(path)


def test_nan_never_reaches_a_file(tmp_path):
    assert Judgement("q", 0, "rm", float("nan")).score is None
    assert "non-finite score nan" in Judgement("q", 0, "rm", float("nan")).flag
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "x.json", {"v": float("inf")})
    assert not (tmp_path / "x.json").exists() and not list(tmp_path.iterdir())


def test_select_refuses_nan_and_unknown_tie_break_before_writing(finished):
    before = contents(finished)
    with pytest.raises(ConfigError, match="option --decline-below: Input should be a finite number"):
        select_run(finished, "length", decline_below=float("nan"))
    with pytest.raises(ConfigError, match="option --tie-break: String should match pattern"):
        select_run(finished, "length", tie_break="highest")
    assert contents(finished) == before


# 5. options outside their domain; schemas this bon does not read -----------------------------------------


def write_pool(folder, rows_per_file):
    folder.mkdir()
    for name, instructions in rows_per_file.items():
        rows = [
            {
                "instruction": q,
                "output_1": "base",
                "generator_1": "b",
                "output_2": f"{name} on {q}",
                "generator_2": name,
                "preference": 2.0 if name == "good" else 1.0,
            }
            for q in instructions
        ]
        (folder / f"{name}.json").write_text(json.dumps(rows))


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--limit", "0"], "option --limit: Input should be greater than or equal to 1 (got 0)"),
        (["--limit", "-3"], "option --limit: Input should be greater than or equal to 1 (got -3)"),
        (["--reference", "bogus"], "option --reference: Input should be 'baseline' or 'none' (got 'bogus')"),
    ],
)
def test_select_pool_options_are_checked(tmp_path, args, needle):
    write_pool(tmp_path / "pool", {"good": ["q1", "q2"], "bad": ["q1", "q2"]})
    one_clear_line(bon("eval", "select-pool", str(tmp_path / "pool"), "--judge", "length", *args), needle)


def test_commands_refuse_an_unknown_schema_before_writing(finished):
    manifest = json.loads((finished / "manifest.json").read_text())
    (finished / "manifest.json").write_text(json.dumps({**manifest, "schema": 99}))
    before = contents(finished)
    for args in (
        ["select", str(finished), "--judge", "length"],
        ["judge", str(finished), "--judge", "random"],
        ["export", "alpaca-eval", str(finished), "--name", "m"],
    ):
        one_clear_line(bon(*args), "manifest.json: field 'schema': this bon reads version 1, found 99")
    assert contents(finished) == before


# 6. export names and outputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../../escaped", "", "a/b", ".."])
def test_export_name_is_one_path_component(finished, tmp_path, name):
    out = tmp_path / "sub" / "out"
    one_clear_line(bon("export", "alpaca-eval", str(finished), "--name", name, "--out", str(out)), "--name")
    assert not (tmp_path / "escaped").exists() and not out.exists()


@pytest.mark.parametrize("value", [None, 3, "", "  "])
def test_export_refuses_outputs_that_are_not_text(finished, tmp_path, value):
    rows = json.loads((finished / "model_outputs.json").read_text())
    rows[1]["output"] = value
    (finished / "model_outputs.json").write_text(json.dumps(rows))
    one_clear_line(
        bon("export", "alpaca-eval", str(finished), "--name", "m", "--out", str(tmp_path / "o")),
        "model_outputs.json: 1 rows lack a non-empty string: row 1 'output'",
        "Question number 1?",
    )


# 7. a judge that can judge nothing says so ---------------------------------------------------------------


def test_a_judge_that_scores_no_candidate_fails_loudly(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "instruction": f"Question {i}?"}) + "\n" for i in range(3)))
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", f"prompts.source={prompts}", "n=2", "judge.name=cosine"])
    with pytest.raises(
        UnjudgedError,
        match=r"judge 'cosine' could score none of the candidates of 3 of 3 prompts \(e.g. 'q0': the prompt has no reference\)",
    ):
        run(cfg, policy=FakePolicy())
    assert (cfg.output_dir / "model_outputs.json").exists()  # everything is written first
    allowed = load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            f"prompts.source={prompts}",
            "n=2",
            "judge.name=cosine",
            "allow_unjudged=true",
        ],
    )
    result = run(allowed, policy=FakePolicy())  # accepted: the fallback picks, each saying why
    assert [s.reason for s in result.selections] == ["no candidate could be judged; kept the first"] * 3
    one_clear_line(
        bon("judge", str(cfg.output_dir), "--judge", "cosine", "--label", "cos2"),
        "could score none",
        "--allow-unjudged",
    )
    assert bon("judge", str(cfg.output_dir), "--judge", "cosine", "--label", "cos2", "--allow-unjudged").returncode == 0


# 8. pools whose files hold different instructions ---------------------------------------------------------


def test_uneven_pool_uses_the_common_instructions_and_says_what_was_dropped(tmp_path):
    from bon.eval.pool import load_pool

    write_pool(tmp_path / "pool", {"good": ["q1", "q2", "q3"], "bad": ["q1", "q3"], "mid": ["q1", "q2", "q3"]})
    pool = load_pool(tmp_path / "pool")
    assert pool.instructions == ["q1", "q3"] and pool.dropped == {"bad": 1}
    assert pool.note() == "1 instruction slots not in every file were dropped (bad lacks 1)"
    out = bon("eval", "select-pool", str(tmp_path / "pool"), "--judge", "length")
    assert out.returncode == 0 and "bad lacks 1" in out.stderr


# tracebacks where a message belongs ------------------------------------------------------------------------


def test_unreadable_inputs_are_one_line(tmp_path, finished):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"instruction": "fine"}\n{"instruction": "caf\xe9"}\n')
    one_clear_line(
        bon("run", "configs/demo.yaml", "--set", f"prompts.source={bad}", "--set", f"output_dir={tmp_path / 'r1'}"),
        "latin1.jsonl:2: not UTF-8 text (byte 0xe9)",
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"n: 2\nname: \xff\n")
    one_clear_line(bon("run", str(cfg)), "c.yaml:2: not UTF-8 text (byte 0xff)")
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    one_clear_line(
        bon("run", "configs/demo.yaml", "--set", f"prompts.source={folder}"), "dir.jsonl: cannot read (Is a directory)"
    )
    parquet = tmp_path / "p.parquet"
    parquet.write_bytes(b"PAR1 not really")
    one_clear_line(
        bon("run", "configs/demo.yaml", "--set", f"prompts.source={parquet}"), "p.parquet: not a readable parquet file"
    )
    pool = tmp_path / "pool"
    write_pool(pool, {"good": ["q1"], "bad": ["q1"]})
    (pool / "bad.json").write_bytes(b'[{"instruction": "\xfe"}]')
    one_clear_line(bon("eval", "select-pool", str(pool), "--judge", "length"), "bad.json:1: not UTF-8 text")
    for content, needle in (("[]", "is empty"), ("[1, 2]", "row 0: expected a JSON object")):
        (pool / "bad.json").write_text(content)
        one_clear_line(bon("eval", "select-pool", str(pool), "--judge", "length"), f"bad.json: {needle}")


def test_output_dir_that_is_a_file_is_one_line(tmp_path, prompts_file):
    blocker = tmp_path / "run"
    blocker.write_text("I am a file")
    one_clear_line(
        bon("run", "configs/demo.yaml", "--set", f"prompts.source={prompts_file}", "--set", f"output_dir={blocker}"),
        str(blocker),
        "File exists",
    )


@pytest.mark.parametrize(
    "manifest, needle",
    [
        ('{"schema": 1, "config": {"n": 3', "manifest.json:1: not valid JSON"),
        ('{"schema": 1}', "manifest.json: field 'config'"),
        ('{"schema": 1, "config": {"n": "many"}}', "manifest.json: field 'config.n'"),
    ],
)
def test_broken_manifest_is_one_line_in_every_reader(finished, tmp_path, manifest, needle):
    (finished / "manifest.json").write_text(manifest)
    for args in (
        ["judge", str(finished), "--judge", "random"],
        ["select", str(finished), "--judge", "length"],
        ["export", "alpaca-eval", str(finished), "--name", "m", "--out", str(tmp_path / "o")],
        ["eval", "gain", str(finished), "--annotator", "precomputed:none.json"],
    ):
        one_clear_line(bon(*args), needle)


def test_eval_inputs_of_the_wrong_shape_are_one_line(tmp_path):
    from tests.test_eval_runs import QUESTIONS, write_annotations

    cfg, reference = finished_ae_run(tmp_path, QUESTIONS)
    ann = tmp_path / "ann.json"
    write_annotations(cfg, ann)
    run_dir = str(cfg.output_dir)
    lc = tmp_path / "lc.csv"
    lc.write_text("a,b\n1,2\n")
    one_clear_line(
        bon(
            "eval",
            "alpaca-eval",
            run_dir,
            "--annotator",
            f"precomputed:{ann}",
            "--reference-outputs",
            str(reference),
            "--lc-data",
            str(lc),
        ),
        "lc.csv:1: not AlpacaEval's df_gamed.csv: no column 'model', 'index', 'instruction_difficulty'",
    )
    rows = json.loads(ann.read_text())
    empty = tmp_path / "none.json"
    empty.write_text(json.dumps([{**r, "preference": None} for r in rows]))
    one_clear_line(
        bon(
            "eval", "alpaca-eval", run_dir, "--annotator", f"precomputed:{empty}", "--reference-outputs", str(reference)
        ),
        "none.json: holds no preference (all null)",
    )
    one_clear_line(
        bon(
            "eval",
            "gain",
            run_dir,
            "--annotator",
            f"precomputed:{ann}",
            "--reference-outputs",
            str(reference),
            "--judge",
            "nobody",
        ),
        "'nobody' is neither a judge of this run nor a registered judge; judges here: length",
    )


def test_unreachable_official_annotator_is_one_line_and_caches_nothing(tmp_path):
    from tests.test_eval_runs import QUESTIONS

    cfg, reference = finished_ae_run(tmp_path, QUESTIONS[:2])
    out = bon(
        "eval",
        "alpaca-eval",
        str(cfg.output_dir),
        "--version",
        "1",
        "--reference-outputs",
        str(reference),
        env_extra={
            "OPENAI_API_KEY": "sk-test-not-a-key",
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
            "OPENAI_MAX_RETRIES": "0",
        },
        timeout=300,
    )
    one_clear_line(out, "the API could not be reached or refused the request", "nothing new was annotated or cached")
    assert "WARNING" not in out.stderr and "ERROR:" not in out.stderr, out.stderr  # alpaca-eval's log held back
    cache = cfg.output_dir / "alpaca_eval" / "v1" / "annotations_cache.json"
    assert not cache.exists() or all(r.get("preference") is None for r in json.loads(cache.read_text()))


def test_a_failed_first_start_does_not_block_the_corrected_retry(tmp_path, prompts_file):
    from bon.core.prompts import load_prompts

    first = config(tmp_path, prompts_file, "policy.model=/no/such/model")
    RunDir.open(first, {}, load_prompts(first.prompts))  # the manifest is written, then loading the weights failed
    fixed = config(tmp_path, prompts_file)
    assert run(fixed, policy=FakePolicy()).generated == 15
    assert (
        json.loads((fixed.output_dir / "manifest.json").read_text())["config"]["policy"]["model"] == fixed.policy.model
    )
    with pytest.raises(RunDirError, match="different config"):  # once something was made, a changed config is refused
        run(first, policy=FakePolicy())


def test_disk_full_then_resume_gives_identical_files(tmp_path, prompts_file):
    """ENOSPC mid-append (simulated at the one append path): one line, and the resumed files equal a clean run's."""
    import bon.core.io as io

    clean = config(tmp_path / "clean", prompts_file)
    run(clean, policy=FakePolicy())
    cfg = config(tmp_path, prompts_file)
    real_write, calls = io.append_records, {"n": 0}

    def full_disk(path, records):
        calls["n"] += 1
        if calls["n"] == 4:
            payload = "".join(json.dumps(io.to_json(r)) + "\n" for r in records).encode()
            with open(path, "ab") as f:
                f.write(payload[: len(payload) // 2])  # what made it to disk before ENOSPC
            raise OSError(28, "No space left on device", str(path))
        real_write(path, records)

    import bon.core.rundir

    bon.core.rundir.append_records = full_disk
    try:
        with pytest.raises(OSError, match="No space left"):
            run(cfg, policy=FakePolicy())
    finally:
        bon.core.rundir.append_records = real_write
    run(cfg, policy=FakePolicy())
    for name in ("candidates.jsonl", "judgements.jsonl", "selections.jsonl", "model_outputs.json"):
        assert (cfg.output_dir / name).read_bytes() == (clean.output_dir / name).read_bytes(), name

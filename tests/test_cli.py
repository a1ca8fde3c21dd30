"""The `bon` command line: fast paths, clear errors, and the demo end to end on SmolLM2."""

import json
import subprocess
import sys
import time

import pytest

from tests.helpers import bon, bon_process


def test_help_and_judges_list_are_fast_and_import_no_torch():
    start = time.perf_counter()
    out = bon_process("--help")  # a new process: its start-up is what is measured
    assert out.returncode == 0 and "run" in out.stdout
    listing = bon_process("judges", "list")
    assert listing.returncode == 0 and "selfj" in listing.stdout and "oceanpty/Self-J" in listing.stdout
    assert time.perf_counter() - start < 20
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, bon.cli, bon.pipeline.runner, judges.selfj; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip() == "False"


def test_judges_list_reads_at_80_columns_and_shows_one_judges_options():
    from bon.judges import JUDGES

    listing = bon("judges", "list", env_extra={"COLUMNS": "80"})
    starts = [line.split()[0] for line in listing.stdout.splitlines() if line and not line.startswith(" ")]
    assert all(name in starts for name in JUDGES), starts  # every judge opens a line of its own, unbroken
    assert "bon judges list --options NAME" in listing.stdout
    options = bon("judges", "list", "--options", "selfj", env_extra={"COLUMNS": "120"})
    said = " ".join(options.stdout.split())
    assert options.returncode == 0
    for key in ("prompt_format", "'raw' | 'chat'", "min_digit_mass", "reference", "batch_size"):
        assert key in said, key
    wrong = bon("judges", "list", "--options", "selfjj")
    assert wrong.returncode == 2 and "Did you mean 'selfj'" in wrong.stderr


def test_bad_config_is_one_clear_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("n: 2\npolicy:\n  max_tokens: -1\n")
    out = bon("run", str(cfg))
    assert out.returncode == 2
    assert "bad.yaml:3: policy.max_tokens: Input should be greater than or equal to 1 (got -1)" in " ".join(
        out.stderr.split()
    )
    assert "Traceback" not in out.stderr


def test_bad_prompt_file_names_line(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"instruction": "fine"}\n{"instr": "typo"}\n')
    out = bon("run", "configs/demo.yaml", "--set", f"prompts.source={prompts}", "--set", f"output_dir={tmp_path / 'r'}")
    assert out.returncode == 2 and "p.jsonl:2: field 'instruction'" in " ".join(out.stderr.split())


@pytest.mark.slow
def test_demo_config_end_to_end(tmp_path):
    run_dir = tmp_path / "demo"
    out = bon(
        "run",
        "configs/demo.yaml",
        "--set",
        "n=2",
        "--set",
        "prompts.limit=2",
        "--set",
        "policy.max_tokens=24",
        "--set",
        f"output_dir={run_dir}",
    )
    assert out.returncode == 0, out.stderr
    assert "NOT the trained Self-J weights" in " ".join(out.stdout.split())
    assert str(run_dir) in out.stdout.replace("\n", "")
    for name in ("manifest.json", "candidates.jsonl", "judgements.jsonl", "selections.jsonl", "model_outputs.json"):
        assert (run_dir / name).is_file(), name
    outputs = json.loads((run_dir / "model_outputs.json").read_text())
    assert len(outputs) == 2 and all(
        o["output"] and o["generator"] == "SmolLM2-135M-Instruct-bo2-selfj" for o in outputs
    )
    judgements = [json.loads(line) for line in (run_dir / "judgements.jsonl").read_text().splitlines()]
    assert len(judgements) == 4
    again = bon("run", "configs/demo.yaml", "--set", "n=2", "--set", "prompts.limit=2", "--set", "policy.max_tokens=24",
                "--set", f"output_dir={run_dir}", env_extra={"COLUMNS": "80"})  # fmt: skip
    lines = again.stdout.splitlines()
    assert again.returncode == 0 and all(len(line) <= 80 for line in lines)
    assert "complete, nothing to sample or judge" in " ".join(again.stdout.split())
    assert "nothing left to sample or judge" in again.stdout and "scores: expected rating 0-9" in again.stdout
    assert any(all(h in line for h in ("prompt", "best score", "pick", "declined")) for line in lines)
    for j in judgements:  # the written score is the expectation over the written digit distribution
        probs = j["details"]["digit_probs"]
        assert (
            j["score"] == pytest.approx(sum(d * (p or 0.0) for d, p in enumerate(probs)))
            and j["details"]["digit_mass"] > 0
        )


def _headline(shared_data, *extra):
    return (
        "check",
        "configs/alpaca_eval_v2_bo32.yaml",
        "--set",
        f"prompts.source={shared_data / 'alpaca_eval' / 'reference_outputs_v2.json'}",
        *extra,
    )


def test_check_headline_offline_names_exactly_the_missing_weights(shared_data):
    out = bon(*_headline(shared_data), env_extra={"HF_HUB_OFFLINE": "1"})
    text = " ".join(out.stdout.split())
    assert out.returncode == 1, out.stderr
    assert "missing: policy weights 'WizardLMTeam/WizardLM-13B-V1.2'" in text
    assert "missing: judge weights 'oceanpty/Self-J'" in text
    assert "805 from" in text and "problem:" not in text and "Traceback" not in out.stderr


def test_check_headline_checks_tokens_on_llama2_vocabulary_stand_ins_and_never_says_ok(shared_data):
    spm = shared_data / "tokenizers" / "ggml-vocab-llama-spm.gguf"
    out = bon(*_headline(shared_data, "--set", f"policy.model={spm}", "--set", f"judge.options.model={spm}"))
    text = " ".join(out.stdout.split())
    assert out.returncode == 1, out.stdout + out.stderr  # `bon run` refuses a vocabulary-only file: one verdict
    assert "ok: nothing missing" not in text and "tokens ok: checked on stand-ins" in text
    assert "stand-in: policy weights" in text and "stand-in: judge weights" in text
    assert "[29900, 29896, 29906, 29941, 29946, 29945, 29953, 29955, 29947, 29929]" in text  # the Self-J repo's ids
    assert "vicuna_v1.1" in text and "of 4096" in text and "805 prompts x n=32 = 25760" in text
    no_template = bon(
        *_headline(
            shared_data,
            "--set",
            f"policy.model={spm}",
            "--set",
            f"judge.options.model={spm}",
            "--set",
            "policy.prompt_format=chat",
        )
    )
    assert no_template.returncode == 1
    assert "has no chat template; set policy.prompt_format" in " ".join(no_template.stdout.split())


def test_run_refuses_a_prompt_longer_than_the_context_before_any_work(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "ok", "instruction": "Hi"}\n{"id": "huge", "instruction": "' + "word " * 9000 + '"}\n')
    out = bon("run", "configs/demo.yaml", "--set", f"prompts.source={prompts}", "--set", f"output_dir={tmp_path / 'r'}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "1 policy prompts are longer than the 8128 tokens that fit (context 8192): huge (" in " ".join(
        out.stderr.split()
    )
    assert not (tmp_path / "r").exists()  # nothing written: the corrected retry starts clean


def test_prepare_reports_where_the_model_loads_from(tmp_path):
    local = tmp_path / "model"
    local.mkdir()  # a local directory: loaded as it is, nothing to convert, no weights read
    out = bon("prepare", str(local))
    assert out.returncode == 0 and f"{local}: ready, loads from {local}" in " ".join(out.stdout.split()), out.stderr
    missing = bon("prepare", str(tmp_path / "absent.gguf"))
    assert missing.returncode == 2 and "absent.gguf: GGUF file not found" in missing.stderr
    assert "Traceback" not in missing.stderr

"""Submission export: AlpacaEval's order and instruction set, and a config a maintainer can rerun."""

import json

import pytest
import yaml

from bon.core.config import load_config
from bon.core.outputs import OutputError
from bon.eval.export import ExportError, export_alpaca_eval
from bon.pipeline.runner import run
from tests.conftest import FakePolicy


@pytest.fixture
def ae_run(tmp_path, shared_data):
    ref = shared_data / "alpaca_eval" / "reference_outputs_v2.json"
    cfg = load_config(
        None, [f"output_dir={tmp_path / 'run'}", f"prompts.source={ref}", "n=2", "judge.name=length", "batch_size=200"]
    )
    run(cfg, policy=FakePolicy())
    return cfg.output_dir, ref


def test_export_writes_outputs_and_config(ae_run, tmp_path):
    run_dir, ref = ae_run
    outputs, config = export_alpaca_eval(run_dir, "bon-smol-bo2", tmp_path / "sub", ref, pretty_name="bon SmolLM2 bo2")
    assert outputs == tmp_path / "sub" / "results" / "bon-smol-bo2" / "model_outputs.json"
    rows = json.loads(outputs.read_text())
    reference = json.loads(ref.read_text())
    assert len(rows) == 805 and [r["instruction"] for r in rows] == [r["instruction"] for r in reference]
    assert {r["generator"] for r in rows} == {"bon-smol-bo2"} and all(r["output"] for r in rows)
    entry = yaml.safe_load(config.read_text())["bon-smol-bo2"]
    assert entry["fn_completions"] is None and entry["pretty_name"] == "bon SmolLM2 bo2"
    assert entry["best_of_n"]["n"] == 2 and entry["best_of_n"]["judge"] == "length"
    assert entry["reproduction"]["config"]["seed"] == 0 and "pydantic" in entry["reproduction"]["packages"]


def test_missing_and_extra_instructions_are_listed(ae_run, tmp_path):
    run_dir, ref = ae_run
    rows = json.loads((run_dir / "model_outputs.json").read_text())
    rows = rows[:-2] + [{**rows[0], "instruction": "Not an AlpacaEval question?"}]
    (run_dir / "model_outputs.json").write_text(json.dumps(rows))
    with pytest.raises(
        ExportError,
        match=r"2 AlpacaEval instructions have no output: .*; 1 outputs are not AlpacaEval instructions: 'Not an AlpacaEval question\?'",
    ):
        export_alpaca_eval(run_dir, "x", tmp_path, ref)
    assert not (tmp_path / "results").exists()


def test_a_second_export_is_refused_unless_overwrite_and_says_its_selection(ae_run, tmp_path):
    run_dir, ref = ae_run
    outputs, config = export_alpaca_eval(run_dir, "bo2", tmp_path, ref)
    before = outputs.read_bytes(), config.read_bytes()
    with pytest.raises(
        OutputError, match=r"configs.yaml exists \(an earlier AlpacaEval export of 'bo2'\); give --overwrite"
    ):
        export_alpaca_eval(run_dir, "bo2", tmp_path, ref)
    assert (outputs.read_bytes(), config.read_bytes()) == before
    from bon.pipeline.rejudge import select_run

    select_run(run_dir, "length", coverage=0.9)
    export_alpaca_eval(run_dir, "bo2", tmp_path, ref, overwrite=True)
    entry = yaml.safe_load(config.read_text())["bo2"]["best_of_n"]
    assert entry["coverage"] == 0.9 and entry["threshold"] is not None and entry["length_penalty"] == 0.0

import json

import pytest

from bon.core.config import PromptsConfig
from bon.core.io import DataFileError
from bon.core.prompts import PromptSourceError, load_prompts, prompt_id


def test_jsonl_with_ids_and_references(prompts_file):
    prompts = load_prompts(PromptsConfig(source=str(prompts_file)))
    assert [p.id for p in prompts] == [f"q{i}" for i in range(5)]
    assert prompts[2].reference == "Answer 2." and prompts[2].dataset == "prompts"
    assert len(load_prompts(PromptsConfig(source=str(prompts_file), limit=2))) == 2
    assert load_prompts(PromptsConfig(source=str(prompts_file), reference_field=None))[0].reference is None


def test_alpaca_eval_shape_and_derived_ids(tmp_path):
    rows = [
        {"instruction": "Name a fruit.", "output": "Apple.", "generator": "x", "dataset": "helpful_base"},
        {"instruction": "Name a colour.", "output": "Red.", "generator": "x", "dataset": "oasst"},
    ]
    path = tmp_path / "model_outputs.json"
    path.write_text(json.dumps(rows))
    prompts = load_prompts(PromptsConfig(source=str(path), reference_field="output"))
    assert (
        prompts[0].id == prompt_id("Name a fruit.")
        and prompts[0].id == load_prompts(PromptsConfig(source=str(path)))[0].id
    )
    assert prompts[1].dataset == "oasst" and prompts[1].reference == "Red."


def test_parquet(tmp_path):
    path = tmp_path / "p.parquet"
    pa = pytest.importorskip("pyarrow")  # the lean install has it; .venv-vllm need not
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"instruction": "A?"}, {"instruction": "B?"}]), path)
    assert [p.instruction for p in load_prompts(PromptsConfig(source=str(path)))] == ["A?", "B?"]


def test_duplicate_ids_name_both_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "Same?"}\n{"instruction": "Other?"}\n\n{"instruction": "Same?"}\n')
    with pytest.raises(DataFileError, match=r"d\.jsonl:4: duplicate prompt id 'p[0-9a-f]+', first seen at line 1"):
        load_prompts(PromptsConfig(source=str(path)))


def test_bad_rows_name_line_and_field(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"instruction": "ok"}\n{"prompt": "no instruction"}\n')
    with pytest.raises(DataFileError, match=r"b\.jsonl:2: field 'instruction': expected a non-empty string"):
        load_prompts(PromptsConfig(source=str(path)))
    path.write_text('{"instruction": "ok"}\n{"instruction": \n')
    with pytest.raises(DataFileError, match=r"b\.jsonl:2: not valid JSON"):
        load_prompts(PromptsConfig(source=str(path)))
    path = tmp_path / "b.json"
    path.write_text(json.dumps([{"instruction": "ok"}, {"instruction": 3}]))
    with pytest.raises(DataFileError, match=r"b\.json: row 1: field 'instruction'"):
        load_prompts(PromptsConfig(source=str(path)))


def test_missing_file_and_offline_hub(tmp_path, monkeypatch):
    import datasets

    with pytest.raises(PromptSourceError, match="prompt file not found"):
        load_prompts(PromptsConfig(source=str(tmp_path / "nope.jsonl")))

    def offline(*args, **kwargs):  # what datasets raises without a network, whether or not this machine has one
        raise ConnectionError("Couldn't reach 'tatsu-lab/alpaca_eval' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(PromptSourceError) as e:
        load_prompts(PromptsConfig(source="tatsu-lab/alpaca_eval"))
    msg = str(e.value)
    assert "tatsu-lab/alpaca_eval" in msg and "reference_outputs_v2.json" in msg and "\n" not in msg


def test_shared_alpaca_eval_set(shared_data):
    prompts = load_prompts(
        PromptsConfig(source=str(shared_data / "alpaca_eval" / "reference_outputs_v2.json"), reference_field="output")
    )
    assert len(prompts) == 805 and len({p.id for p in prompts}) == 805
    assert all(p.reference for p in prompts)

import json

import pytest

from bon.core.io import DataFileError, append_records, drop_torn_tail, read_records, write_json_atomic
from bon.core.records import SCHEMA, Candidate, Judgement, Prompt, RecordError, Selection, from_json, to_json

RECORDS = [
    Prompt("p1", "Say hi", "demo", reference="hi"),
    Candidate("p1", 0, "hi ü", 42, 10, 3, "stop", "SmolLM2"),
    Judgement("p1", 0, "selfj", 4.5, flag=None, raw=None, details={"digit_mass": 0.2, "digit_probs": [0.1, None]}),
    Judgement("p1", 1, "selfj", None, flag="no digit", raw="garbage"),
    Selection("p1", 0, False, 4.5, "selfj"),
    Selection("p2", None, True, 1.0, "selfj", reason="below"),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_round_trip(record):
    data = json.loads(json.dumps(to_json(record)))
    assert data["schema"] == SCHEMA and data["kind"] == record.kind
    assert from_json(type(record), data) == record


def test_file_round_trip(tmp_path):
    path = tmp_path / "c.jsonl"
    cands = [r for r in RECORDS if isinstance(r, Candidate)] * 3
    append_records(path, cands[:1])
    append_records(path, cands[1:])
    assert read_records(path, Candidate) == cands


def test_other_schema_version_rejected_with_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    append_records(path, [RECORDS[1]])
    data = to_json(RECORDS[1]) | {"schema": SCHEMA + 1}
    with open(path, "a") as f:
        f.write(json.dumps(data) + "\n")
    with pytest.raises(DataFileError, match=rf"c\.jsonl:2: field 'schema': this bon reads schema version {SCHEMA}"):
        read_records(path, Candidate)


def test_bad_field_names_line_and_field(tmp_path):
    path = tmp_path / "c.jsonl"
    bad = to_json(RECORDS[1]) | {"index": "zero"}
    path.write_text(json.dumps(to_json(RECORDS[1])) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataFileError, match=r"c\.jsonl:2: field 'index': expected an integer"):
        read_records(path, Candidate)


def test_unknown_and_missing_fields(tmp_path):
    with pytest.raises(RecordError, match="unknown field 'colour'"):
        from_json(Candidate, to_json(RECORDS[1]) | {"colour": 1})
    data = to_json(RECORDS[1])
    del data["text"]
    with pytest.raises(RecordError, match="missing field 'text'"):
        from_json(Candidate, data)


def test_torn_tail_is_ignored_then_dropped(tmp_path):
    path = tmp_path / "c.jsonl"
    append_records(path, [RECORDS[1]])
    with open(path, "a") as f:
        f.write('{"schema": 1, "kind": "cand')  # a write cut by kill -9
    assert read_records(path, Candidate) == [RECORDS[1]]
    assert drop_torn_tail(path) is True
    assert path.read_text().endswith("\n") and len(path.read_text().splitlines()) == 1
    assert drop_torn_tail(path) is False


def test_corrupt_middle_line_is_an_error_not_dropped(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(to_json(RECORDS[1])) + "\n{oops\n" + json.dumps(to_json(RECORDS[1])) + "\n")
    with pytest.raises(DataFileError, match=r"c\.jsonl:2: not valid JSON"):
        read_records(path, Candidate)


def test_write_json_atomic(tmp_path):
    target = tmp_path / "sub" / "x.json"
    write_json_atomic(target, [{"a": 1}])
    assert json.loads(target.read_text()) == [{"a": 1}]
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]

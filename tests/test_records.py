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
    cands = [Candidate("p1", i, f"hi ü {i}", 42, 10, 3, "stop", "SmolLM2") for i in range(3)]
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


def _lines(path, records):
    path.write_text("".join(json.dumps(to_json(r)) + "\n" for r in records))
    return path


CAND = Candidate("p1", 0, "Paris.", 1, 5, 2, "stop", "pol")
JUDGED = Judgement("p1", 0, "selfj", 7.5)


@pytest.mark.parametrize(
    "records, cls, line, first, named",
    [
        ([CAND, CAND.__class__(**{**CAND.__dict__, "text": "Lyon."})], Candidate, 2, 1, "prompt_id 'p1', index 0"),
        (
            [CAND, Candidate("p2", 0, "x", 1, 5, 2, "stop", "pol"), CAND.__class__(**{**CAND.__dict__, "seed": 9})],
            Candidate,
            3,
            1,
            "prompt_id 'p1', index 0",
        ),
        (
            [JUDGED, Judgement("p1", 0, "selfj", 2.0)],
            Judgement,
            2,
            1,
            "judge 'selfj', prompt_id 'p1', candidate_index 0",
        ),
        ([JUDGED, Judgement("p1", 0, "selfj", None, flag="failed")], Judgement, 2, 1, "judge 'selfj'"),
        (
            [Selection("p1", 0, False, 1.0, "selfj"), Selection("p1", None, True, None, "selfj")],
            Selection,
            2,
            1,
            "judge 'selfj', prompt_id 'p1'",
        ),
    ],
)
def test_two_different_records_of_one_thing_are_an_error_naming_both_lines(tmp_path, records, cls, line, first, named):
    path = _lines(tmp_path / "f.jsonl", records)
    with pytest.raises(DataFileError) as e:
        read_records(path, cls)
    assert str(e.value) == (
        f"{path}:{line}: a second, different {cls.kind} record for {named}" + str(e.value).split(named, 1)[1]
    )
    assert f"(the first is on line {first}); keep one of the two lines" in str(e.value)


def test_identical_repeats_are_merged_and_other_judges_or_prompts_are_not_repeats(tmp_path):
    other_judge = Judgement("p1", 0, "length", 7.5)
    path = _lines(tmp_path / "j.jsonl", [JUDGED, other_judge, JUDGED, Judgement("p1", 1, "selfj", 7.5)])
    assert read_records(path, Judgement) == [JUDGED, other_judge, Judgement("p1", 1, "selfj", 7.5)]
    assert read_records(_lines(tmp_path / "c.jsonl", [CAND, CAND]), Candidate) == [CAND]


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("index", -1, "field 'index': expected 0 or more, found -1"),
        ("completion_tokens", -3, "field 'completion_tokens': expected 0 or more, found -3"),
        ("prompt_tokens", -1, "field 'prompt_tokens': expected 0 or more"),
    ],
)
def test_candidate_fields_outside_their_domain_are_refused(tmp_path, field, value, says):
    data = to_json(CAND) | {field: value}
    (tmp_path / "c.jsonl").write_text(json.dumps(data) + "\n")
    with pytest.raises(DataFileError, match=f"c.jsonl:1: {says}"):
        read_records(tmp_path / "c.jsonl", Candidate)


@pytest.mark.parametrize(
    "raw, says",
    [
        ('"score": 1e400', "field 'score': expected a finite number or null, found inf"),
        ('"score": -1e999', "field 'score': expected a finite number or null, found -inf"),
        ('"candidate_index": -2', "field 'candidate_index': expected 0 or more, found -2"),
    ],
)
def test_judgement_values_outside_their_domain_are_refused_as_written(tmp_path, raw, says):
    """Written by hand or another tool: 1e400 parses to inf and would otherwise win every selection."""
    base = json.dumps(to_json(JUDGED))
    key = raw.split(":")[0]
    start = base.index(key)
    end = base.index(",", start)
    (tmp_path / "j.jsonl").write_text(base[:start] + raw + base[end:] + "\n")
    with pytest.raises(DataFileError, match=f"j.jsonl:1: {says}"):
        read_records(tmp_path / "j.jsonl", Judgement)


def test_a_comparison_winner_outside_0_1_2_is_refused():
    from bon.core.records import Comparison

    data = to_json(Comparison("p", 0, 1, "autoj", 1)) | {"winner": 3}
    with pytest.raises(RecordError, match="field 'winner': expected 0, 1, 2 or null, found 3"):
        from_json(Comparison, data)

"""Candidates keep the token ids the policy sampled (an optional field of candidates.jsonl; runs written before it
load), and exports give them as TRL-style id columns when asked."""

from __future__ import annotations

import json

import pytest

import bon
from bon.core.io import DataFileError, append_records, read_records
from bon.core.records import Candidate, to_json
from bon.eval.training import TrainingExportError, export_preferences, export_sft
from tests.helpers import bon as bon_cli
from tests.helpers import one_clear_line


def test_token_ids_round_trip_and_a_candidate_written_before_them_loads(tmp_path):
    path = tmp_path / "candidates.jsonl"
    with_ids = Candidate("q0", 0, "Hi there", 1, 9, 3, "stop", "p", token_ids=(17, 4, 0))
    append_records(path, [with_ids])
    old = to_json(Candidate("q0", 1, "Hello", 2, 9, 2, "stop", "p"))
    assert "token_ids" not in old  # unknown ids are left out: the line is as bb53da8 wrote it
    with open(path, "a") as f:
        f.write(json.dumps(old) + "\n")
    got = read_records(path, Candidate)
    assert got[0] == with_ids and got[0].token_ids == (17, 4, 0)
    assert got[1].token_ids is None


@pytest.mark.parametrize("bad", ['"17 4"', "[17, -1]", "[17, 4.5]", "[true]"])
def test_a_bad_token_ids_field_names_the_file_line_and_field(tmp_path, bad):
    path = tmp_path / "candidates.jsonl"
    row = to_json(Candidate("q0", 0, "Hi", 1, 9, 2, "stop", "p"))
    line = json.dumps(row | {"token_ids": "PLACEHOLDER"}).replace('"PLACEHOLDER"', bad)
    path.write_text(line + "\n")
    with pytest.raises(DataFileError, match=r"candidates.jsonl:1: field 'token_ids': expected a list of token ids"):
        read_records(path, Candidate)


def test_an_export_of_ids_from_a_run_without_them_is_refused_in_one_line(finished, tmp_path):
    with pytest.raises(TrainingExportError, match=r"candidates.jsonl: candidate \d+ of 'q\d' has no token_ids"):
        export_sft(finished, tmp_path / "sft", token_ids=True)
    out = bon_cli("export", "preferences", str(finished), "--out", str(tmp_path / "prefs"), "--token-ids")
    one_clear_line(out, "has no token_ids")
    assert not (tmp_path / "prefs").exists()


@pytest.mark.slow
def test_smollm2_candidates_keep_their_sampled_ids_and_exports_give_them_as_id_columns(tmp_path):
    cfg = bon.load_config(n=2, judge={"name": "length"}, policy={"max_tokens": 8}, output_dir=str(tmp_path / "run"))
    run = bon.run(cfg, ["Name a colour.", "Say hi."])
    tokenizer = bon.load_model(cfg.policy.model)[1]
    cands = run.candidates()
    assert all(c.token_ids is not None and len(c.token_ids) <= 8 for c in cands)
    assert [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in cands] == [c.text for c in cands]
    import datasets

    sft = datasets.load_from_disk(str(export_sft(run.path, tmp_path / "sft", token_ids=True, keep_truncated=True).path))
    kept = {(c.prompt_id, c.index): list(c.token_ids or ()) for c in cands}
    assert [r["completion_ids"] for r in sft] == [kept[(r["prompt_id"], r["index"])] for r in sft]
    prefs = datasets.load_from_disk(
        str(export_preferences(run.path, tmp_path / "prefs", token_ids=True, keep_truncated=True).path)
    )
    assert len(prefs) >= 1
    for r in prefs:
        assert r["chosen_ids"] == kept[(r["prompt_id"], r["chosen_index"])]
        assert r["rejected_ids"] == kept[(r["prompt_id"], r["rejected_index"])]

"""`bon export preferences` / `bon export sft`: rows by hand on fake-policy runs, the two loaders, the card, byte-identical
re-exports, hostile inputs, and TRL's own data preparation and one DPO / SFT step on the exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bon.core.io import write_records_atomic
from bon.core.records import Candidate, Judgement, Selection
from bon.core.rundir import FILES, RunDir
from bon.eval.training import TrainingExportError, export_preferences, export_sft
from bon.pipeline.rejudge import select_run
from bon.pipeline.runner import run
from tests.conftest import FakePolicy, run_config, two_turn_source
from tests.helpers import bon, contents, one_clear_line


def _scores(run_dir: Path) -> dict[str, list[tuple[float | None, int, int]]]:
    """Per prompt: (length score, index, text length) of its candidates."""
    rd = RunDir(run_dir)
    texts = {(c.prompt_id, c.index): c.text for c in rd.read(Candidate)}
    out: dict[str, list] = {}
    for j in rd.read(Judgement):
        out.setdefault(j.prompt_id, []).append(
            (j.score, j.candidate_index, len(texts[(j.prompt_id, j.candidate_index)]))
        )
    return out


def _rows(folder: Path) -> list[dict]:
    import datasets

    return datasets.load_from_disk(str(folder)).to_list()


def test_best_worst_pairs_by_hand_and_both_loaders_read_them(finished, tmp_path):
    import datasets

    done = export_preferences(finished, tmp_path / "prefs")
    rows = _rows(done.path)
    by_hand = []
    for pid, cands in _scores(finished).items():
        ranked = sorted(cands, key=lambda c: (-c[0], c[1]))
        if ranked[0][0] != ranked[-1][0]:
            by_hand.append((pid, ranked[0][1], ranked[-1][1]))
    assert [(r["prompt_id"], r["chosen_index"], r["rejected_index"]) for r in rows] == by_hand
    first = rows[0]
    assert first["prompt"] == [{"role": "user", "content": "Question number 0?"}]
    assert first["chosen"][0]["role"] == "assistant" and first["score_chosen"] > first["score_rejected"]
    assert first["chosen_length"] == len(first["chosen"][0]["content"]) and first["judge"] == "length"
    parquet = datasets.load_dataset("parquet", data_dir=str(done.path))["train"]
    assert parquet.to_list() == rows and done.rows == len(rows)
    card = (done.path / "README.md").read_text()
    assert card.startswith("---\n") and "config_digest:" in card and "num_examples: " + str(len(rows)) in card


def test_reexport_is_byte_identical_and_strategies_differ(finished, tmp_path):
    a = export_preferences(finished, tmp_path / "a", strategy="best-random", seed=3)
    b = export_preferences(finished, tmp_path / "b", strategy="best-random", seed=3)
    assert contents(a.path) == contents(b.path)
    margin = export_preferences(finished, tmp_path / "m", strategy="margin", margin=2)
    for r in _rows(margin.path):
        assert r["score_chosen"] - r["score_rejected"] >= 2
    every = export_preferences(finished, tmp_path / "all", strategy="margin")
    assert every.rows == 15 and every.left_out == {}  # 3 candidates: 3 pairs per prompt
    ratio = export_preferences(finished, tmp_path / "r", strategy="margin", max_length_ratio=1.05)
    assert all(r["chosen_length"] <= 1.05 * r["rejected_length"] for r in _rows(ratio.path))
    dropped = ratio.left_out["pairs whose chosen answer is over 1.05x longer"]
    assert dropped > 0 and ratio.rows + dropped == every.rows  # the length judge: 3 pairs a prompt, no tie


def test_sft_keeps_the_selected_answer_or_the_top_k_and_never_a_declined_prompt(finished, tmp_path):
    kept = {s.prompt_id: s.chosen_index for s in RunDir(finished).read(Selection)}
    rows = _rows(export_sft(finished, tmp_path / "sft").path)
    assert [(r["prompt_id"], r["index"]) for r in rows] == list(kept.items())
    assert rows[0]["messages"][-1]["role"] == "assistant" and rows[0]["messages"][0]["role"] == "user"
    top = _rows(export_sft(finished, tmp_path / "top", top_k=2, format="prompt-completion").path)
    assert len(top) == 2 * len(kept) and set(top[0]) >= {"prompt", "completion", "score"}
    select_run(finished, "length", decline_below=32)  # q0 and q2 (best 31) declined
    declined = {s.prompt_id for s in RunDir(finished).read(Selection) if s.declined}
    assert declined
    after = export_sft(finished, tmp_path / "declined")
    assert {r["prompt_id"] for r in _rows(after.path)}.isdisjoint(declined)
    assert after.left_out["declined prompts"] == len(declined)


def test_a_conversation_run_exports_its_history_as_messages(tmp_path):
    cfg = run_config(tmp_path, two_turn_source(tmp_path))
    run(cfg, policy=FakePolicy())
    rows = _rows(export_preferences(cfg.output_dir, tmp_path / "conv").path)
    second = [r for r in rows if len(r["prompt"]) > 1]
    assert second and [m["role"] for m in second[0]["prompt"]] == ["user", "assistant", "user"]
    with pytest.raises(TrainingExportError, match="format 'standard' holds plain strings"):
        export_preferences(cfg.output_dir, tmp_path / "std", format="standard")


def _blank(run_dir: Path, score) -> None:
    """Every judgement of the run set to ``score`` (None: failed)."""
    rd = RunDir(run_dir)
    js = [
        Judgement(j.prompt_id, j.candidate_index, j.judge, score, flag=None if score is not None else "x")
        for j in rd.read(Judgement)
    ]
    write_records_atomic(rd.path / FILES[Judgement], js)


@pytest.mark.parametrize(
    ("setup", "args", "needle"),
    [
        (lambda d: _blank(d, 1.0), [], "left out 5 ties (equal scores)"),
        (lambda d: _blank(d, None), [], "candidates without a score (failed judgements)"),
        (None, ["--judge", "nobody"], "'nobody' is neither a judge of this run nor a registered judge"),
        (None, ["--strategy", "best-wrst"], "unknown strategy 'best-wrst'; did you mean 'best-worst'?"),
        (None, ["--strategy", "margin", "--margin", "1000"], "pairs under the margin 1000"),
        (None, ["--margin", "-1"], "option --margin: Input should be greater than or equal to 0"),
        (None, ["--format", "sharegpt"], "option --format: Input should be 'conversational' or 'standard'"),
    ],
)
def test_hostile_exports_are_one_clear_line_and_write_nothing(finished, tmp_path, setup, args, needle):
    if setup:
        setup(finished)
    out = tmp_path / "out"
    one_clear_line(bon("export", "preferences", str(finished), "--out", str(out), *args), needle)
    assert not out.exists() and not any(p.name.startswith(".out.") for p in tmp_path.iterdir())


def test_one_candidate_per_prompt_and_an_occupied_out_are_refused(tmp_path, prompts_file):
    cfg = run_config(tmp_path, prompts_file, "n=1")
    run(cfg, policy=FakePolicy())
    one_clear_line(
        bon("export", "preferences", str(cfg.output_dir), "--out", str(tmp_path / "p")),
        "5 prompts with fewer than two scored candidates",
    )
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep me")
    for flags in ([], ["--overwrite"]):  # a folder of the user's is never replaced, whatever the flags
        out = bon("export", "sft", str(cfg.output_dir), "--out", str(busy), *flags)
        one_clear_line(out, "holds files bon did not write (mine.txt)")
        assert sorted(p.name for p in busy.iterdir()) == ["mine.txt"]
    out = bon("export", "sft", str(cfg.output_dir), "--out", str(tmp_path / "sft"))
    assert out.returncode == 0 and "wrote 5 rows" in out.stdout


def test_push_to_hub_offline_is_one_line_after_a_complete_local_export(finished, tmp_path):
    out = bon(
        "export",
        "sft",
        str(finished),
        "--out",
        str(tmp_path / "s"),
        "--push-to-hub",
        "me/bo3",
        env_extra={"HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 2 and "wrote 5 rows" in out.stdout
    assert "cannot be reached (offline); the dataset is complete in" in out.stderr
    assert json.loads((tmp_path / "s" / "dataset_info.json").read_text())


@pytest.mark.slow
def test_trl_prepares_and_trains_one_dpo_and_one_sft_step_on_the_exports(finished, tmp_path, tiny_lm):
    trl = pytest.importorskip("trl")
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    prefs = datasets.load_dataset("parquet", data_dir=str(export_preferences(finished, tmp_path / "p").path))["train"]
    assert trl.data_utils.is_conversational(prefs[0])
    templated = trl.data_utils.maybe_apply_chat_template(prefs[0], tokenizer)
    assert templated["prompt"].rstrip().endswith("assistant") and "Question number" in templated["prompt"]
    common = dict(max_steps=1, per_device_train_batch_size=2, report_to=[], save_strategy="no", use_cpu=True)
    dpo = trl.DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_lm),
        args=trl.DPOConfig(output_dir=str(tmp_path / "dpo"), **common),
        train_dataset=prefs,
        processing_class=tokenizer,
    )
    assert dpo.train().global_step == 1
    sft = datasets.load_from_disk(str(export_sft(finished, tmp_path / "s").path))
    trainer = trl.SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_lm),
        args=trl.SFTConfig(output_dir=str(tmp_path / "sft"), **common),
        train_dataset=sft,
        processing_class=tokenizer,
    )
    assert trainer.train().global_step == 1


@pytest.mark.slow
def test_trl_reads_a_multi_turn_export_through_its_chat_template_path(tmp_path, tiny_lm):
    trl = pytest.importorskip("trl")
    import datasets
    from transformers import AutoTokenizer

    cfg = run_config(tmp_path, two_turn_source(tmp_path))
    run(cfg, policy=FakePolicy())
    rows = datasets.load_from_disk(str(export_preferences(cfg.output_dir, tmp_path / "conv").path))
    second = next(r for r in rows if len(r["prompt"]) == 3)
    text = trl.data_utils.apply_chat_template(second, AutoTokenizer.from_pretrained(tiny_lm))
    earlier = second["prompt"][1]["content"]
    assert earlier in text["prompt"] and text["prompt"].index(earlier) < text["prompt"].index("Why that one?")

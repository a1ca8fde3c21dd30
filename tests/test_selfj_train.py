"""Self-J training: the loss by hand, the label combination, training prompts = inference prompts, adapters."""

from __future__ import annotations

import math

import pytest
import torch

from bon.core.records import Prompt
from bon.judges.selfj_train import Example, combine, distill_loss, is_heldout, pair_ids, training_judges


def test_loss_matches_a_hand_computation():
    # vocab 3, eos = 2; row: prompt [0], target [1, 2] -> labels [-100, 1, 2]
    t_logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    s_logits = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 1, 2]])
    out = distill_loss(t_logits, labels, s_logits, labels, eos=2)

    def logsm(v):
        z = math.log(sum(math.exp(x) for x in v))
        return [x - z for x in v]

    # CE over the target positions: logits[0] predicts 1, logits[1] predicts EOS (2)
    ce_t = -(logsm([2, 0, 0])[1] + logsm([0, 1, 0])[2]) / 2
    ce_s = -(logsm([0, 0, 1])[1] + logsm([1, 0, 0])[2]) / 2
    # KL(p_teacher || q_student) at the rating position only (EOS excluded), batchmean over 1 position
    p = [math.exp(x) for x in logsm([2, 0, 0])]
    log_q = logsm([0, 0, 1])
    kl = sum(pi * (math.log(pi) - lq) for pi, lq in zip(p, log_q))
    assert float(out["ce_teacher"]) == pytest.approx(ce_t, abs=1e-6)
    assert float(out["ce_student"]) == pytest.approx(ce_s, abs=1e-6)
    assert float(out["kl"]) == pytest.approx(kl, abs=1e-6)
    assert float(out["loss"]) == pytest.approx(ce_t + 0.3 * ce_s + 2 * kl, abs=1e-6)


def test_kl_direction_and_detached_teacher():
    t = torch.tensor([[[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], requires_grad=True)
    s = torch.tensor([[[0.0, 3.0, 0.0], [0.0, 0.0, 0.0]]], requires_grad=True)
    labels = torch.tensor([[-100, 0]])
    out = distill_loss(t, labels, s, labels, eos=2, ce_student_weight=0.0, kl_weight=1.0)
    out["kl"].backward()
    assert float(s.grad.abs().sum()) > 0 and t.grad is None  # the teacher's logits are detached in the KL
    p = torch.softmax(t.detach()[0, 0], -1)
    q = torch.log_softmax(s.detach()[0, 0], -1)
    assert float(out["kl"]) == pytest.approx(float((p * (p.log() - q)).sum()), abs=1e-6)  # forward KL, not reverse


def test_label_combination():
    assert combine(9.0, 1.0, 0.5, 0.5) == (9.0, 9)
    assert combine(3.0, -0.2, 0.5, 0.5) == (1.5, 2)  # negative cosine counts as 0; 1.5 rounds half up
    assert combine(4.0, 0.5, 1.0, 0.0) == (4.0, 4)
    value, digit = combine(6.2, 0.8, 0.25, 0.75)
    assert value == pytest.approx(0.25 * 6.2 + 0.75 * 7.2) and digit == 7
    assert combine(None, 0.5, 0.5, 0.5) is None and combine(5.0, float("nan"), 0.5, 0.5) is None
    assert is_heldout("x", 0.0) is False and sum(is_heldout(f"p{i}", 0.2) for i in range(1000)) in range(150, 250)


@pytest.mark.slow
def test_training_prompts_are_the_inference_prompts(smollm2):
    from bon.judges.selfj import SelfJOptions, SelfJudge

    ex = Example("a#0", Prompt("a", "What is 2+2?", reference="4"), "Four.", 7, "train")
    options = SelfJOptions(prompt_format="chat")
    teacher, student = training_judges(options, smollm2)
    t_ids, s_ids, target = pair_ids(teacher, student, ex, smollm2.tokenizer.eos_token_id)
    assert t_ids == SelfJudge(SelfJOptions(prompt_format="chat", reference="auto"), engine=smollm2).prompt_ids(
        ex.prompt, "Four."
    )
    assert s_ids == SelfJudge(SelfJOptions(prompt_format="chat", reference="never"), engine=smollm2).prompt_ids(
        ex.prompt, "Four."
    )
    assert "[Reference]" in smollm2.tokenizer.decode(t_ids) and "[Reference]" not in smollm2.tokenizer.decode(s_ids)
    assert target == [teacher.digit_ids[7], smollm2.tokenizer.eos_token_id]


@pytest.mark.slow
def test_train_then_judge_with_the_adapter(tmp_path, smollm2):
    """Two optimiser steps of LoRA self-distillation on SmolLM2; the saved adapter, loaded back by the
    selfj judge (merged at load), scores exactly as the trained (unmerged) model; a rerun resumes."""
    import json

    from peft import PeftModel

    from bon.core.config import ModelConfig
    from bon.engines.hf import HFModel
    from bon.judges.selfj import SelfJOptions, SelfJudge
    from bon.judges.selfj_train import TrainConfig, train

    data = tmp_path / "labels.jsonl"
    rows = [
        {
            "id": f"q{i}#0",
            "prompt_id": f"q{i}",
            "instruction": f"What is {i} + {i}?",
            "reference": str(2 * i),
            "response": str(2 * i + i % 2),
            "label": 9 - 5 * (i % 2),
            "split": "train",
        }
        for i in range(6)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(
        data=data,
        prompt_format="chat",
        output_dir=tmp_path / "out",
        batch_size=2,
        effective_batch=2,
        epochs=0.6,
        warmup_steps=0,
        save_every=1,
        learning_rate=1e-3,
    )
    log = []
    adapter = train(cfg, note=log.append)
    steps = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and all(s["kl"] >= 0 and s["tokens_per_s"] > 0 for s in steps)
    assert (adapter / "adapter_config.json").is_file() and (tmp_path / "out" / "checkpoint" / "state.json").is_file()

    prompt = Prompt("z", "What is 4 + 4?", reference="8")
    from bon.core.records import Candidate

    cand = Candidate("z", 0, "8", 1, 1, 1, "stop", "p")
    tuned = SelfJudge(SelfJOptions(prompt_format="chat", reference="never", adapter=str(adapter)))
    base = SelfJudge(SelfJOptions(prompt_format="chat", reference="never"), engine=smollm2)
    got, before = tuned.score([prompt], [cand])[0], base.score([prompt], [cand])[0]
    ids = base.prompt_ids(prompt, "8")
    peft = PeftModel.from_pretrained(HFModel(ModelConfig()).model, str(adapter)).eval()
    with torch.no_grad():
        logprobs = torch.log_softmax(peft(torch.tensor([ids])).logits[0, -1].float(), -1)
    probs = [math.exp(float(logprobs[t])) for t in base.digit_ids]
    assert got.score == pytest.approx(sum(d * p for d, p in enumerate(probs)) / sum(probs), abs=1e-4)
    assert abs(got.score - before.score) > 1e-4  # training changed the judge

    resumed = train(cfg.model_copy(update={"epochs": 1.0}), note=log.append)  # one more step from the checkpoint
    assert any("resuming from" in m for m in log) and resumed == adapter
    assert [json.loads(line)["step"] for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
    ]


@pytest.mark.slow
def test_label_writes_both_parts_and_resumes(tmp_path, prompts_file, monkeypatch):
    import json

    from bon.core.config import load_config
    from bon.judges.selfj_train import LabelConfig, label

    sets = [
        f"run.output_dir={tmp_path / 'run'}",
        f"run.prompts.source={prompts_file}",
        "run.prompts.limit=2",
        "run.n=2",
        "run.policy.max_tokens=8",
        "run.judge.options.prompt_format=chat",
        "run.judge.options.reference=always",
        f"output={tmp_path / 'labels.jsonl'}",
        "heldout=0.5",
    ]
    cfg = load_config(None, sets, model=LabelConfig)
    summary = label(cfg, note=lambda m: None)
    rows = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert summary["rows"] == len(rows) == 4 and summary["unlabelled"] == 0
    for r in rows:
        assert 0 <= r["self_eval"] <= 9 and -1 <= r["cosine"] <= 1 and r["reference"].startswith("Answer ")
        assert (r["combined"], r["label"]) == combine(r["self_eval"], r["cosine"], 0.5, 0.5)
        assert r["split"] == ("heldout" if is_heldout(r["prompt_id"], 0.5) else "train")
    before = (tmp_path / "labels.jsonl").read_bytes()
    from bon.judges.cosine import CosineJudge
    from bon.judges.selfj import SelfJudge
    from bon.pipeline.policy import EnginePolicy

    def redone(*args, **kwargs):
        raise AssertionError("the resumed label step sampled or judged again")

    for cls, method in ((EnginePolicy, "generate"), (SelfJudge, "score"), (CosineJudge, "score")):
        monkeypatch.setattr(cls, method, redone)
    assert label(cfg, note=lambda m: None) == summary and (tmp_path / "labels.jsonl").read_bytes() == before

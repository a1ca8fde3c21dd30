"""Training a Self-J judge: labels from self-evaluation + cosine, then LoRA self-distillation.

The recipe is the Self-J repository's (`kd.py`, `finetune.kd.py`, `bash/finetune.kd.sh`):
loss = CE(teacher) + 0.3 CE(student) + 2 KL(p_teacher || q_student). The teacher reads the
with-reference rating prompt, the student the reference-free one; both are the same LoRA model and
only the teacher's logits are detached. The prompts are exactly the ones the `selfj` judge builds at
inference (`SelfJudge.prompt_ids`): the repository wrapped them in an Alpaca template for training
only, which this module does not.

Labels (the repository ships none of its label-building code): the evaluated model's own Self-J
rating *with* the reference (expected digit, 0-9) and the cosine similarity of response and
reference (MiniLM), rescaled to 0-9 (cosine clipped at 0, times 9), combined with weights and
rounded to the digit the teacher and student learn to emit.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from bon.core.config import ModelConfig, RunConfig, Strict
from bon.core.io import DataFileError, append_jsonl, read_json, read_json_rows, write_json_atomic, write_jsonl_atomic
from bon.core.records import Candidate, Judgement, Prompt, by_key, by_prompt
from bon.engines.contract import derive_seed
from bon.judges.cosine import CosineOptions
from bon.judges.selfj import SelfJOptions, SelfJudge
from bon.pipeline.rejudge import judge_run
from bon.pipeline.runner import run


class LabelConfig(Strict):
    run: RunConfig = Field(
        default_factory=RunConfig,
        description="sampling K responses (n) and the self-evaluation judge (selfj, reference: always)",
    )
    cosine: CosineOptions = Field(
        default_factory=CosineOptions, description="the embedder for response-reference similarity"
    )
    self_weight: float = Field(0.5, ge=0.0, description="weight of the self-evaluation rating (0-9)")
    cosine_weight: float = Field(
        0.5, ge=0.0, description="weight of the cosine similarity rescaled to 0-9 (max(cos, 0) x 9)"
    )
    heldout: float = Field(
        0.2, ge=0.0, lt=1.0, description="share of instructions held out for evaluation (by a hash of the prompt id)"
    )
    output: Path = Field(Path("runs/selfj_labels.jsonl"), description="the training data written")

    @field_validator("run")
    @classmethod
    def _self_evaluation(cls, run: RunConfig) -> RunConfig:
        if run.judge.name != "selfj" or run.judge.options.get("reference") != "always":
            raise ValueError("judge must be selfj with options.reference: always (self-evaluation with the reference)")
        return run


class TrainConfig(Strict):
    data: Path = Field(Path("runs/selfj_labels.jsonl"), description="labelled data from `bon selfj label`")
    model: ModelConfig = Field(
        default_factory=ModelConfig, description="the model trained (teacher and student are the same LoRA model)"
    )
    prompt_format: Literal["raw", "chat"] = Field("raw", description="as the selfj judge that will use the adapter")
    output_dir: Path = Field(Path("runs/selfj_adapter"), description="adapter, checkpoints and the training log")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout")
    target_modules: list[str] = Field(["q_proj", "k_proj", "v_proj", "o_proj"], description="modules LoRA adapts")
    learning_rate: float = Field(3e-4, gt=0.0, description="AdamW learning rate")
    batch_size: int = Field(4, ge=1, description="pairs per forward pass")
    effective_batch: int = Field(128, ge=1, description="pairs per optimiser step (gradient accumulation)")
    epochs: float = Field(2.0, gt=0.0, description="passes over the training split")
    cutoff: int = Field(1024, ge=8, description="longest prompt + target in tokens; longer pairs are dropped (counted)")
    warmup_steps: int = Field(100, ge=0, description="linear warm-up, in optimiser steps")
    ce_student_weight: float = Field(0.3, ge=0.0, description="weight of the student's CE")
    kl_weight: float = Field(2.0, ge=0.0, description="weight of KL(p_teacher || q_student)")
    max_minutes: float | None = Field(None, gt=0.0, description="stop (with a checkpoint) after this long")
    save_every: int = Field(20, ge=1, description="optimiser steps between checkpoints")
    merge: bool = Field(False, description="also write merged weights (base + adapter)")
    seed: int = Field(0, ge=0, description="data order and LoRA init")


def combine(
    self_score: float | None, cosine: float | None, self_weight: float, cosine_weight: float
) -> tuple[float, int] | None:
    """(the combined 0-9 value, the digit label) from the two parts; None when a part is missing."""
    if self_score is None or cosine is None or not math.isfinite(self_score) or not math.isfinite(cosine):
        return None
    value = (self_weight * self_score + cosine_weight * 9.0 * min(max(cosine, 0.0), 1.0)) / (
        self_weight + cosine_weight
    )
    return value, int(min(9, max(0, math.floor(value + 0.5))))


def is_heldout(prompt_id: str, share: float) -> bool:
    return derive_seed("heldout", prompt_id) % 10_000 < share * 10_000


@dataclass(frozen=True)
class Example:
    """One labelled response: what the teacher and the student read, and the digit they learn."""

    id: str
    prompt: Prompt  # with its reference
    response: str
    label: int
    split: str  # train | heldout


def read_examples(path: Path) -> list[Example]:
    if not path.exists():
        raise DataFileError(path, None, "labelled data not found; make it with `bon selfj label`")
    out = []
    for lineno, row in read_json_rows(path):
        try:
            prompt = Prompt(row["prompt_id"], row["instruction"], reference=row["reference"])
            label = row["label"]
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label <= 9:
                raise DataFileError(path, lineno, f"field 'label': expected a digit 0-9, found {label!r}")
            out.append(Example(row["id"], prompt, row["response"], label, row["split"]))
        except KeyError as e:
            raise DataFileError(path, lineno, f"missing field {e.args[0]!r}") from None
    return out


def training_judges(options: SelfJOptions, engine) -> tuple[SelfJudge, SelfJudge]:
    """(teacher, student): the selfj judge with and without the reference, on one engine."""
    teacher = SelfJudge(options.model_copy(update={"reference": "always"}), engine=engine)
    student = SelfJudge(options.model_copy(update={"reference": "never"}), engine=engine)
    return teacher, student


def pair_ids(teacher: SelfJudge, student: SelfJudge, ex: Example, eos: int) -> tuple[list[int], list[int], list[int]]:
    """(teacher prompt ids, student prompt ids, target ids): the inference prompts, then the rating digit and EOS."""
    target = [teacher.digit_ids[ex.label], eos]
    return teacher.prompt_ids(ex.prompt, ex.response), student.prompt_ids(ex.prompt, ex.response), target


def distill_loss(
    teacher_logits,
    teacher_labels,
    student_logits,
    student_labels,
    eos: int,
    ce_student_weight: float = 0.3,
    kl_weight: float = 2.0,
) -> dict[str, Any]:
    """The Self-J loss on one batch: labels are -100 on prompt tokens; logits at t predict the label at t+1.

    KL is `F.kl_div(log_softmax(student), softmax(teacher.detach()), reduction="batchmean")` over
    the target positions except EOS, i.e. forward KL(p_teacher || q_student) averaged over those
    positions; the two batches' target positions are paired in order.
    """
    import torch.nn.functional as F

    def ce(logits, labels):
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
        )

    def positions(logits, labels):
        targets = labels[:, 1:]
        keep = (targets != -100) & (targets != eos)
        return logits[:, :-1][keep]

    t, s = positions(teacher_logits, teacher_labels), positions(student_logits, student_labels)
    kl = F.kl_div(F.log_softmax(s.float(), -1), F.softmax(t.detach().float(), -1), reduction="batchmean")
    ce_t, ce_s = ce(teacher_logits, teacher_labels), ce(student_logits, student_labels)
    return {"loss": ce_t + ce_student_weight * ce_s + kl_weight * kl, "ce_teacher": ce_t, "ce_student": ce_s, "kl": kl}


def _padded(rows: Sequence[tuple[list[int], list[int]]], pad: int):
    """Right-padded (ids, attention mask, labels) of (prompt, target) rows; the prompt is masked in the labels."""
    import torch

    width = max(len(p) + len(t) for p, t in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (p, t) in enumerate(rows):
        ids[r, : len(p) + len(t)] = torch.tensor(p + t)
        mask[r, : len(p) + len(t)] = 1
        labels[r, len(p) : len(p) + len(t)] = torch.tensor(t)
    return ids, mask, labels


Pair = tuple[list[int], list[int], list[int]]  # (teacher prompt ids, student prompt ids, target ids)


def training_pairs(
    cfg: TrainConfig, teacher: SelfJudge, student: SelfJudge, eos: int, note: Callable[[str], None]
) -> list[Pair]:
    """The data: every 'train' example as token ids, those longer than ``cfg.cutoff`` dropped (said)."""
    pairs = [pair_ids(teacher, student, ex, eos) for ex in read_examples(cfg.data) if ex.split == "train"]
    kept = [p for p in pairs if max(len(p[0]), len(p[1])) + len(p[2]) <= cfg.cutoff]
    if len(kept) < len(pairs):
        note(f"dropped {len(pairs) - len(kept)} pairs longer than cutoff {cfg.cutoff}")
    if not kept:
        raise DataFileError(cfg.data, None, "no training pairs (split 'train') within the cutoff")
    return kept


def trainable(cfg: TrainConfig, base: Any, checkpoint: Path, note: Callable[[str], None]) -> tuple[Any, dict[str, int]]:
    """The model: LoRA layers on ``base``, fresh or from the last checkpoint, and the loop's state (step, seen)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if (checkpoint / "adapter_config.json").exists():
        state = read_json(checkpoint / "state.json")
        note(f"resuming from {checkpoint} at step {state['step']}")
        return PeftModel.from_pretrained(base, checkpoint, is_trainable=True), state
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, lora), {"step": 0, "seen": 0}


def optimiser_for(cfg: TrainConfig, model: Any, checkpoint: Path, step: int, total_steps: int) -> tuple[Any, Any]:
    """AdamW and its warm-up + linear-decay schedule, both restored to ``step``."""
    import torch

    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    if (checkpoint / "optimiser.pt").exists():
        optimiser.load_state_dict(torch.load(checkpoint / "optimiser.pt"))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)) * max(0.0, 1 - s / total_steps)
    )
    for _ in range(step):
        schedule.step()
    return optimiser, schedule


def accumulate_step(
    cfg: TrainConfig, model: Any, batches: Sequence[Sequence[Pair]], pad: int, eos: int
) -> tuple[dict[str, float], int]:
    """Forward and backward over one optimiser step's batches; (mean loss parts, tokens read)."""
    parts = {"loss": 0.0, "ce_teacher": 0.0, "ce_student": 0.0, "kl": 0.0}
    tokens = 0
    for batch in batches:
        t_ids, t_mask, t_labels = _padded([(b[0], b[2]) for b in batch], pad)
        s_ids, s_mask, s_labels = _padded([(b[1], b[2]) for b in batch], pad)
        losses = distill_loss(
            model(input_ids=t_ids, attention_mask=t_mask).logits,
            t_labels,
            model(input_ids=s_ids, attention_mask=s_mask).logits,
            s_labels,
            eos,
            cfg.ce_student_weight,
            cfg.kl_weight,
        )
        (losses["loss"] / len(batches)).backward()
        tokens += int(t_mask.sum() + s_mask.sum())
        for k in parts:
            parts[k] += float(losses[k].detach()) / len(batches)
    return parts, tokens


def train(
    cfg: TrainConfig, note: Callable[[str], None] = print, progress: Callable[[dict], None] | None = None
) -> Path:
    """LoRA self-distillation, resumable from the last checkpoint in ``cfg.output_dir``; returns the adapter folder."""
    import random

    import torch

    from bon.engines.hf import HFModel

    engine = HFModel(cfg.model)  # a private copy: LoRA layers go into its modules, not into a shared engine
    options = SelfJOptions(
        **{k: getattr(cfg.model, k) for k in ModelConfig.model_fields}, prompt_format=cfg.prompt_format
    )
    teacher, student = training_judges(options, engine)
    eos = engine.tokenizer.eos_token_id
    kept = training_pairs(cfg, teacher, student, eos, note)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    checkpoint = out / "checkpoint"
    model, state = trainable(cfg, engine.model, checkpoint, note)
    model.train()
    accumulate = max(1, cfg.effective_batch // cfg.batch_size)
    total_steps = max(1, math.ceil(cfg.epochs * max(1, math.ceil(len(kept) / (cfg.batch_size * accumulate)))))
    optimiser, schedule = optimiser_for(cfg, model, checkpoint, state["step"], total_steps)
    order = list(range(len(kept)))
    random.Random(cfg.seed).shuffle(order)
    stream = order * math.ceil(cfg.epochs + 1)  # the data order of every epoch, fixed by the seed
    started, tokens = time.perf_counter(), 0
    out.mkdir(parents=True, exist_ok=True)
    while state["step"] < total_steps:
        batches = []
        for _ in range(accumulate):
            batches.append([kept[i] for i in stream[state["seen"] : state["seen"] + cfg.batch_size]])
            state["seen"] += cfg.batch_size
        parts, read = accumulate_step(cfg, model, batches, engine.pad_id, eos)
        optimiser.step()
        schedule.step()
        optimiser.zero_grad()
        state["step"] += 1
        tokens += read
        elapsed = time.perf_counter() - started
        row = {
            "step": state["step"],
            "of": total_steps,
            **parts,
            "tokens_per_s": tokens / elapsed,
            "lr": schedule.get_last_lr()[0],
        }
        append_jsonl(out / "train_log.jsonl", [row])
        if progress:
            progress(row)
        out_of_time = cfg.max_minutes is not None and elapsed > 60 * cfg.max_minutes
        if state["step"] % cfg.save_every == 0 or state["step"] == total_steps or out_of_time:
            _save(model, optimiser, state, checkpoint)
        if out_of_time:
            note(f"stopped after {elapsed / 60:.1f} minutes at step {state['step']} of {total_steps} (max_minutes)")
            break
    model.save_pretrained(out / "adapter")
    if cfg.merge:
        model.merge_and_unload().save_pretrained(out / "merged")
        engine.tokenizer.save_pretrained(out / "merged")
    return out / "adapter"


def _save(model, optimiser, state: dict, checkpoint: Path) -> None:
    """A checkpoint written beside the old one and swapped in, so a kill never leaves half of one."""
    import os
    import shutil

    import torch

    tmp = checkpoint.with_name(checkpoint.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save(optimiser.state_dict(), tmp / "optimiser.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    old = checkpoint.with_name(checkpoint.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if checkpoint.exists():
        os.replace(checkpoint, old)
    os.replace(tmp, checkpoint)
    shutil.rmtree(old, ignore_errors=True)


def label(cfg: LabelConfig, progress=None, note: Callable[[str], None] = print) -> dict[str, Any]:
    """Sample K responses per instruction and rate each (self-evaluation with reference + cosine); write the data.

    Both steps are a `bon run` and a `bon judge` on ``cfg.run.output_dir``, so a rerun resumes.
    """
    result = run(cfg.run, progress=progress)
    judge_run(cfg.run.output_dir, "cosine", cfg.cosine.model_dump(), label="cosine", progress=progress)
    rd = result.run_dir
    cands = by_prompt(rd.read(Candidate))
    judgements = rd.read(Judgement)
    self_eval, cosine = by_key(judgements, "selfj"), by_key(judgements, "cosine")
    rows, missing = [], 0
    for p in result.prompts:
        for i in range(cfg.run.n):
            s, c = self_eval.get((p.id, i)), cosine.get((p.id, i))
            parts = combine(s.score, c.score, cfg.self_weight, cfg.cosine_weight) if s and c else None
            if parts is None or s is None or c is None:
                missing += 1
                continue
            rows.append(
                {
                    "id": f"{p.id}#{i}",
                    "prompt_id": p.id,
                    "instruction": p.instruction,
                    "reference": p.reference,
                    "response": cands[p.id][i].text,
                    "self_eval": s.score,
                    "cosine": c.score,
                    "combined": parts[0],
                    "label": parts[1],
                    "split": "heldout" if is_heldout(p.id, cfg.heldout) else "train",
                }
            )
    write_jsonl_atomic(cfg.output, rows)
    write_jsonl_atomic(
        heldout_path(cfg.output), [r for r in rows if r["split"] == "heldout"]
    )  # a `scores` benchmark for bon compare
    summary = {
        "rows": len(rows),
        "unlabelled": missing,
        "train": sum(r["split"] == "train" for r in rows),
        "labels": {d: sum(r["label"] == d for r in rows) for d in range(10)},
    }
    write_json_atomic(cfg.output.with_suffix(".summary.json"), summary)
    return summary


def heldout_path(output: Path) -> Path:
    return output.with_name(output.stem + ".heldout.jsonl")

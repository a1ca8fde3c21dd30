"""CPU time of every judge per 100 candidates, on the candidates of a real run.

    .venv/bin/python benchmarks/judge_speed.py [RUN_DIR]   (default runs/demo; run `bon run configs/demo.yaml` first)

Model judges use their CPU defaults (SmolLM2-135M-Instruct, all-MiniLM-L6-v2); Auto-J decodes
only 64 tokens here (1024 in the protocol) and reward_model uses a tiny random classifier, so
those two rows measure plumbing, not a usable judge.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tiny_reward_model(tokenizer) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    path = tempfile.mkdtemp(prefix="bon-tiny-rm-")
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def main() -> None:
    from bon.core.config import ModelConfig, load_config
    from bon.core.prompts import load_prompts
    from bon.core.records import Candidate
    from bon.core.rundir import RunDir
    from bon.engines.hf import load
    from bon.judges import build_judge

    run_dir = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "runs" / "demo")
    cfg = load_config(None, [f"prompts.source={ROOT / 'configs' / 'prompts' / 'demo.jsonl'}"])
    prompts = load_prompts(cfg.prompts)
    cands = RunDir(run_dir).read(Candidate)
    if not cands:
        sys.exit(f"{run_dir} holds no candidates: run `bon run configs/demo.yaml` first")
    pool = [
        Candidate(c.prompt_id, k, c.text, c.seed, c.prompt_tokens, c.completion_tokens, c.finish_reason, c.policy)
        for k, c in enumerate((cands * (100 // len(cands) + 1))[:100])
    ]
    smollm2 = load(ModelConfig())
    judges = [
        ("length", {}),
        ("random", {}),
        ("cosine", {}),
        ("consistency", {}),
        ("ppl", {}),
        ("selfj", {"prompt_format": "chat"}),
        ("self_eval", {"prompt_format": "chat"}),
        ("autoj", {"max_tokens": 64, "wrapper": "chat"}),
        ("reward_model", {"model": tiny_reward_model(smollm2.tokenizer)}),
        ("pairwise", {"comparator": "scalar", "comparator_options": {"judge": "length"}}),
        (
            "ensemble",
            {
                "members": [
                    {"name": "self_eval", "options": {"prompt_format": "chat", "reference": "always"}},
                    {"name": "cosine"},
                ]
            },
        ),
    ]
    print(f"{len(pool)} candidates of {run_dir} ({len({c.prompt_id for c in pool})} prompts)")
    print(f"{'judge':<14}{'s / 100 candidates':>20}  scored")
    for name, options in judges:
        judge = build_judge(name, options)
        judge.score(prompts, pool[:2])  # load models outside the timing
        t0 = time.perf_counter()
        out = judge.score(prompts, pool)
        seconds = time.perf_counter() - t0
        print(f"{name:<14}{seconds * 100 / len(pool):>20.2f}  {sum(j.score is not None for j in out)}/{len(out)}")


if __name__ == "__main__":
    main()

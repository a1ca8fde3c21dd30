"""Best-of-N inside a training loop: two DPO steps on SmolLM2, each on pairs that the current weights sampled.

    .venv/bin/python examples/dpo_loop.py          # CPU, about a minute

Each step: `bon.BestOfN` samples 4 candidates per prompt from the model being trained (the same engine, seeds and
selection as `bon run`), a reward function of your own in TRL's convention ranks them, and TRL's `DPOTrainer` takes
one step on (best, worst) pairs. The model is loaded once (`bon.load_model`) and shared by sampler and trainer, so
step 2 samples the weights step 1 trained. Only bon's public API is used (`import bon`).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import bon

PROMPTS = [
    "Name a primary colour.",
    "What is the capital of France?",
    "Give one word that rhymes with cat.",
    "How many legs does a spider have?",
    "Suggest a name for a pet goldfish.",
    "What do bees make?",
]


def concise(prompts: list[str], completions: list[str], **kwargs: object) -> list[float]:
    """A GRPO-style reward: short answers that end a sentence score higher (a stand-in for your reward model)."""
    return [(1.0 if c.rstrip().endswith((".", "!")) else 0.0) - len(c.split()) / 50 for c in completions]


def preference_rows(outcomes: list[bon.Outcome]) -> list[dict[str, list[dict[str, str]]]]:
    """TRL's conversational preference rows from each prompt's (kept, lowest-scored) pair."""
    rows = []
    for o in outcomes:
        pair = o.pair()
        if pair is not None:
            chosen, rejected = pair
            rows.append(
                {
                    "prompt": [{"role": "user", "content": o.prompt.instruction}],
                    "chosen": [{"role": "assistant", "content": chosen.text}],
                    "rejected": [{"role": "assistant", "content": rejected.text}],
                }
            )
    return rows


def main(workdir: str, steps: int = 2) -> list[tuple[int, float, float]]:
    """Run ``steps`` of sample, rank, DPO; returns (pairs, mean kept reward, DPO loss) per step."""
    import datasets
    import trl

    model, tokenizer = bon.load_model("embedded:SmolLM2-135M-Instruct")
    config = bon.load_config(
        n=4,
        batch_size=len(PROMPTS),
        judge={"name": f"{__name__}:concise"},
        policy={"temperature": 1.0, "max_tokens": 32},
        output_dir=workdir,  # unused in memory; kept so the config is the one `bon run` would take
    )
    done = []
    with bon.BestOfN(config, model=model, tokenizer=tokenizer) as best:
        for step in range(steps):
            outcomes = best(PROMPTS, seed=step)  # a new seed per step: fresh candidates from the current weights
            kept = [o.selection.score for o in outcomes if o.selection.score is not None]
            rows = preference_rows(outcomes)
            print(f"step {step}: {len(rows)} pairs, mean kept reward {sum(kept) / len(kept):+.3f}")
            trainer = trl.DPOTrainer(
                model=model,
                args=trl.DPOConfig(
                    output_dir=str(Path(workdir) / f"dpo-{step}"),
                    max_steps=1,
                    per_device_train_batch_size=2,
                    learning_rate=5e-6,
                    report_to=[],
                    save_strategy="no",
                    use_cpu=True,
                    max_length=128,
                ),
                train_dataset=datasets.Dataset.from_list(rows),
                processing_class=tokenizer,
            )
            loss = trainer.train().training_loss
            print(f"step {step}: DPO loss {loss:.4f}")
            done.append((len(rows), sum(kept) / len(kept), loss))
    return done


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="bon-dpo-"))

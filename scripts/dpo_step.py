"""DPO on a `bon export preferences` folder with TRL's own trainer: docs/tasks/training.md.

    .venv/bin/python scripts/dpo_step.py runs/demo-prefs --steps 1 --out runs/demo-dpo

The model defaults to the demo's policy (the embedded SmolLM2, as `bon prepare` converted it); any local
checkpoint or hub id works. On a CPU keep --steps small: one step on SmolLM2-135M takes seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="a folder written by `bon export preferences`")
    parser.add_argument("--model", default="embedded:SmolLM2-135M-Instruct", help="the policy to train")
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps")
    parser.add_argument("--beta", type=float, default=0.1, help="DPO's beta")
    parser.add_argument("--out", type=Path, default=Path("runs/dpo"), help="where the trained model is saved")
    args = parser.parse_args(argv)
    try:
        import datasets
        import trl
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        print(f"error: {e.name} is not installed; pip install -e '.[train]'", file=sys.stderr)
        return 2
    from bon.core.config import ModelConfig
    from bon.engines.hf import prepare

    if not (args.dataset / "dataset_info.json").is_file():
        print(f"error: {args.dataset}: not a folder written by `bon export preferences`", file=sys.stderr)
        return 2
    path = str(prepare(ModelConfig(model=args.model))[0])
    pairs = datasets.load_from_disk(str(args.dataset))
    config = trl.DPOConfig(
        output_dir=str(args.out),
        max_steps=args.steps,
        per_device_train_batch_size=2,
        beta=args.beta,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    trainer = trl.DPOTrainer(
        AutoModelForCausalLM.from_pretrained(path), args=config, train_dataset=pairs, processing_class=tokenizer
    )
    result = trainer.train()
    trainer.save_model(str(args.out))
    print(f"{result.global_step} DPO steps on {len(pairs)} pairs, loss {result.training_loss:.4f}; saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

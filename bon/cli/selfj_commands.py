"""`bon selfj label` and `bon selfj train`: thin wrappers over judges/selfj_train.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from bon.cli.common import console, fail_clearly, load

selfj_app = typer.Typer(
    help="Train a Self-J judge: label responses, then LoRA self-distillation.", no_args_is_help=True
)


@selfj_app.command("label")
def label_cmd(
    config: Annotated[Path, typer.Argument(help="label config YAML, e.g. configs/selfj_label_cpu.yaml")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: --set run.n=2")] = None,
) -> None:
    """Sample K responses per instruction, rate each by self-evaluation with reference + cosine, write the data."""
    from bon.cli.progress import RichProgress
    from bon.judges.selfj_train import LabelConfig, label

    with fail_clearly():
        cfg = load(config, list(set_ or []), LabelConfig)
        with RichProgress(console) as progress:
            summary = label(cfg, progress=progress, note=progress.note)
    console.print(
        f"wrote {summary['rows']} labelled responses ({summary['train']} train) to {cfg.output}; "
        f"labels {json.dumps(summary['labels'])}; unlabelled {summary['unlabelled']}"
    )


@selfj_app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Argument(help="training config YAML, e.g. configs/selfj_train_cpu.yaml")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: --set max_minutes=5")] = None,
) -> None:
    """LoRA self-distillation (teacher: with reference; student: without); resumable; writes an adapter."""
    from bon.judges.selfj_train import TrainConfig, train

    def show(row: dict) -> None:
        console.print(
            f"step {row['step']}/{row['of']}  loss {row['loss']:.4f}  (CE teacher {row['ce_teacher']:.4f}, "
            f"CE student {row['ce_student']:.4f}, KL {row['kl']:.4f})  {row['tokens_per_s']:.0f} tokens/s",
            highlight=False,
        )

    with fail_clearly():
        cfg = load(config, list(set_ or []), TrainConfig)
        adapter = train(cfg, note=console.print, progress=show)
    console.print(f"adapter: {adapter}  (judge with: --set judge.options.adapter={adapter})")

"""`bon` command line: thin wrappers over library calls."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Best-of-N sampling with judges.", no_args_is_help=True, add_completion=False)
judges_app = typer.Typer(help="Inspect the registered judges.", no_args_is_help=True)
app.add_typer(judges_app, name="judges")

console = Console()
err_console = Console(stderr=True)


def _user_errors() -> tuple[type[BaseException], ...]:
    from bon.config import ConfigError
    from bon.executors import ExecutorError
    from bon.io import DataFileError
    from bon.models import ModelLoadError
    from bon.prompts import PromptSourceError
    from bon.registry import UnknownNameError
    from bon.rundir import RunDirError

    return (ConfigError, ExecutorError, DataFileError, ModelLoadError, PromptSourceError, UnknownNameError, RunDirError)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="run config YAML, e.g. configs/demo.yaml")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a key: --set n=4 --set judge.name=length")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="join this Ray cluster (implies engine=ray)")] = None,
) -> None:
    """Sample N candidates per prompt, judge them, keep the best or decline; write a run directory."""
    from bon.config import load_config
    from bon.pipeline import run as run_pipeline
    from bon.progress import RichProgress

    start = time.perf_counter()
    try:
        overrides = list(set_ or [])
        if ray_address:
            overrides += ["engine=ray", f"ray.address={ray_address}"]
        cfg = load_config(config, overrides)
        with RichProgress(console) as progress:
            result = run_pipeline(cfg, progress=progress)
    except _user_errors() as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    wall = time.perf_counter() - start

    table = Table(title=f"best-of-{cfg.n}: {result.judge_description}", title_justify="left")
    table.add_column("prompt", overflow="ellipsis", no_wrap=True, max_width=44)
    table.add_column("best score", justify="right")
    table.add_column("chosen", justify="right")
    table.add_column("declined?")
    for p, s in zip(result.prompts, result.selections):
        score = "—" if s.score is None else f"{s.score:.3f}"
        chosen = "—" if s.chosen_index is None else str(s.chosen_index)
        table.add_row(p.instruction.replace("\n", " "), score, chosen, "yes" if s.declined else "no")
    console.print(table)
    sample_s, judge_s = result.seconds.get("sample", 0.0), result.seconds.get("judge", 0.0)
    console.print(
        f"{len(result.prompts)} prompts, {sum(s.declined for s in result.selections)} declined; "
        f"sampled {result.generated} candidates in {sample_s:.1f} s ({result.generated / sample_s if sample_s else 0:.2f}/s), "
        f"made {result.judged} judgements in {judge_s:.1f} s ({result.judged / judge_s if judge_s else 0:.2f}/s); "
        f"wall {wall:.1f} s"
    )
    console.print(f"run directory: [bold]{result.run_dir.path}[/]  (AlpacaEval outputs: {result.outputs_path})")


@judges_app.command("list")
def judges_list() -> None:
    """Every registered judge and what it needs."""
    from judges import JUDGES

    table = Table()
    table.add_column("judge")
    table.add_column("what it scores")
    for name in JUDGES:
        table.add_row(name, JUDGES.get(name).summary)
    console.print(table)


def main() -> None:  # pragma: no cover - console entry point
    app()

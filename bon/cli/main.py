"""`bon` command line: thin wrappers over library calls."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from bon.cli.common import BonApp, console, err_console, fail_clearly, load, options_from, show, tagged
from bon.cli.evaluate import eval_app, export_app
from bon.cli.selfj_commands import selfj_app
from bon.cli.training_exports import preferences_cmd, sft_cmd

app = BonApp(help="Best-of-N sampling with judges.", no_args_is_help=True, add_completion=False)
judges_app = typer.Typer(help="Inspect the registered judges.", no_args_is_help=True)
app.add_typer(judges_app, name="judges")

app.add_typer(eval_app, name="eval")
app.add_typer(export_app, name="export")
export_app.command("preferences")(preferences_cmd)
export_app.command("sft")(sft_cmd)
app.add_typer(selfj_app, name="selfj")


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", help="show other libraries' progress bars and warnings (held back by default)")
    ] = False,
) -> None:
    """Best-of-N sampling with judges."""
    from bon.core.io import VERBOSE

    VERBOSE.set(verbose)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="run config YAML, e.g. configs/demo.yaml")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: --set n=4 --set judge.name=length")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="join this Ray cluster (implies engine=ray)")
    ] = None,
) -> None:
    """Sample N candidates per prompt, judge them, keep the best or decline; write a run directory.

    Keys often set (all of them: bon/core/config.py): n, policy.max_tokens,
    judge.name, selection.decline_below, selection.coverage, and
    early_rejection.keep_fraction / .chunk_tokens: judge the partial answers
    every chunk and stop the worst (`bon check` estimates whether that saves
    time; `bon run` says so before it starts when it will not).
    """
    from bon.cli.progress import RichProgress
    from bon.pipeline.runner import run as run_pipeline

    start = time.perf_counter()
    cfg: Any = None
    with fail_clearly(writes=lambda: cfg and cfg.output_dir):
        overrides = list(set_ or [])
        if ray_address:
            overrides += ["engine=ray", f"ray.address={ray_address}"]
        cfg = load(config, overrides)
        with RichProgress(console) as progress:
            result = run_pipeline(cfg, progress=progress)
    wall = time.perf_counter() - start

    scale = f" · scores: {result.scale}" if result.scale else ""
    table = Table(title=f"best-of-{cfg.n}: {result.judge_description}{scale}", title_justify="left")
    turns = any(p.turn > 1 or p.turns for p in result.prompts)  # conversations: which turn a row is
    table.add_column("prompt", overflow="ellipsis", no_wrap=True, max_width=36 if turns else 44)
    if turns:
        table.add_column(
            "turn",
            justify="right",
            no_wrap=True,
            min_width=max(len(f"{p.conversation_id} #{p.turn}") for p in result.prompts),
        )
    for column in ("best score", "pick"):  # whole headers at 80 columns; the prompt gives way
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    table.add_column("declined", no_wrap=True, min_width=len("declined"))
    for p, s in zip(result.prompts, result.selections):
        score = "—" if s.score is None else f"{s.score:.3f}"
        chosen = "—" if s.chosen_index is None else str(s.chosen_index)
        where = [f"{p.conversation_id} #{p.turn}"] if turns else []
        table.add_row(p.instruction.replace("\n", " "), *where, score, chosen, "yes" if s.declined else "no")
    show(table)
    for line in run_summary(result, wall):
        console.print(line, highlight=False)
    console.print(
        Text.assemble(
            "run directory: ", (str(result.run_dir.path), "bold"), f"  (AlpacaEval outputs: {result.outputs_path})"
        )
    )


def _counted(prompts: list[Any]) -> str:
    """'6 prompts', or for conversations '2 questions, 4 turns' (each turn is a prompt of its own)."""
    questions = len({p.conversation_id for p in prompts})
    if questions == len(prompts):
        return f"{len(prompts)} prompts"
    return f"{questions} questions, {len(prompts)} turns"


def _rate(count: int, seconds: float) -> str:
    """' (12.3/s)', or nothing when too little was timed for a rate to mean anything."""
    return f" ({count / seconds:.1f}/s)" if count and seconds >= 0.5 else ""


def run_summary(result: Any, wall: float) -> list[str]:
    """The lines under a run's table: counts, what this invocation did and how fast, the judge's flags."""
    declined = sum(s.declined for s in result.selections)
    sample_s, judge_s = result.seconds.get("sample", 0.0), result.seconds.get("judge", 0.0)
    if result.generated or result.judged:
        work = (
            f"sampled {result.generated} candidates in {sample_s:.1f} s{_rate(result.generated, sample_s)}, "
            f"made {result.judged} judgements in {judge_s:.1f} s{_rate(result.judged, judge_s)}"
        )
    else:
        work = "nothing left to sample or judge"
    tau = f" (selection.coverage: threshold {result.threshold:.4g})" if result.threshold is not None else ""
    lines = [f"{_counted(result.prompts)}, {declined} declined{tau}; {work}; wall {wall:.1f} s"]
    if result.flags:
        lines.append(f"flagged judgements: {result.flagged} of {result.judgements} (flags by kind, with an example):")
        lines += [f"  {count:>5}  {example}" for count, example in result.flags]
    return lines


@app.command()
def check(
    config: Annotated[Path, typer.Argument(help="run config YAML, e.g. configs/alpaca_eval_v2_bo32.yaml")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: --set policy.model=PATH")] = None,
) -> None:
    """Preflight a run from tokenizers and configs only (no weights): exit 1 if anything is missing or wrong."""
    from bon.judges import build_judge
    from bon.pipeline.preflight import check as preflight

    with fail_clearly():
        cfg = load(config, list(set_ or []))
        report = preflight(cfg, build_judge(cfg.judge.name, cfg.judge.options))
    console.print(f"bon check {config}", highlight=False)
    grid = Table.grid(padding=(0, 2))  # sentences, not cells: a long one wraps under its own column, unboxed
    grid.add_column("what", style="bold", no_wrap=True)
    grid.add_column("found", overflow="fold")
    for what, found in report.rows:
        grid.add_row(what, found)
    console.print(Padding(grid, (0, 0, 0, 2)))
    for line in report.missing:
        console.print(tagged("missing:", "bold red", line), highlight=False)
    for line in report.problems:
        console.print(tagged("problem:", "bold red", line), highlight=False)
    for line in report.stand_ins:
        console.print(tagged("stand-in:", "bold yellow", line), highlight=False)
    if report.stand_ins and not report.missing and not report.problems:
        console.print(
            tagged("tokens ok:", "bold yellow", "checked on stand-ins; `bon run` needs the weights they stand for"),
            highlight=False,
        )
    if not report.ok:
        raise typer.Exit(1)
    console.print(tagged("ok:", "bold green", "nothing missing, nothing wrong"))


@app.command()
def prepare(
    model: Annotated[str, typer.Argument(help="a model as a config names it")] = "embedded:SmolLM2-135M-Instruct",
) -> None:
    """Convert an embedded GGUF model to safetensors once, so no run pays for it (setup.sh does this)."""
    from bon.core.config import ModelConfig, validate_options
    from bon.engines.hf import prepare as prepare_model

    with fail_clearly():
        cfg = validate_options(ModelConfig, {"model": model}, {"model": "MODEL"})
        path, converted, seconds = prepare_model(cfg)
    if converted:
        console.print(f"{model}: converted to {path} in {seconds:.0f} s (once; every run now loads this copy)")
    else:
        console.print(f"{model}: ready, loads from {path}")


@app.command("serve-check")
def serve_check(
    url: Annotated[str, typer.Argument(help="an OpenAI-compatible API root, e.g. http://localhost:8000/v1")],
    model: Annotated[
        str | None, typer.Option("--model", help="the served model to probe (default: the only one)")
    ] = None,
    api_key_env: Annotated[
        str, typer.Option("--api-key-env", help="environment variable holding the key")
    ] = "OPENAI_API_KEY",
) -> None:
    """Probe a server for backend: openai: served models, n, seed, logprobs and the round trip per request."""
    from bon.core.config import ModelConfig, ServerConfig, validate_options
    from bon.engines.openai_server import check_server

    with fail_clearly():
        server = validate_options(
            ServerConfig,
            {"base_url": url, "model": model, "api_key_env": api_key_env},
            {"base_url": "URL", "model": "--model", "api_key_env": "--api-key-env"},
        )
        rows = check_server(ModelConfig(backend="openai", server=server))
    table = Table(title=f"bon serve-check {url}", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("found", overflow="fold")
    for what, found in rows:
        table.add_row(what, found)
    show(table)
    if any(what == "problem" or found.startswith("no:") for what, found in rows):
        raise typer.Exit(1)


@app.command()
def judge(
    run_dir: Annotated[Path, typer.Argument(help="a run directory made by `bon run`")],
    judge_name: Annotated[str, typer.Option("--judge", help="a registered judge (`bon judges list`)")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="a judge option: --set model=... --set batch_size=4")
    ] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="name the judgements carry (default: the judge's)")
    ] = None,
    allow_unjudged: Annotated[
        bool, typer.Option("--allow-unjudged", help="exit 0 even when the judge scored none of a prompt's candidates")
    ] = False,
) -> None:
    """Score an existing run's candidates with another judge; candidates are never regenerated."""
    from bon.api import Run
    from bon.cli.progress import RichProgress

    start = time.perf_counter()
    with fail_clearly(writes=run_dir), RichProgress(console) as progress:
        made = Run(run_dir).judge(
            judge_name, options_from(set_), label, allow_unjudged=allow_unjudged, progress=progress
        )
    console.print(
        f"{made} judgements by {label or judge_name} appended to "
        f"{run_dir}/judgements.jsonl in {time.perf_counter() - start:.1f} s"
    )


@app.command("select")
def select_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a run directory made by `bon run`")],
    judge_label: Annotated[
        str, typer.Option("--judge", help="whose judgements to select with (a judge name or --label)")
    ],
    decline_below: Annotated[
        float | None, typer.Option("--decline-below", help="decline prompts whose best score is below this")
    ] = None,
    tie_break: Annotated[
        str, typer.Option("--tie-break", help="lowest_index, details:KEY or judge:NAME")
    ] = "lowest_index",
    allow_unjudged: Annotated[
        bool,
        typer.Option("--allow-unjudged", help="keep the first candidate of prompts the judge scored none of"),
    ] = False,
    coverage: Annotated[
        float | None,
        typer.Option("--coverage", help="answer this share of the prompts (0.9: decline the 10% least confident)"),
    ] = None,
    calibrate_on: Annotated[
        Path | None,
        typer.Option("--calibrate-on", help="take the --coverage threshold from another run's scores, apply it here"),
    ] = None,
    length_penalty: Annotated[
        float, typer.Option("--length-penalty", help="λ: pick by z(score) - λ z(length) within each prompt")
    ] = 0.0,
) -> None:
    """Re-select every prompt with one judge's scores and rewrite selections and outputs."""
    from bon.cli.summaries import selected_lines
    from bon.pipeline.rejudge import select_run

    with fail_clearly():
        done = select_run(
            run_dir, judge_label, decline_below, tie_break, allow_unjudged, coverage, length_penalty, calibrate_on
        )
    for line in selected_lines(done, judge_label, coverage):
        console.print(line, highlight=False)


@app.command()
def compare(
    config: Annotated[Path, typer.Argument(help="comparison config YAML, e.g. configs/compare_cpu.yaml")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: --set bootstrap=200")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print results.json instead of the report")] = False,
) -> None:
    """Judges side by side on benchmarks: agreement, selection, correlation, risk-coverage, length bias."""
    import json

    from bon.cli.progress import RichProgress
    from bon.eval.compare import CompareConfig, run_compare
    from bon.eval.compare_report import results_json, summary_lines, write_compare_report

    with fail_clearly():
        cfg = load(config, list(set_ or []), CompareConfig)
        with RichProgress(err_console if as_json else console) as progress:  # stdout stays JSON
            result = run_compare(cfg, progress, note=progress.note)
        md, js, pngs = write_compare_report(result)
    if as_json:
        print(json.dumps(results_json(result)))
        return
    for line in summary_lines(result):
        console.print(line, markup=False, highlight=False)
    console.print(f"wrote {md} (the full report), {js} and {len(pngs)} PNGs; wall {result.wall_s:.1f} s")


@app.command()
def view(
    run_dir: Annotated[Path, typer.Argument(help="a run directory made by `bon run`")],
    out: Annotated[Path | None, typer.Option("--out", help="the HTML file to write; default RUN/view.html")] = None,
) -> None:
    """Write one self-contained HTML page of a run: candidates ranked per prompt, filters, search; no server."""
    from bon.eval.view import write_view

    notes: list[str] = []
    with fail_clearly():
        path = write_view(run_dir, out, notes)
    for note in notes:
        err_console.print(tagged("note:", "yellow", note), highlight=False)
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB); open it in a browser", highlight=False)


@judges_app.command("list")
def judges_list(
    options: Annotated[
        str | None, typer.Option("--options", help="one judge's options: key, type, default, meaning")
    ] = None,
) -> None:
    """Every registered judge, what it needs and what it runs on by default; or one judge's options."""
    from bon.judges import describe_judges, describe_options

    if options is not None:
        with fail_clearly():
            rows = describe_options(options)
        console.print(f"options of {options} (--set KEY=VALUE, or judge.options in a config):", highlight=False)
        for o in rows:  # a block per option, as per judge below: a 4-column table wrapped every cell at 80
            console.print(Text.assemble((o.key, "bold"), f": {o.type} = {o.default}"))
            console.print(Padding(Text(o.description), (0, 0, 0, 4)))
        return
    for row in describe_judges():  # a block per judge: readable at 80 columns, where a 5-column table was not
        source = "" if row.source == "bon" else f" [{row.source}]"
        console.print(Text.assemble((row.name, "bold"), source, "  ", row.summary))
        needs = "needs a reference answer" if row.needs_reference else "no reference needed"
        detail = (
            f"scores: {row.scale}; {needs}; conversations: {row.conversation}; "
            f"GPU weights: {row.hub_id or '—'}; CPU default: {row.cpu_default}"
        )
        console.print(Padding(Text(detail), (0, 0, 0, 4)))
    console.print("options of one judge: bon judges list --options NAME", highlight=False)
    console.print(
        "a judge of your own: judge.name module:Class (or module:function, a TRL reward function), or a package's "
        "entry point in the group bon.judges",
        highlight=False,
    )

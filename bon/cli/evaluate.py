"""`bon eval ...` and `bon export ...`: thin wrappers over eval/."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bon.cli.common import console, err_console, fail_clearly, options_from, show
from bon.core.errors import ConfigError
from bon.core.outputs import check_folder

eval_app = typer.Typer(help="Win rates, selector evaluation and AlpacaEval runs.", no_args_is_help=True)
export_app = typer.Typer(help="Export a run for submission.", no_args_is_help=True)


@eval_app.command("winrate")
def winrate_cmd(
    annotations: Annotated[Path, typer.Argument(help="an alpaca-eval annotations JSON file")],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object (alpaca-eval key names)")] = False,
    lc_data: Annotated[
        Path | None,
        typer.Option("--lc-data", help="df_gamed.csv of tatsu-lab/alpaca_eval, for the LC win rate offline"),
    ] = None,
) -> None:
    """Win rate, standard error, discrete and length-controlled win rate, by alpaca-eval's metrics."""
    from bon.eval.ae import full_winrate
    from bon.eval.annotations import read_annotations

    with fail_clearly():
        result = full_winrate(read_annotations(annotations), lc_data=lc_data, source=str(annotations))
    if as_json:
        keys = ("win_rate", "standard_error", "discrete_win_rate", "length_controlled_winrate", "n_total")
        print(json.dumps({k: getattr(result, k) for k in keys}))
        return
    table = Table(title=str(annotations), title_justify="left")
    for column in ("win rate", "std. error", "discrete", "LC win rate", "n"):
        table.add_column(column, justify="right")
    lc = "n/a" if result.length_controlled_winrate is None else f"{result.length_controlled_winrate:.2f}"
    table.add_row(
        f"{result.win_rate:.2f}",
        f"{result.standard_error:.2f}",
        f"{result.discrete_win_rate:.2f}",
        lc,
        str(result.n_total),
    )
    show(table)
    if result.lc_note:
        console.print(result.lc_note)


@eval_app.command("select-pool")
def select_pool_cmd(
    folder: Annotated[Path, typer.Argument(help="a folder of per-model annotation files over the same instructions")],
    judge: Annotated[str, typer.Option("--judge", help="a registered judge")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="a judge option, e.g. --set prompt_format=chat")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="only the first K instructions (model judges on CPU)")
    ] = None,
    reference: Annotated[
        str, typer.Option("--reference", help="baseline: the baseline output is the reference; none")
    ] = "baseline",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="write select_pool.md and select_pool.png here")] = None,
    length_penalty: Annotated[
        str,
        typer.Option("--length-penalty", help="λ, or a sweep 0,0.25,0.5,1: win rate against mean pick length"),
    ] = "0",
    lc_data: Annotated[
        Path | None, typer.Option("--lc-data", help="df_gamed.csv: the picks' LC win rate beside the raw one")
    ] = None,
) -> None:
    """How well a judge picks among candidates whose verdicts are already known."""
    from bon.cli.progress import RichProgress
    from bon.core.config import validate_options
    from bon.eval.metrics import ci_text
    from bon.eval.pool import REPORT, PoolOptions, evaluate_selector, gains, length_sweep, load_pool, write_reports
    from bon.judges import build_judge

    start = time.perf_counter()
    with fail_clearly():
        penalties = _penalties(length_penalty)
        opts = validate_options(PoolOptions, {"limit": limit, "reference": reference})
        pool = load_pool(folder, opts.limit)
        if out is not None:  # refused before the judge runs
            check_folder(out, REPORT, overwrite=True, reading=[folder], flag="")
        if pool.note():
            err_console.print(pool.note(), highlight=False)
        judge_obj = build_judge(judge, options_from(set_))
        with RichProgress(console) if not as_json else _quiet() as progress:
            progress.start("prompts", len(pool.instructions), 0)
            _, judgements = evaluate_selector(
                pool, judge_obj, opts.reference, on_batch=lambda k: progress.advance("prompts", k)
            )
        reports = length_sweep(pool, judge_obj.name, judgements, penalties, lc_data)
        written = write_reports(reports, folder, out, judge_obj.describe()) if out is not None else []
    report = reports[0]
    if written:
        if not as_json:
            console.print(f"wrote {', '.join(map(str, written))}")
    if as_json:
        print(json.dumps(report.as_json() if len(reports) == 1 else {"sweep": [r.as_json() for r in reports]}))
        return
    table = Table(
        title=f"{folder}: {report.n_instructions} instructions, {len(pool.models)} candidates each",
        title_justify="left",
    )
    table.add_column("selector")
    table.add_column("win rate % [95% CI]", justify="right")
    table.add_column("mean length", justify="right")
    low, high = report.win_rate_ci or (None, None)
    ci = " " + ci_text(low, high, report.n_instructions)
    lam = f", λ {report.length_penalty:g}" if report.length_penalty else ""
    picked = f"{report.lengths['picks']:.0f}"
    lc = f"; LC {report.lc_win_rate:.2f}" if report.lc_win_rate is not None else ""
    table.add_row(f"{judge} ({judge_obj.describe()}{lam})", f"{report.win_rate:.2f}{ci}{lc}", picked)
    for key, label, length in (
        ("random", "random pick (mean over models)", "random"),
        ("longest", "longest output", "longest"),
        ("best_single", f"best single model ({report.best_single_model})", None),
        ("oracle", "oracle", None),
    ):
        size = f"{report.lengths[length]:.0f}" if length else ""
        table.add_row(label, f"{report.reference_points[key]:.2f}", size)
    table.add_row("baseline (the reference answers)", "", f"{report.lengths['baseline']:.0f}")
    show(table)
    for line in gains(report) + ([report.lc_note] if report.lc_note else []):
        console.print(line, highlight=False)
    if len(reports) > 1:
        sweep = Table(title="length penalty sweep: win rate against mean pick length", title_justify="left")
        for column in ("λ", "win rate %", "vs random", "mean length"):
            sweep.add_column(column, justify="right")
        for r in reports:
            gain = r.vs_random.said() if r.vs_random else ""
            rate = f"{r.win_rate:.2f}" + (f"; LC {r.lc_win_rate:.2f}" if r.lc_win_rate is not None else "")
            sweep.add_row(f"{r.length_penalty:g}", rate, gain, f"{r.lengths['picks']:.0f}")
        show(sweep)
    console.print(
        f"picks per model: {report.picks}; {report.failed} instructions "
        f"with no usable judgement; {time.perf_counter() - start:.1f} s"
    )


def _penalties(text: str) -> list[float]:
    """``--length-penalty``: one λ or a comma-separated sweep, each a number of at least 0."""
    out = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(
                f"option --length-penalty: {part.strip()!r} is not a number (e.g. 0,0.25,0.5,1)"
            ) from None
        if not value >= 0 or math.isinf(value):
            raise ConfigError(f"option --length-penalty: {part.strip()!r} must be a finite number of at least 0")
        out.append(value)
    return out


@eval_app.command("pairwise")
def pairwise_cmd(
    file: Annotated[
        Path, typer.Argument(help="pairwise data in the Auto-J format (prompt, response 1, response 2, label 0/1/2)")
    ],
    judge: Annotated[
        str,
        typer.Option("--judge", help="a registered judge: scalar (tie threshold searched) or pairwise (both orders)"),
    ],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="a judge option, e.g. --set prompt_format=chat")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="K items spread evenly over the file (model judges on CPU)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Agreement of one judge with human pairwise labels (ties included), Auto-J leaderboard protocol."""
    from bon.cli.progress import RichProgress
    from bon.eval.compare import evaluate_pairwise_file

    start = time.perf_counter()
    with fail_clearly():
        with RichProgress(err_console if as_json else console) as progress:
            r = evaluate_pairwise_file(file, judge, options_from(set_), limit, progress=progress)
    if as_json:
        keys = ("judge", "n", "agreement", "agreement_no_tie", "tie_threshold", "consistency")
        print(json.dumps({k: v for k, v in r.as_json().items() if k in keys}))
        return
    table = Table(title=f"{file}: {r.n} pairs, {r.failed} with a failed judgement", title_justify="left")
    for column in ("judge", "agreement %", "no-tie %", "tie threshold", "held-out %", "consistency %"):
        table.add_column(column, justify="right")
    fmt = lambda x: "—" if x is None else f"{x:.2f}"  # noqa: E731
    table.add_row(
        judge,
        fmt(r.agreement),
        fmt(r.agreement_no_tie),
        fmt(r.tie_threshold),
        fmt(r.heldout_agreement),
        fmt(r.consistency),
    )
    show(table)
    console.print("per group: " + ", ".join(f"{g} {a:.1f}" for g, a in r.groups.items()))
    console.print(f"{time.perf_counter() - start:.1f} s")


@export_app.command("alpaca-eval")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    name: Annotated[str, typer.Option("--name", help="the model name on the leaderboard")],
    out: Annotated[Path, typer.Option("--out", help="where results/ and models_configs/ go")] = Path("."),
    reference_outputs: Annotated[
        Path | None, typer.Option("--reference-outputs", help="local AlpacaEval set (default: the hub)")
    ] = None,
    pretty_name: Annotated[str | None, typer.Option("--pretty-name")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an earlier export of NAME")] = False,
) -> None:
    """results/NAME/model_outputs.json and models_configs/NAME/configs.yaml, checked against the 805 instructions."""
    from bon.eval.export import export_alpaca_eval

    with fail_clearly():
        outputs, config = export_alpaca_eval(run_dir, name, out, reference_outputs, pretty_name, overwrite)
    console.print(f"wrote {outputs} and {config}")


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def start(self, *a):
        pass

    def advance(self, *a):
        pass


@eval_app.command("alpaca-eval")
def alpaca_eval_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory (its model_outputs.json)")],
    version: Annotated[
        int, typer.Option("--version", min=1, max=2, help="1: vs text_davinci_003; 2: vs gpt4_turbo")
    ] = 2,
    annotator: Annotated[
        str | None,
        typer.Option(
            "--annotator", help="alpaca-eval config name (default: the version's), local:MODEL or precomputed:FILE"
        ),
    ] = None,
    reference_outputs: Annotated[
        Path | None, typer.Option("--reference-outputs", help="local baseline outputs (default: the hub)")
    ] = None,
    lc_data: Annotated[Path | None, typer.Option("--lc-data", help="df_gamed.csv, for the LC win rate offline")] = None,
    backend: Annotated[
        str, typer.Option("--backend", help="engine of a local annotator: transformers or vllm")
    ] = "transformers",
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url", help="an OpenAI-compatible server for an official annotator (e.g. http://localhost:8000/v1)"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Annotate a run's outputs against the AlpacaEval baseline and report win rates."""
    from bon.eval.alpaca import run_alpaca_eval

    with fail_clearly():
        result = run_alpaca_eval(run_dir, version, annotator, reference_outputs, lc_data, backend, base_url=base_url)
    w = result.winrate
    if as_json:
        keys = ("win_rate", "standard_error", "discrete_win_rate", "length_controlled_winrate", "n_total")
        print(json.dumps({"annotator": result.annotator, **{k: getattr(w, k) for k in keys}}))
        return
    lc = "n/a" if w.length_controlled_winrate is None else f"{w.length_controlled_winrate:.2f}"
    console.print(
        f"AlpacaEval {version}.0, annotator {result.annotator}: win rate {w.win_rate:.2f} ± {w.standard_error:.2f}, "
        f"discrete {w.discrete_win_rate:.2f}, LC {lc}, n={w.n_total}"
    )
    for line in (w.lc_note, result.note):
        if line:
            console.print(line)


@eval_app.command("gain")
def gain_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    version: Annotated[int, typer.Option("--version", min=1, max=2)] = 2,
    annotator: Annotated[
        str, typer.Option("--annotator", help="alpaca-eval config name, local:MODEL or precomputed:FILE")
    ] = "local:embedded:SmolLM2-135M-Instruct",
    reference_outputs: Annotated[Path | None, typer.Option("--reference-outputs")] = None,
    judge: Annotated[str | None, typer.Option("--judge", help="whose judgements select (default: the run's)")] = None,
    lc_data: Annotated[
        Path | None, typer.Option("--lc-data", help="df_gamed.csv: the LC win rate beside each raw one")
    ] = None,
) -> None:
    """Win rate of best-of-k for k = 1, 2, 4, ..., N from one run, with bootstrap CIs, PNG and markdown."""
    from bon.eval.gain import gain_report, summary_lines

    with fail_clearly():
        report = gain_report(run_dir, version, annotator, reference_outputs, judge, lc_data=lc_data)
    for line in summary_lines(report):
        console.print(line, markup=False, highlight=False)
    console.print(f"wrote {report.markdown} (the full table) and {report.png}")


@export_app.command("mt-bench")
def export_mt_bench_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a finished run on MT-Bench questions")],
    model_id: Annotated[str, typer.Option("--model-id", help="the model name FastChat shows (and the file's name)")],
    out: Annotated[
        Path, typer.Option("--out", help="FastChat's data/mt_bench directory, or any; model_answer/ goes in it")
    ] = Path("."),
    ratings: Annotated[
        str | None,
        typer.Option(
            "--ratings", help="also write this judge label's ratings of the kept answers as FastChat judgments"
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace an earlier export of MODEL_ID whole (stale ratings too)")
    ] = False,
) -> None:
    """OUT/model_answer/MODEL_ID.jsonl in FastChat's model-answer format, for gen_judgment.py and show_result.py."""
    from bon.eval.mt_bench_run import export_answers

    with fail_clearly():
        path, rows, judged = export_answers(run_dir, model_id, out, ratings, overwrite)
    console.print(f"wrote {rows} answers (every turn's kept answer) to {path}")
    if judged:
        console.print(f"wrote {ratings}'s ratings of them to {judged} (show_result.py --judge-model {ratings})")


@eval_app.command("mt-bench")
def mt_bench_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a finished run on MT-Bench questions")],
    judge: Annotated[
        str, typer.Option("--judge", help="whose ratings to read (a judge label in the run)")
    ] = "mt_bench",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="first rate the candidates with the mt_bench judge and these options"),
    ] = None,
) -> None:
    """Mean MT-Bench rating per turn and category (as show_result.py), and best-of-k per turn with CIs and a PNG."""
    from bon.cli.progress import RichProgress
    from bon.eval.mt_bench_run import fmt_rating as fmt
    from bon.eval.mt_bench_run import gain_rows, mt_bench_report
    from bon.pipeline.rejudge import judge_run

    with fail_clearly(writes=run_dir):
        if set_:
            with RichProgress(console) as progress:
                judge_run(run_dir, "mt_bench", options_from(set_), judge, progress, allow_unjudged=True)
        report = mt_bench_report(run_dir, judge)
    turns = Table(title=f"MT-Bench ratings of the kept answers ({report.score_judge})")
    for column in ("turn", "score"):
        turns.add_column(column, justify="right")
    for turn, score in report.by_turn.items():
        turns.add_row(str(turn), fmt(score))
    turns.add_row("average", fmt(report.average))
    categories = Table(title="per category (both turns)")
    for column in ("category", "score"):
        categories.add_column(column, justify="right")
    for name, score in report.by_category.items():
        categories.add_row(name, fmt(score))
    gain = Table(title=f"best-of-k, picked by {report.run_judge}, N={report.n}, {report.questions} questions")
    for column in ("turn", "k", "mean rating", "95% CI", "gain over k=1", "rated", "unrated"):
        gain.add_column(column, justify="right")
    for row in gain_rows(report):
        gain.add_row(*row)
    for table in (turns, categories, gain):
        show(table)
    if report.note:
        console.print(f"note: {report.note}")
    console.print(f"wrote {report.markdown} and {report.png}")

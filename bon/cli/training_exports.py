"""`bon export preferences` and `bon export sft` (registered on `bon export` by `bon.cli.main`): a run's candidates
as training data in TRL's formats."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from bon.cli.common import console, fail_clearly

RunDirArg = Annotated[Path, typer.Argument(help="a finished run directory")]
OutOpt = Annotated[Path, typer.Option("--out", help="the dataset folder to write (new, or empty)")]
JudgeOpt = Annotated[
    str | None, typer.Option("--judge", help="whose scores (a judge label; default: the run's selecting judge)")
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="replace bon's earlier export of this kind at --out")]
PushOpt = Annotated[str | None, typer.Option("--push-to-hub", help="also upload it as this dataset repo (user/name)")]
TruncOpt = Annotated[
    bool, typer.Option("--keep-truncated", help="also use candidates cut at max_tokens (left out by default)")
]
IdsOpt = Annotated[bool, typer.Option("--token-ids", help="add the answers' token ids as the policy sampled them")]
DeclineOpt = Annotated[
    float | None, typer.Option("--decline-below", help="select afresh: decline prompts whose best is below this")
]
CoverageOpt = Annotated[float | None, typer.Option("--coverage", help="select afresh: answer this share of prompts")]
PenaltyOpt = Annotated[
    float | None, typer.Option("--length-penalty", help="select afresh: pick by z(score) - λ z(length)")
]
TieOpt = Annotated[str | None, typer.Option("--tie-break", help="select afresh: lowest_index, details:KEY, judge:NAME")]


def _selection(decline_below: float | None, coverage: float | None, penalty: float | None, tie: str | None) -> dict:
    """`bon select`'s options given to an export: it picks afresh in memory (the run's selections stay)."""
    return {"decline_below": decline_below, "coverage": coverage, "length_penalty": penalty, "tie_break": tie}


def _report(done: Any, push: str | None) -> None:
    from bon.eval.training import push_to_hub

    left = "; ".join(f"{n} {why}" for why, n in done.left_out.items()) or "nothing"
    console.print(
        f"wrote {done.rows} rows from {done.prompts} prompts to {done.path} (left out: {left})", highlight=False
    )
    console.print(f"selection: {done.selection}", highlight=False)
    if done.with_truncated:
        console.print(f"--keep-truncated would give {done.with_truncated} rows", highlight=False)
    if push:
        with fail_clearly():
            console.print(f"pushed to {push_to_hub(done.path, push)}")


def preferences_cmd(
    run_dir: RunDirArg,
    out: OutOpt,
    judge: JudgeOpt = None,
    strategy: Annotated[
        str, typer.Option("--strategy", help="best-worst, best-random (seeded) or margin (every pair)")
    ] = "best-worst",
    margin: Annotated[float, typer.Option("--margin", help="the least score difference of a pair")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="best-random: the seed of the rejected picks")] = 0,
    max_length_ratio: Annotated[
        float | None, typer.Option("--max-length-ratio", help="drop pairs whose chosen is over R times longer")
    ] = None,
    format_: Annotated[
        str, typer.Option("--format", help="conversational (message lists) or standard (strings)")
    ] = "conversational",
    keep_truncated: TruncOpt = False,
    token_ids: IdsOpt = False,
    decline_below: DeclineOpt = None,
    coverage: CoverageOpt = None,
    length_penalty: PenaltyOpt = None,
    tie_break: TieOpt = None,
    overwrite: OverwriteOpt = False,
    push_to_hub: PushOpt = None,
) -> None:
    """Preference pairs (prompt, chosen, rejected) for DPO and reward-model training, as a Hugging Face dataset."""
    from bon.api import Run

    with fail_clearly():
        done = Run(run_dir).export_preferences(
            out,
            judge,
            overwrite,
            _selection(decline_below, coverage, length_penalty, tie_break),
            strategy=strategy,
            margin=margin,
            seed=seed,
            max_length_ratio=max_length_ratio,
            format=format_,
            keep_truncated=keep_truncated,
            token_ids=token_ids,
        )
    _report(done, push_to_hub)


def sft_cmd(
    run_dir: RunDirArg,
    out: OutOpt,
    judge: JudgeOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", help="rows per prompt: the kept answer (1) or the k best")] = 1,
    min_score: Annotated[float | None, typer.Option("--min-score", help="leave out answers below this")] = None,
    format_: Annotated[
        str, typer.Option("--format", help="messages (one conversation) or prompt-completion")
    ] = "messages",
    keep_truncated: TruncOpt = False,
    token_ids: IdsOpt = False,
    decline_below: DeclineOpt = None,
    coverage: CoverageOpt = None,
    length_penalty: PenaltyOpt = None,
    tie_break: TieOpt = None,
    overwrite: OverwriteOpt = False,
    push_to_hub: PushOpt = None,
) -> None:
    """Rejection-sampling SFT rows (the kept answer per prompt, or the k best), as a Hugging Face dataset."""
    from bon.api import Run

    with fail_clearly():
        selection = _selection(decline_below, coverage, length_penalty, tie_break)
        options = {
            "top_k": top_k,
            "min_score": min_score,
            "format": format_,
            "keep_truncated": keep_truncated,
            "token_ids": token_ids,
        }
        done = Run(run_dir).export_sft(out, judge, overwrite, selection, **options)
    _report(done, push_to_hub)

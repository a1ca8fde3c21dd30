"""Win-rate gain of best-of-N over plain sampling, from one run, without regenerating anything.

For k = 1, 2, 4, ..., N the selection is redone over the first k candidates of every prompt with
the run's judgements. The union of all picked outputs is annotated once (cached), every k is then
read from those annotations. Confidence intervals: bootstrap over prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from bon.core.records import Judgement, by_key
from bon.core.rundir import RunDirError, load_run
from bon.engines.base import derive_seed
from bon.pipeline.rejudge import judgements_of, run_candidates
from bon.pipeline.selection import char_lengths, secondary_judge, select_all
from eval.ae import winrate
from eval.alpaca import annotations_for, match_baseline, reference_rows
from eval.annotations import Annotation


@dataclass(frozen=True)
class GainPoint:
    label: str  # "k=4", "random candidate"
    k: int | None
    win_rate: float | None  # over answered prompts, percent
    ci_low: float | None
    ci_high: float | None
    answered: int
    declined: int


@dataclass(frozen=True)
class GainReport:
    judge: str
    annotator: str
    n: int
    prompts: int
    points: list[GainPoint]
    note: str | None
    png: Path
    markdown: Path


def ks_for(n: int) -> list[int]:
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def bootstrap(wins: list[float], rounds: int, seed: int, scale: float = 100.0) -> tuple[float | None, float | None]:
    """95% percentile interval of the mean (times ``scale``: percent of a win by default), resampling prompts."""
    if not wins:
        return None, None
    rng = random.Random(seed)
    means = sorted(scale * sum(rng.choices(wins, k=len(wins))) / len(wins) for _ in range(rounds))
    return means[int(0.025 * rounds)], means[min(rounds - 1, int(0.975 * rounds))]


def gain_report(
    run_dir: Path,
    version: int = 2,
    annotator: str = "local:embedded:SmolLM2-135M-Instruct",
    reference_outputs: Path | None = None,
    judge_label: str | None = None,
    rounds: int = 1000,
    seed: int = 0,
) -> GainReport:
    rd, manifest, config = load_run(run_dir)
    prompts, cands, _ = run_candidates(rd, config)  # skipped prompts were never sampled
    if any(p.history or p.later_turns for p in prompts):
        raise RunDirError(
            f"{rd.path} holds conversations, which AlpacaEval's single-turn annotators cannot judge in context; "
            f"use `bon eval mt-bench {rd.path}`"
        )
    label = judge_label or manifest.get("selected_with", {}).get("judge") or config.judge.name
    all_j = rd.read(Judgement)
    judged = judgements_of(rd, all_j, label, prompts, config.n)
    other = secondary_judge(config.selection.tie_break)
    secondary = by_key(all_j, other) if other else None
    n = config.n

    picks: dict[str, dict] = {}  # label -> prompt id -> candidate index or None (declined)
    for k in ks_for(n):
        made = select_all(
            [(p.id, [judged[(p.id, i)] for i in range(k)], char_lengths(cands[p.id])) for p in prompts],
            config.selection,
            secondary,
        )
        picks[f"k={k}"] = {s.prompt_id: s.chosen_index for s in made}
    picks["random candidate"] = {p.id: random.Random(derive_seed(seed, p.id)).randrange(n) for p in prompts}

    rows = [
        {"instruction": p.instruction, "output": cands[p.id][i].text, "generator": f"bo-{i}", "dataset": p.dataset}
        for p in prompts
        for i in sorted({pk[p.id] for pk in picks.values() if pk[p.id] is not None})
    ]
    baseline = match_baseline(rows, reference_rows(version, reference_outputs), rd.path / "candidates.jsonl")
    pairs = list(zip(baseline, rows))
    annotations, note = annotations_for(
        pairs, annotator, rd.path / "alpaca_eval" / f"v{version}", config.policy.backend
    )
    verdict: dict[tuple[str, str], Annotation] = {(a.instruction, a.output_2): a for a in annotations}

    points = []
    for name, chosen in picks.items():
        rows_k = [verdict[(p.instruction, cands[p.id][chosen[p.id]].text)] for p in prompts if chosen[p.id] is not None]
        usable = [a for a in rows_k if a.preference is not None]
        rate = float(winrate(usable)["win_rate"]) if usable else None
        low, high = bootstrap([a.win() or 0.0 for a in usable], rounds, seed)  # usable: rated, so win() is set
        size = int(name[2:]) if name.startswith("k=") else None
        points.append(GainPoint(name, size, rate, low, high, len(rows_k), sum(c is None for c in chosen.values())))

    out = rd.path / "gain"
    out.mkdir(exist_ok=True)
    report = GainReport(label, annotator, n, len(prompts), points, note, out / "gain.png", out / "gain.md")
    _plot(report)
    _markdown(report)
    return report


def _plot(report: GainReport) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    curve = [p for p in report.points if p.k is not None and p.win_rate is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p.k for p in curve], [p.win_rate for p in curve], marker="o", label=f"best-of-k ({report.judge})")
    ax.fill_between(
        [p.k for p in curve], [p.ci_low for p in curve], [p.ci_high for p in curve], alpha=0.2, label="95% bootstrap CI"
    )
    if curve:
        ax.axhline(curve[0].win_rate, color="grey", linestyle="--", label="N=1 (plain sampling)")
    rnd = next((p for p in report.points if p.k is None and p.win_rate is not None), None)
    if rnd:
        ax.axhline(rnd.win_rate, color="orange", linestyle=":", label="random candidate")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (candidates considered)")
    ax.set_ylabel("win rate vs baseline (%)")
    ax.set_title(f"Best-of-k gain, {report.prompts} prompts, annotator {report.annotator}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(report.png, dpi=120)
    plt.close(fig)


def _markdown(report: GainReport) -> None:
    fmt = lambda x: "—" if x is None else f"{x:.2f}"  # noqa: E731
    lines = [
        f"# Best-of-N gain: judge `{report.judge}`, N={report.n}, {report.prompts} prompts",
        "",
        f"Annotator: `{report.annotator}`." + (f" **{report.note}.**" if report.note else ""),
        "",
        "| selection | win rate % | 95% CI | answered | declined | coverage % |",
        "|---|---|---|---|---|---|",
    ]
    for p in report.points:
        coverage = 100 * p.answered / max(1, p.answered + p.declined)
        lines.append(
            f"| {p.label} | {fmt(p.win_rate)} | {fmt(p.ci_low)}–{fmt(p.ci_high)} "
            f"| {p.answered} | {p.declined} | {coverage:.1f} |"
        )
    lines += [
        "",
        "Win rates are over answered prompts; declined prompts are counted apart (coverage).",
        "",
        f"![gain]({report.png.name})",
    ]
    report.markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")

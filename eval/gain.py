"""Win-rate gain of best-of-N over plain sampling, from one run, without regenerating anything.

For k = 1, 2, 4, ..., N the selection is redone over the first k candidates of every prompt with
the run's judgements. The union of all picked outputs is annotated once (cached), every k is then
read from those annotations. Confidence intervals: bootstrap over prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from bon.core.records import Candidate, Judgement, by_key
from bon.core.rundir import RunDirError, load_run
from bon.engines.contract import derive_seed
from bon.eval.ae import full_winrate, winrate
from bon.eval.alpaca import annotations_for, check_annotator, match_baseline, reference_rows
from bon.eval.annotations import Annotation
from bon.eval.metrics import TOO_FEW, PairedGain, ci_text, paired_gain
from bon.pipeline.rejudge import judgements_of, run_candidates
from bon.pipeline.selection import char_lengths, secondary_judge, select_all


@dataclass(frozen=True)
class GainPoint:
    label: str  # "k=4", "random candidate"
    k: int | None
    win_rate: float | None  # over answered prompts, percent
    ci_low: float | None
    ci_high: float | None
    answered: int
    declined: int
    mean_length: float | None = None  # characters of the answers picked
    vs_first: PairedGain | None = None  # win rate minus k=1's, paired over the prompts both answered (k > 1)
    vs_random: PairedGain | None = None  # minus the random candidate's, paired the same way
    lc_win_rate: float | None = None  # alpaca-eval's length-controlled win rate, when --lc-data is given


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
    baseline_length: float | None = None  # characters of the baseline's answers to the same prompts
    lc_note: str | None = None  # why no length-controlled win rate is shown, when one was asked for
    vs_length_matched: PairedGain | None = None  # best-of-N minus the length-matched random pick (pp, paired)


RANDOM = "random candidate"
LENGTH_MATCHED = "length-matched random"


def length_matched_picks(
    best: dict[str, int | None], cands: dict[str, dict[int, Candidate]], seed: int
) -> dict[str, int | None]:
    """Per prompt of ``best``, a candidate at a length rank (longest first, ties by index) drawn, seeded, from the
    ranks of ``best``'s picks: how long the judge's picks are, without which answer it chose."""
    order = {pid: sorted(cands[pid], key=lambda i: (-len(cands[pid][i].text), i)) for pid in best}
    ranks = [order[pid].index(i) for pid, i in best.items() if i is not None]
    if not ranks:
        return dict.fromkeys(best)
    return {pid: order[pid][random.Random(derive_seed(seed, f"length:{pid}")).choice(ranks)] for pid in best}


def _paired(picked: dict[str, float], reference: dict[str, float], rounds: int, seed: int) -> PairedGain:
    """``picked`` minus ``reference`` over the prompts both rated."""
    common = [pid for pid in picked if pid in reference]
    return paired_gain([picked[p] for p in common], [reference[p] for p in common], rounds, seed)


def ks_for(n: int) -> list[int]:
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def bootstrap(wins: list[float], rounds: int, seed: int, scale: float = 100.0) -> tuple[float | None, float | None]:
    """95% percentile interval of the mean (times ``scale``: percent of a win by default), resampling prompts;
    (None, None) under `TOO_FEW` prompts."""
    if len(wins) < TOO_FEW:
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
    lc_data: Path | None = None,
) -> GainReport:
    check_annotator(annotator)
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
    picks[RANDOM] = {p.id: random.Random(derive_seed(seed, p.id)).randrange(n) for p in prompts}
    picks[LENGTH_MATCHED] = length_matched_picks(picks[f"k={n}"], cands, seed)

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

    by_id = {p.id: p for p in prompts}
    texts = {
        name: {p.id: cands[p.id][chosen[p.id]].text for p in prompts if chosen[p.id] is not None}
        for name, chosen in picks.items()
    }
    rated = {
        name: {pid: verdict[(by_id[pid].instruction, text)] for pid, text in picked.items()}
        for name, picked in texts.items()
    }
    wins = {  # label -> prompt id -> win of its rated pick
        name: {pid: a.win() or 0.0 for pid, a in rows.items() if a.preference is not None}
        for name, rows in rated.items()
    }
    points = []
    lc_notes: set[str] = set()
    for name, chosen in picks.items():
        usable = [a for a in rated[name].values() if a.preference is not None]
        rate = float(winrate(usable)["win_rate"]) if usable else None
        lc = full_winrate(usable, lc_data=lc_data) if usable and lc_data is not None else None
        if lc is not None and lc.lc_note:
            lc_notes.add(lc.lc_note)
        low, high = bootstrap(list(wins[name].values()), rounds, seed)
        size = int(name[2:]) if name.startswith("k=") else None
        length = sum(map(len, texts[name].values())) / len(texts[name]) if texts[name] else None
        vs_first, vs_random = (
            _paired(wins[name], wins[ref], rounds, seed) if name != ref else None for ref in ("k=1", RANDOM)
        )
        declined = sum(c is None for c in chosen.values())
        lc_rate = lc.length_controlled_winrate if lc is not None else None
        points.append(
            GainPoint(name, size, rate, low, high, len(rated[name]), declined, length, vs_first, vs_random, lc_rate)
        )

    out = rd.path / "gain"
    out.mkdir(exist_ok=True)
    answers = {b["instruction"]: b["output"] for b in baseline}  # one per prompt
    baseline_length = sum(map(len, answers.values())) / len(answers) if answers else None
    files = (out / "gain.png", out / "gain.md")
    lc_note = "; ".join(sorted(lc_notes)) or None
    matched = _paired(wins[f"k={n}"], wins[LENGTH_MATCHED], rounds, seed)
    report = GainReport(label, annotator, n, len(prompts), points, note, *files, baseline_length, lc_note, matched)
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
    band = [p for p in curve if p.ci_low is not None and p.ci_high is not None]  # none under TOO_FEW prompts
    if band:
        ax.fill_between(
            [p.k for p in band],
            [p.ci_low for p in band],
            [p.ci_high for p in band],
            alpha=0.2,
            label="95% bootstrap CI",
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
    said = lambda g: "—" if g is None else g.said()  # noqa: E731
    show_lc = any(p.lc_win_rate is not None for p in report.points)
    header = ["selection", "win rate %", *(["LC win rate %"] if show_lc else []), "95% CI", "vs k=1 (pp)"]
    header += ["vs random (pp)", "mean length", "answered", "declined", "coverage %"]
    lines = [
        f"# Best-of-N gain: judge `{report.judge}`, N={report.n}, {report.prompts} prompts",
        "",
        f"Annotator: `{report.annotator}`." + (f" **{report.note}.**" if report.note else ""),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for p in report.points:
        coverage = 100 * p.answered / max(1, p.answered + p.declined)
        size = "—" if p.mean_length is None else f"{p.mean_length:.0f}"
        cells = [p.label, fmt(p.win_rate), *([fmt(p.lc_win_rate)] if show_lc else [])]
        cells += [ci_text(p.ci_low, p.ci_high, p.answered, 2), said(p.vs_first), said(p.vs_random), size]
        cells += [str(p.answered), str(p.declined), f"{coverage:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    baseline = "—" if report.baseline_length is None else f"{report.baseline_length:.0f}"
    lines += [
        "",
        "Win rates are over answered prompts; declined prompts are counted apart (coverage). Gains are paired over "
        "the prompts both selections answered: bootstrap 95% CI over prompts and p-value; a CI that crosses 0 is "
        f"not significant. Mean length in characters; the baseline's answers: {baseline}. {LENGTH_MATCHED}: per "
        f"prompt a candidate at a length rank drawn from the k={report.n} picks' ranks (their length, not their "
        "choice); "
        + (f"k={report.n} over it: {report.vs_length_matched.said()}." if report.vs_length_matched else "")
        + (f" {report.lc_note[0].upper()}{report.lc_note[1:]}." if report.lc_note else ""),
        "",
        f"![gain]({report.png.name})",
    ]
    report.markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")


def summary_lines(report: GainReport) -> list[str]:
    """What `bon eval gain` prints: each selection's win rate, CI and mean length; the best-of-N gains (gain.md holds
    the full table)."""
    fmt = lambda x: "—" if x is None else f"{x:.1f}"  # noqa: E731
    lines = [f"best-of-k by {report.judge}, {report.prompts} prompts, annotator {report.annotator}:"]
    for p in report.points:
        size = "" if p.mean_length is None else f", mean length {p.mean_length:.0f}"
        lines.append(f"  {p.label}: win rate % {fmt(p.win_rate)} {ci_text(p.ci_low, p.ci_high, p.answered)}{size}")
    best = next((p for p in report.points if p.k == report.n), None)
    if best is not None and best.vs_first is not None:
        lines.append(f"k={report.n} over k=1 (pp): {best.vs_first.said()}")
    if report.vs_length_matched is not None:
        lines.append(f"k={report.n} over a length-matched random pick (pp): {report.vs_length_matched.said()}")
    if report.note:
        lines.append(f"note: {report.note}")
    return lines

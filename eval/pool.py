"""A judge as best-of-N selector on released annotations: every candidate's verdict is known.

A folder of per-model alpaca-eval annotation files over the same instructions is a candidate pool:
for each instruction the judge picks one model's output, and the win rate of the picks is read from
the annotations with alpaca-eval's own metric. Reference points: random pick (the mean over models,
i.e. the expected win rate of a uniformly random pick), longest output, best single model, oracle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from bon.core.config import Strict
from bon.core.io import DataFileError
from bon.core.outputs import replace_folder
from bon.core.prompts import prompt_id
from bon.core.records import Candidate, Judgement, Key, Prompt, Selection
from bon.eval.ae import full_winrate, winrate
from bon.eval.annotations import Annotation, read_annotations
from bon.eval.metrics import PairedGain, bootstrap_ci, paired_gain, risk_at_coverages
from bon.pipeline.executors import LocalExecutor
from bon.pipeline.scoring import score_missing
from bon.pipeline.selection import select


class PoolOptions(Strict):
    """The options of `bon eval select-pool`, checked like any config."""

    limit: int | None = Field(None, ge=1, description="only the first K instructions (model judges on CPU)")
    reference: Literal["baseline", "none"] = Field(
        "baseline", description="baseline: the baseline output is the judge's reference; none"
    )


@dataclass(frozen=True)
class Pool:
    models: list[str]  # one per annotation file, sorted by name; a candidate's index is its model's
    instructions: list[str]  # those where every file holds a preference, in file order
    table: dict[str, list[Annotation]]  # instruction -> one annotation per model
    dropped: dict[str, int] = field(default_factory=dict)  # file -> instructions of the pool it lacks

    def note(self) -> str | None:
        """Which files made the pool smaller (released v1/v2 files hold 803 to 805 rows)."""
        if not self.dropped:
            return None
        lacking = ", ".join(f"{m} lacks {k}" for m, k in sorted(self.dropped.items()))
        return f"{sum(self.dropped.values())} instruction slots not in every file were dropped ({lacking})"

    def prompts(self, reference: str = "baseline") -> list[Prompt]:
        """One prompt per instruction; with reference=baseline the baseline's output is the reference."""
        if reference not in ("baseline", "none"):
            raise ValueError(f"reference must be 'baseline' or 'none', got {reference!r}")
        return [
            Prompt(
                prompt_id(q),
                q,
                self.table[q][0].dataset,
                self.table[q][0].output_1 if reference == "baseline" else None,
            )
            for q in self.instructions
        ]

    def restrict(self, instructions: list[str]) -> Pool:
        """The same pool over fewer instructions (a judge's subset)."""
        return Pool(self.models, list(instructions), {q: self.table[q] for q in instructions}, self.dropped)

    def candidates(self, q: str) -> list[Candidate]:
        return [
            Candidate(prompt_id(q), i, a.output_2, None, 0, 0, "stop", a.generator_2)
            for i, a in enumerate(self.table[q])
        ]


def _one_per_instruction(rows: list[Annotation], path: Path) -> list[Annotation]:
    """A model's annotations, an identical repeat merged; two different rows for one instruction are an error."""
    first: dict[str, int] = {}
    out = []
    for i, a in enumerate(rows):
        if a.instruction not in first:
            first[a.instruction] = i
            out.append(a)
        elif rows[first[a.instruction]] != a:
            raise DataFileError(
                path,
                None,
                f"row {i}: instruction {a.instruction[:60]!r} is also row {first[a.instruction]}, with another output "
                "or preference; a pool counts each instruction once, keep one of the two rows",
            )
    return out


def load_pool(folder: Path | str, limit: int | None = None) -> Pool:
    folder = Path(folder)
    files = sorted(folder.glob("*.json"))
    if len(files) < 2:
        raise DataFileError(
            folder, None, "a pool needs at least two annotation files (*.json) over the same instructions"
        )
    per_model = {f.stem: _one_per_instruction(read_annotations(f), f) for f in files}
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    by_model = {m: {a.instruction: a for a in rows} for m, rows in per_model.items()}
    union = set().union(*by_model.values())
    common = set.intersection(*(set(rows) for rows in by_model.values()))
    if not common:
        raise DataFileError(folder, None, "its annotation files share no instruction")
    dropped = {m: len(union) - len(rows) for m, rows in by_model.items() if len(rows) < len(union)}
    models = list(per_model)
    order = [a.instruction for a in per_model[files[0].stem] if a.instruction in common]
    keep = [q for q in order if all(by_model[m][q].preference is not None for m in models)]
    if not keep:
        raise DataFileError(
            folder, None, "no instruction has a preference in every annotation file: nothing to select among"
        )
    if limit:
        keep = keep[:limit]
    return Pool(models, keep, {q: [by_model[m][q] for m in models] for q in keep}, dropped)


COVERAGES = (1.0, 0.9, 0.8, 0.5)  # where risk is reported beside AURC


@dataclass(frozen=True)
class PoolReport:
    judge: str
    n_instructions: int
    win_rate: float
    reference_points: dict[str, float]
    best_single_model: str
    picks: dict[str, int] = field(default_factory=dict)  # model -> how often the judge picked it
    failed: int = 0  # instructions whose candidates could not be judged at all
    selections: list[Selection] = field(default_factory=list)  # one per instruction, in pool order
    length_penalty: float = 0.0  # λ of the picks
    win_rate_ci: tuple[float, float] | None = None  # bootstrap over instructions
    vs_random: PairedGain | None = None  # the picks' win rate minus a random pick's, paired by instruction
    vs_length_matched: PairedGain | None = None  # minus a random pick with the picks' length ranks (`length_matched`)
    lengths: dict[str, float] = field(default_factory=dict)  # mean characters: picks, random, longest, baseline
    risk: dict[float, tuple[float, tuple[float, float] | None]] = field(default_factory=dict)  # coverage -> risk, CI
    lc_win_rate: float | None = None  # alpaca-eval's length-controlled win rate of the picks (with lc_data)
    lc_note: str | None = None  # why it is missing, when it was asked for

    def as_json(self) -> dict[str, Any]:
        keep = {"judge", "n_instructions", "win_rate", "reference_points", "length_penalty", "win_rate_ci", "lengths"}
        keep |= {"lc_win_rate", "lc_note"}
        out = {k: v for k, v in asdict(self).items() if k in keep}
        for key, gain in (("vs_random", self.vs_random), ("vs_length_matched", self.vs_length_matched)):
            if gain is not None:
                out[key] = {**asdict(gain), "significant": gain.significant}
        out["risk_at_coverage"] = {f"{c:g}": {"risk": r, "ci": ci} for c, (r, ci) in self.risk.items()}
        return out


def _rate(rows: Sequence[Annotation]) -> float:
    return float(winrate(rows)["win_rate"])


def _wins(rows: Sequence[Annotation]) -> list[float]:
    """Each row's win as alpaca-eval counts it (a draw is half); an unrated row is no win."""
    return [a.win() or 0.0 for a in rows]


def reference_points(pool: Pool) -> tuple[dict[str, float], str]:
    per_model = {m: _rate([pool.table[q][i] for q in pool.instructions]) for i, m in enumerate(pool.models)}
    longest = [max(pool.table[q], key=lambda a: len(a.output_2)) for q in pool.instructions]  # first on ties
    oracle = [max(pool.table[q], key=lambda a: a.win() or 0.0) for q in pool.instructions]  # unrated: no win
    best = max(per_model, key=lambda m: per_model[m])
    points = {
        "random": sum(per_model.values()) / len(per_model),
        "longest": _rate(longest),
        "best_single": per_model[best],
        "oracle": _rate(oracle),
    }
    return points, best


def evaluate_selector(
    pool: Pool,
    judge,
    reference: str = "baseline",
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[PoolReport, list[Judgement]]:
    """The judge's picks over the pool, their win rate, and every judgement it made."""
    prompts = pool.prompts(reference)
    judged: dict[Key, Judgement] = {}
    batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    score_missing(
        LocalExecutor(judge),
        batches,
        lambda p: pool.candidates(p.instruction),
        judged,
        judge.name,
        lambda batch, _: on_batch(len(batch)) if on_batch else None,
    )
    judgements = list(judged.values())
    return picks_report(pool, judge.name, judgements), judgements


def picks_report(
    pool: Pool,
    name: str,
    judgements: Sequence[Judgement],
    length_penalty: float = 0.0,
    reps: int = 1000,
    seed: int = 0,
    lc_data: Path | None = None,
) -> PoolReport:
    """The win rate of one pick per instruction (best score, or length-penalised with ``length_penalty``; lowest
    index on ties), how sure it is against a random pick, the lengths picked, risk at coverages, and the pool's
    reference points."""
    by_prompt: dict[str, list[Judgement]] = {}
    for j in judgements:
        by_prompt.setdefault(j.prompt_id, []).append(j)
    # no threshold: an all-failed prompt keeps candidate 0
    selections = [
        select(prompt_id(q), by_prompt[prompt_id(q)], None, None, _lengths(pool, q), length_penalty)
        for q in pool.instructions
    ]
    chosen_index = [s.chosen_index if s.chosen_index is not None else 0 for s in selections]  # never declined here
    picks = {m: 0 for m in pool.models}
    for i in chosen_index:
        picks[pool.models[i]] += 1
    chosen = [pool.table[q][i] for q, i in zip(pool.instructions, chosen_index)]
    failed = sum(s.score is None for s in selections)
    points, best = reference_points(pool)
    wins = _wins(chosen)
    random_wins = [sum(_wins(pool.table[q])) / len(pool.models) for q in pool.instructions]
    matched_wins = length_matched(pool, chosen_index)
    n = len(wins)
    lengths = {
        "picks": _mean_len(a.output_2 for a in chosen),
        "random": _mean_len(a.output_2 for q in pool.instructions for a in pool.table[q]),
        "longest": _mean_len(max((a.output_2 for a in pool.table[q]), key=len) for q in pool.instructions),
        "baseline": _mean_len(pool.table[q][0].output_1 for q in pool.instructions),
    }
    return PoolReport(
        name,
        n,
        _rate(chosen),
        points,
        best,
        picks,
        failed,
        selections,
        length_penalty,
        bootstrap_ci(lambda idx: float(np.mean([wins[i] for i in idx])) * 100, n, reps, seed),
        paired_gain(wins, random_wins, reps, seed),
        paired_gain(wins, matched_wins, reps, seed),
        lengths,
        risk_at_coverages([s.score for s in selections], wins, COVERAGES, reps, seed),
        *(_lc(chosen, lc_data) if lc_data is not None else (None, None)),
    )


def _lc(chosen: Sequence[Annotation], lc_data: Path) -> tuple[float | None, str | None]:
    """(alpaca-eval's length-controlled win rate of the picks, or None and why not)."""
    rate = full_winrate(chosen, lc_data=lc_data)
    return rate.length_controlled_winrate, rate.lc_note


def _length_ranks(pool: Pool, q: str) -> list[int]:
    """Each candidate's rank by length among its instruction's (0: the longest; ties by index)."""
    order = sorted(range(len(pool.models)), key=lambda i: (-len(pool.table[q][i].output_2), i))
    return [order.index(i) for i in range(len(pool.models))]


def length_matched(pool: Pool, chosen_index: Sequence[int]) -> list[float]:
    """Per instruction, the expected win of a random pick whose length rank follows the picks' distribution.

    The picks' length ranks (the longest, the 2nd longest, ...) are shuffled across instructions: each
    instruction's expected win is the mean, over the picks' ranks, of its own candidate at that rank. It keeps how
    long the judge's picks are and drops which answer it chose, so the picks' gain over it is what the judge
    knows beyond its length preference (the length judge's own gain over it is 0).
    """
    ranked = {q: _length_ranks(pool, q) for q in pool.instructions}
    picked = [ranked[q][i] for q, i in zip(pool.instructions, chosen_index)]
    share = [picked.count(r) / len(picked) for r in range(len(pool.models))]
    out = []
    for q in pool.instructions:
        at_rank = {r: a for r, a in zip(ranked[q], pool.table[q])}
        out.append(sum(share[r] * (at_rank[r].win() or 0.0) for r in range(len(pool.models))))
    return out


def _lengths(pool: Pool, q: str) -> dict[int, int]:
    return {i: len(a.output_2) for i, a in enumerate(pool.table[q])}


def _mean_len(texts: Iterable[str]) -> float:
    sizes = [len(t) for t in texts]
    return sum(sizes) / len(sizes) if sizes else 0.0


def length_sweep(
    pool: Pool, name: str, judgements: Sequence[Judgement], penalties: Sequence[float], lc_data: Path | None = None
) -> list[PoolReport]:
    """The picks' report at each length penalty λ (one judging, many picks): win rate against mean pick length."""
    return [picks_report(pool, name, judgements, lam, lc_data=lc_data) for lam in penalties]


def gains(report: PoolReport) -> list[str]:
    """The report's gains, CIs, lengths and risks in sentences (the markdown and the console say the same)."""
    lines = []
    if report.vs_random is not None:
        lines.append(f"vs a random pick (paired bootstrap over instructions, pp): {report.vs_random.said()}")
    if report.vs_length_matched is not None:
        lines.append(
            "vs a random pick with the picks' length ranks (what the judge knows beyond length, pp): "
            + report.vs_length_matched.said()
        )
    sizes = report.lengths
    if sizes:
        lines.append(
            f"mean length (characters): picks {sizes['picks']:.0f}, random pick {sizes['random']:.0f}, "
            f"longest {sizes['longest']:.0f}, baseline {sizes['baseline']:.0f}"
        )
    if report.risk:
        lines.append(
            "risk (1 - win) at coverage, declining the lowest pick scores: "
            + "; ".join(
                f"{c:.0%} {r:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
                for c, (r, ci) in report.risk.items()
            )
        )
    return lines


REPORT = "select-pool report"  # the kind of an --out folder: bon redoes its own report there, and nothing else


def write_reports(reports: Sequence[PoolReport], folder: Path, out: Path, describe: str) -> list[Path]:
    """The report folder ``out``: select_pool.md/.png, and length_sweep.md/.png for a sweep of λ. An earlier
    report of bon's there is replaced whole; a folder holding anything else is refused (`bon.core.outputs`)."""
    with replace_folder(out, REPORT, overwrite=True, reading=[folder], flag="") as tmp:
        written = list(write_report(reports[0], folder, tmp, describe))
        written += list(write_sweep(reports, tmp)) if len(reports) > 1 else []
    return [out / path.name for path in written]


def write_report(report: PoolReport, folder: Path, out: Path, describe: str) -> tuple[Path, Path]:
    """select_pool.md (a table a researcher can paste) and select_pool.png (a bar chart)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rows = [(f"{report.judge}", report.win_rate)] + [
        (label, report.reference_points[key])
        for key, label in (
            ("random", "random pick"),
            ("longest", "longest"),
            ("best_single", f"best single ({report.best_single_model})"),
            ("oracle", "oracle"),
        )
    ]
    md = out / "select_pool.md"
    md.write_text(
        "\n".join(
            [
                f"# Selector evaluation on {folder}",
                "",
                f"Judge: {describe}. {report.n_instructions} instructions, "
                f"{len(report.picks)} candidates each; win rates (%) from "
                "alpaca-eval's metric over the released annotations.",
                "",
                "| selector | win rate % |",
                "|---|---|",
            ]
            + [f"| {name} | {rate:.2f} |" for name, rate in rows]
            + ["", *gains(report), "", f"Picks per model: {report.picks}.", "", "![select-pool](select_pool.png)", ""]
        ),
        encoding="utf-8",
    )
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.barh([name for name, _ in rows][::-1], [rate for _, rate in rows][::-1], color=["#999"] * 4 + ["#1f77b4"])
    ax.set_xlabel("win rate vs baseline (%)")
    ax.set_title(
        f"{report.judge} as best-of-{len(report.picks)} selector, {report.n_instructions} instructions", fontsize=9
    )
    fig.tight_layout()
    png = out / "select_pool.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return md, png


def _label_offsets(x: Sequence[float], y: Sequence[float], near: float = 0.08) -> list[tuple[float, float]]:
    """Text offsets (points) for a label per point: a point close to the one labelled before it (in axis-normalised
    units) gets its label stacked further up or down, so small λ steps, whose points crowd, stay readable."""
    span = lambda v: (max(v) - min(v)) or 1.0  # noqa: E731
    sx, sy = span(x), span(y)
    out: list[tuple[float, float]] = []
    level = 0
    for i in range(len(x)):
        close = i and abs(x[i] - x[i - 1]) / sx < near and abs(y[i] - y[i - 1]) / sy < near
        level = level + 1 if close else 0
        sign = -1 if level % 2 else 1
        out.append((4.0, sign * (4.0 + 9.0 * ((level + 1) // 2))))
    return out


def write_sweep(reports: Sequence[PoolReport], out: Path) -> tuple[Path, Path]:
    """length_sweep.md (λ, win rate with its CI and gain over a random pick, mean pick length) and length_sweep.png
    (the trade-off curve: win rate against mean pick length, one point per λ)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    first = reports[0]
    rows = [
        f"| {r.length_penalty:g} | {r.win_rate:.2f} | "
        + (f"{r.win_rate_ci[0]:.2f} to {r.win_rate_ci[1]:.2f}" if r.win_rate_ci else "")
        + f" | {r.vs_random.said() if r.vs_random else ''} | {r.lengths['picks']:.0f} |"
        for r in reports
    ]
    md = out / "length_sweep.md"
    md.write_text(
        "\n".join(
            [
                f"# {first.judge}: win rate against mean pick length",
                "",
                f"{first.n_instructions} instructions. Picks maximise z(score) - λ z(length) within each instruction. "
                f"Mean length (characters): random pick {first.lengths['random']:.0f}, longest "
                f"{first.lengths['longest']:.0f}, baseline {first.lengths['baseline']:.0f}.",
                "",
                "| λ | win rate % | 95% CI | vs random pick (pp) | mean pick length |",
                "|---|---|---|---|---|",
                *rows,
                "",
                "![length sweep](length_sweep.png)",
                "",
            ]
        ),
        encoding="utf-8",
    )
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    x, y = [r.lengths["picks"] for r in reports], [r.win_rate for r in reports]
    ax.plot(x, y, marker="o", color="#1f77b4", label=first.judge)
    bars = [(r.lengths["picks"], r.win_rate, r.win_rate_ci) for r in reports if r.win_rate_ci]
    if bars:  # the 95% CI over instructions of each λ's win rate
        low = [w - ci[0] for _, w, ci in bars]
        high = [ci[1] - w for _, w, ci in bars]
        ax.errorbar(
            [b[0] for b in bars],
            [b[1] for b in bars],
            yerr=[low, high],
            fmt="none",
            ecolor="#1f77b4",
            alpha=0.5,
            capsize=3,
            label="95% CI",
        )
    for r, offset in zip(reports, _label_offsets(x, y)):
        ax.annotate(
            f"λ={r.length_penalty:g}",
            (r.lengths["picks"], r.win_rate),
            fontsize=7,
            xytext=offset,
            textcoords="offset points",
        )
    ax.scatter([first.lengths["random"]], [first.reference_points["random"]], color="#999", label="random pick")
    ax.set_xlabel("mean pick length (characters)")
    ax.set_ylabel("win rate vs baseline (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = out / "length_sweep.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return md, png

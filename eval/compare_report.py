"""The comparison report: report.md (one table per benchmark, judges as rows), results.json, PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bon.core.io import write_json_atomic
from bon.eval.compare import BenchmarkReport, CompareResult
from bon.eval.judge_metrics import LeaderboardResult, PairwiseResult, PoolResult, ScoresResult
from bon.eval.metrics import TOO_FEW  # items below which a number is shown as "too few"


def _num(x: float | None, digits: int = 2, n: int | None = None) -> str:
    """``x`` to ``digits``; with ``n``, "too few (n=K)" when it rests on fewer than TOO_FEW items."""
    if n is not None and n < TOO_FEW and x is not None:
        return f"too few (n={n})"
    return "—" if x is None else f"{x:.{digits}f}"


def _with_n(x: float | None, n: int, digits: int = 2) -> str:
    """``x`` with the items it rests on, "0.42 (n=15)", or "too few (n=K)" (see `_num`)."""
    shown = _num(x, digits, n)
    return shown if x is None or n < TOO_FEW else f"{shown} (n={n})"


def _ci(x: float | None, ci: tuple[float, float] | None, digits: int = 2, n: int | None = None) -> str:
    if x is None or (n is not None and n < TOO_FEW):
        return _num(x, digits, n)
    return f"{x:.{digits}f}" + ("" if ci is None else f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _pairwise_section(b: BenchmarkReport) -> list[str]:
    rows = [
        [
            r.judge,
            str(r.n),
            _ci(r.agreement, r.agreement_ci),
            _num(r.agreement_no_tie),
            _num(r.tie_threshold),
            _num(r.heldout_agreement),
            _num(r.consistency),
            _num(r.aurc, 3, r.n),
            _num(r.length_spearman, 2, r.n),
            _num(r.prefers_longer),
            str(r.failed),
        ]
        for r in b.results
        if isinstance(r, PairwiseResult)
    ]
    lines = [
        "Agreement with the human label (%, ties included) with a "
        "95% bootstrap CI over items. Scalar judges predict a tie "
        "when their two scores differ by less than a threshold "
        "searched over 0–2.0 in steps of 0.01 (the Auto-J leaderboard "
        "protocol, tuned on the items it is reported on); *held-out* "
        "predicts each fold with the threshold searched on the "
        "other folds (folds alternate within each human label, so each has the same "
        "share of ties). Pairwise judges count an item only when both orders give the "
        "label; consistency is the share of items whose two orders "
        "agree. AURC: declining the smallest score gaps first, "
        "risk = 1 − agreement (lower is better). Length ρ: Spearman "
        "of score with response length; prefers longer: % of "
        "decisive verdicts picking the longer response.",
        "",
    ]
    lines += _table(
        [
            "judge",
            "n",
            "agreement % [CI]",
            "no-tie %",
            "tie τ",
            "held-out %",
            "consistency %",
            "AURC",
            "length ρ",
            "prefers longer %",
            "failed",
        ],
        rows,
    )
    results = [r for r in b.results if isinstance(r, PairwiseResult)]
    groups = list(dict.fromkeys(g for r in results for g in r.groups))  # Auto-J's order
    lines += ["", "Agreement (%) per scenario group, with its pairs:", ""]
    cells = [[r.judge] + [_with_n(r.groups.get(g), r.group_n.get(g, 0), 1) for g in groups] for r in results]
    lines += _table(["judge"] + groups, cells)
    return lines


def _correlation_cells(r: PoolResult | ScoresResult) -> list[str]:
    """Pearson [CI], Spearman, Kendall, AURC, oracle AURC and length ρ, each 'too few' on too few items."""
    c = r.correlation
    return [
        _ci(c.pearson, r.pearson_ci, 3, r.n),
        *(_num(x, 3, r.n) for x in (c.spearman, c.kendall, r.aurc, r.oracle_aurc, r.length_spearman)),
    ]


def _pool_section(b: BenchmarkReport) -> list[str]:
    rows = []
    for r in b.results:
        assert isinstance(r, PoolResult)
        rows.append(
            [
                r.judge,
                str(r.n),
                _ci(r.win_rate, r.win_rate_ci),
                _num(r.reference_points["random"]),
                _num(r.reference_points["longest"]),
                _num(r.reference_points["oracle"]),
                *_correlation_cells(r),
                f"{r.mean_pick_length:.0f} / {r.mean_length:.0f} / {r.baseline_length:.0f}",
                _num(r.longest_picked, 1),
                str(r.failed),
            ]
        )
    lines = [
        "The judge as best-of-N selector over the released annotations: "
        "the win rate (%) of its picks by alpaca-eval's metric "
        "(95% bootstrap CI over instructions), beside the reference points on the same instructions (random = the mean "
        "over models). Correlation of the judge's score with each candidate's released preference (its win in [0, 1]), "
        "Pearson CI by bootstrap over instructions. AURC: declining "
        "the instructions whose pick scores lowest, risk = 1 − win. "
        "Length: Spearman of score with output length, mean characters "
        "of the picks / of all candidates / of the baseline's answers, % of picks that are "
        "the longest candidate.",
        "",
    ]
    return lines + _table(
        [
            "judge",
            "n",
            "win rate % [CI]",
            "random",
            "longest",
            "oracle",
            "Pearson [CI]",
            "Spearman",
            "Kendall",
            "AURC",
            "oracle AURC",
            "length ρ",
            "pick / mean / baseline length",
            "longest picked %",
            "failed",
        ],
        rows,
    )


def _scores_section(b: BenchmarkReport) -> list[str]:
    rows = []
    for r in b.results:
        assert isinstance(r, ScoresResult)
        rows.append(
            [
                r.judge,
                str(r.n),
                *_correlation_cells(r),
                str(r.failed),
            ]
        )
    lines = [
        "Correlation of the judge's score with the reference score "
        "column (Pearson CI by bootstrap over instructions). AURC: "
        "declining the lowest-scored responses, risk = 1 − the reference score scaled to [0, 1].",
        "",
    ]
    return lines + _table(
        ["judge", "n", "Pearson [CI]", "Spearman", "Kendall", "AURC", "oracle AURC", "length ρ", "failed"], rows
    )


def _leaderboard_section(b: BenchmarkReport) -> list[str]:
    rows = []
    for r in b.results:
        assert isinstance(r, LeaderboardResult)
        for column, c in r.columns.items():
            rows.append(
                [
                    r.judge,
                    column,
                    str(c["n_models"]),
                    str(r.instructions),
                    _ci(c["spearman"], c["spearman_ci"], 3),
                    _ci(c["kendall"], c["kendall_ci"], 3),
                    str(r.failed),
                ]
            )
    lines = [
        "The judge's mean score per model over the instructions "
        "it scored, rank-correlated with each leaderboard column "
        "(95% bootstrap CIs over models).",
        "",
    ]
    return lines + _table(
        ["judge", "leaderboard column", "models", "instructions", "Spearman [CI]", "Kendall [CI]", "failed"], rows
    )


def _risk_lines(b: BenchmarkReport) -> list[str]:
    """Risk at coverages 100/90/80/50% with bootstrap CIs beside AURC, for the kinds that decline (not leaderboards)."""
    declining = [r for r in b.results if isinstance(r, (PairwiseResult, PoolResult, ScoresResult)) and r.risk]
    if not declining:
        return []
    rows = [
        [r.judge, _num(r.aurc, 3, r.n)] + [_ci(risk, ci, 3, r.n) for risk, ci in r.risk.values()] for r in declining
    ]
    lines = [
        "",
        "Selective risk: declining the least confident items first (the AURC above), the risk at coverages a user "
        "would set (`bon select --coverage`), with 95% bootstrap CIs over items (the threshold recomputed on each "
        "resample).",
        "",
    ]
    return lines + _table(["judge", "AURC", *(f"risk @{c:.0%}" for c in declining[0].risk)], rows)


def _pool_gains(b: BenchmarkReport) -> list[str]:
    """The picks' gains over a random pick and a length-matched one, with CIs and p-values."""
    rows = [
        [r.judge, r.vs_random.said(), r.vs_length_matched.said() if r.vs_length_matched else "—"]
        for r in b.results
        if isinstance(r, PoolResult) and r.vs_random is not None
    ]
    if not rows:
        return []
    lines = [
        "",
        "Gains of the picks in win-rate points, paired by instruction (95% bootstrap CI, p-value): over a random "
        "pick, and over a random pick with the picks' distribution of length ranks (what the judge knows beyond "
        "how long it likes answers).",
        "",
    ]
    return lines + _table(["judge", "vs random pick", "vs length-matched pick"], rows)


SECTIONS = {
    "pairwise": _pairwise_section,
    "pool": _pool_section,
    "scores": _scores_section,
    "leaderboard": _leaderboard_section,
}


def _agreement_lines(b: BenchmarkReport) -> list[str]:
    m = b.agreement
    if len(m.judges) < 2:
        return []
    lines = [
        "",
        "Agreement between judges: mean within-prompt Kendall τ-b over the candidates both scored, with the "
        "number of prompts it averages (prompts where either judge is constant are left out).",
        "",
    ]
    cells = [
        [a] + ["—" if a == other else _with_n(t, k) for other, t, k in zip(m.judges, row, counts)]  # itself: no claim
        for a, row, counts in zip(m.judges, m.tau, m.prompts)
    ]
    return lines + _table(["", *m.judges], cells)


def results_json(result: CompareResult) -> dict[str, Any]:
    return {
        "output_dir": str(result.output_dir),
        "wall_s": round(result.wall_s, 1),
        "judges": result.judges,
        "judge_seconds": {k: round(v, 1) for k, v in result.seconds.items()},
        "benchmarks": [
            {
                "name": b.name,
                "kind": b.kind,
                "source": b.source,
                "prompts": b.prompts,
                "results": [r.as_json() for r in b.results],
                "agreement": {
                    "judges": b.agreement.judges,
                    "kendall_tau": b.agreement.tau,
                    "prompts": b.agreement.prompts,
                },
                "skipped": b.skipped,
                "notes": b.notes,
            }
            for b in result.benchmarks
        ],
    }


def _plots(b: BenchmarkReport, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    written = []
    curves = [(r.judge, c) for r in b.results if (c := getattr(r, "curve", None)) is not None and c.coverage]
    if curves:  # leaderboard rows have none
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for judge, curve in curves:
            n = len(curve.coverage)
            few = n < TOO_FEW  # drawn dotted, and its AURC not ranked beside the others
            label = f"{judge} (n={n}, too few)" if few else f"{judge} (n={n}, AURC {curve.aurc:.3f})"
            ax.plot(curve.coverage, curve.risk, linestyle=":" if few else "-", label=label)
        ax.set_xlabel("coverage (share of items kept)")
        ax.set_ylabel("risk (1 − quality of kept items)")
        ax.set_title(f"{b.name}: risk–coverage", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out / f"risk_coverage_{b.name}.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    m = b.agreement
    if len(m.judges) >= 2:
        import numpy as np

        grid = np.array(
            [[np.nan if t is None or k < TOO_FEW else t for t, k in zip(row, ks)] for row, ks in zip(m.tau, m.prompts)],
            float,
        )
        fig, ax = plt.subplots(figsize=(2.4 + 0.9 * len(m.judges), 1.2 + 0.8 * len(m.judges)))
        im = ax.imshow(grid, vmin=-1, vmax=1, cmap="RdBu")
        ax.set_xticks(range(len(m.judges)), m.judges, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(m.judges)), m.judges, fontsize=8)
        for i in range(len(m.judges)):
            for j in range(len(m.judges)):
                t, k = m.tau[i][j], m.prompts[i][j]
                text = "—" if t is None else f"too few\nn={k}" if k < TOO_FEW else f"{t:.2f}\nn={k}"
                ax.text(j, i, text, ha="center", va="center", fontsize=6)
        fig.colorbar(im, ax=ax, label="Kendall τ-b")
        ax.set_title(f"{b.name}: judge agreement", fontsize=10)
        fig.tight_layout()
        written.append(out / f"agreement_{b.name}.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    boards = [r for r in b.results if isinstance(r, LeaderboardResult)]
    if boards:
        column = next(iter(boards[0].columns))  # the CSV's first numeric column, e.g. v1_win_rate
        fig, axes = plt.subplots(1, len(boards), figsize=(3.6 * len(boards), 3.4), squeeze=False)
        for ax, r in zip(axes[0], boards):
            models = [m for m, v in r.means.items() if v is not None and b.board.get(m, {}).get(column) is not None]
            ax.scatter([b.board[m][column] for m in models], [r.means[m] for m in models], s=12)
            ax.set_xlabel(column)
            ax.set_ylabel(f"mean {r.judge} score")
            rho, n = r.columns[column]["spearman"], len(models)
            shown = _num(rho, 2, n) if n < TOO_FEW else f"{_num(rho, 2)} (n={n} models)"
            ax.set_title(f"{r.judge}: Spearman {shown}", fontsize=9)
        fig.tight_layout()
        written.append(out / f"leaderboard_{b.name}.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    pools = [r for r in b.results if isinstance(r, PoolResult)]
    bars = [(r.judge, r.n, r.win_rate, r.win_rate_ci) for r in pools]
    bars += [(r.judge, r.n, r.agreement, r.agreement_ci) for r in b.results if isinstance(r, PairwiseResult)]
    if bars:
        fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.45 * len(bars)))
        names = [f"{name} (n={n}{', too few' if n < TOO_FEW else ''})" for name, n, _, _ in bars][::-1]
        values = [v for _, _, v, _ in bars][::-1]
        err = [
            [v - (ci or (v, v))[0] for _, _, v, ci in bars][::-1],
            [(ci or (v, v))[1] - v for _, _, v, ci in bars][::-1],
        ]
        colors = ["#c7c7c7" if n < TOO_FEW else "#1f77b4" for _, n, _, _ in bars][::-1]
        ax.barh(names, values, xerr=err, color=colors, capsize=3)
        pool = pools[0] if pools else None
        ys = list(range(len(bars) - len(pools), len(bars)))  # the pool bars, drawn bottom to top
        for key, marker in (("random", "o"), ("longest", "s"), ("oracle", "^")):  # each judge's own instructions
            xs = [r.reference_points[key] for r in pools[::-1]]
            if xs:
                ax.scatter(xs, ys, marker=marker, color="#555", s=18, zorder=3, label=f"{key} on its instructions")
        if pools:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_xlabel("win rate of picks (%)" if pool is not None else "agreement with humans (%)")
        ax.set_title(f"{b.name}: {'judges as selectors' if pool is not None else 'pairwise agreement'}", fontsize=10)
        fig.tight_layout()
        written.append(out / f"selector_{b.name}.png" if pool is not None else out / f"agreement_bars_{b.name}.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def write_compare_report(result: CompareResult) -> tuple[Path, Path, list[Path]]:
    out = result.output_dir
    lines = ["# Judge comparison", "", "| judge | what is scoring | judging s (this invocation) |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {result.seconds.get(k, 0):.1f} |" for k, v in result.judges.items()]
    pngs: list[Path] = []
    for b in result.benchmarks:
        lines += ["", f"## {b.name} ({b.kind}: `{b.source}`, {b.prompts} prompts)", ""]
        lines += [f"*{note}.*\n" for note in b.notes]
        lines += SECTIONS[b.kind](b) if b.results else ["No judge has a row here."]
        lines += _pool_gains(b) + _risk_lines(b)
        lines += _agreement_lines(b)
        for label, why in b.skipped.items():
            lines.append(f"\n*{label}*: not run here: {why}.")
        written = _plots(b, out)
        pngs += written
        lines += [""] + [f"![{p.stem}]({p.name})" for p in written]
    lines += [
        "",
        f"Wall time of this invocation: {result.wall_s:.1f} s (judgements already in the run directory are reused).",
        "",
    ]
    md = out / "report.md"
    md.write_text("\n".join(lines), encoding="utf-8")
    js = out / "results.json"
    write_json_atomic(js, results_json(result))
    return md, js, pngs


def _headline(r: Any) -> str:
    """A judge's one number on a benchmark: what its table leads with."""
    if isinstance(r, PairwiseResult):
        return f"agreement % {_with_n(r.agreement, r.n, 1)}"
    if isinstance(r, PoolResult):
        return f"win rate % {_with_n(r.win_rate, r.n, 1)}"
    if isinstance(r, ScoresResult):
        return f"Pearson {_with_n(r.correlation.pearson, r.n)}"
    first: dict[str, Any] = next(iter(r.columns.values()), {})
    return f"Spearman {_num(first.get('spearman'), 2)}"


def summary_lines(result: CompareResult) -> list[str]:
    """What `bon compare` prints: per benchmark, each judge's headline number (report.md holds the rest)."""
    lines = []
    for b in result.benchmarks:
        lines.append(f"{b.name} ({b.kind}, {b.prompts} items):")
        lines += [f"  {r.judge}: {_headline(r)}" for r in b.results]
        lines += [f"  {label}: not run ({why})" for label, why in b.skipped.items()]
    return lines

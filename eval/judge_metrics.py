"""One judge's numbers on one benchmark, from its stored judgements (nothing here runs a model)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np

from bon.core.records import Comparison, Judgement, Prompt
from bon.eval.benchmarks import Benchmark, group_order
from bon.eval.metrics import (
    FIRST,
    SECOND,
    TIE,
    Correlations,
    PairedGain,
    RiskCoverage,
    agreement,
    agreement_no_tie,
    bootstrap_ci,
    comparator_scores,
    correlations,
    cross_fit_agreement,
    grouped_kendall,
    predict_pairs,
    risk_at_coverages,
    risk_coverage,
    search_threshold,
    swap_back,
)
from bon.eval.pool import COVERAGES, picks_report

Scores = dict[tuple[str, int], float | None]  # (prompt id, candidate index) -> score
Risks = dict[float, tuple[float, tuple[float, float] | None]]  # coverage -> (risk, its bootstrap CI)


def scores_of(judgements: Sequence[Judgement]) -> Scores:
    return {j.key: j.score for j in judgements}


def candidate_scores(records: Sequence[Judgement] | Sequence[Comparison]) -> Scores:
    """A judge's stored records as one score per candidate (a pairwise judge's verdicts as points)."""
    if is_comparisons(records):
        return comparison_scores(cast(Sequence[Comparison], records))
    return scores_of(cast(Sequence[Judgement], records))


def is_comparisons(records: Sequence[Any]) -> bool:
    return bool(records) and isinstance(records[0], Comparison)


def comparison_scores(comparisons: Sequence[Comparison]) -> Scores:
    """A pairwise judge's verdicts as points per candidate (win 1, tie or disagreeing orders 0.5)."""
    verdicts: dict[str, dict[int, int | None]] = {}
    for c in comparisons:
        verdicts.setdefault(c.prompt_id, {})[c.first] = c.winner if c.first == 0 else swap_back(c.winner)
    out: Scores = {}
    for pid, v in verdicts.items():
        forward, swapped = v.get(0), v.get(1)
        if forward is None or swapped is None:
            out[(pid, 0)] = out[(pid, 1)] = None
            continue
        winner = forward if forward == swapped else TIE
        first = {FIRST: 1.0, SECOND: 0.0, TIE: 0.5}[winner]
        out[(pid, 0)], out[(pid, 1)] = first, 1.0 - first
    return out


def _ci(values: np.ndarray, reps: int, seed: int, scale: float = 100.0) -> tuple[float, float] | None:
    return bootstrap_ci(lambda idx: float(values[idx].mean()) * scale, len(values), reps, seed)


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, (list, tuple)):
        return [_round(v) for v in x]
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    return x


class _Result:
    def as_json(self) -> dict[str, Any]:
        return {k: _round(v) for k, v in asdict(cast(Any, self)).items() if k != "curve"}  # subclasses are dataclasses


@dataclass(frozen=True)
class PairwiseResult(_Result):
    judge: str
    n: int
    failed: int  # pairs with a missing score or verdict (counted as wrong)
    agreement: float  # % equal to the human label; scalar judges at the searched threshold
    agreement_ci: tuple[float, float] | None
    agreement_no_tie: float  # over items whose human label is not a tie
    tie_threshold: float | None  # scalar judges: the searched threshold; None for pairwise judges
    heldout_agreement: float | None  # scalar judges: each fold predicted with the threshold of the others
    heldout_thresholds: list[float] | None
    consistency: float | None  # pairwise judges: % of items whose two orders agree
    groups: dict[str, float]  # scenario group -> agreement
    group_n: dict[str, int]  # scenario group -> pairs
    aurc: float | None  # declining the smallest |score difference| first; quality = correct
    oracle_aurc: float | None
    length_spearman: float | None  # score vs response length (characters)
    prefers_longer: float | None  # % of decisive verdicts that pick the longer response
    risk: Risks = field(default_factory=dict)  # coverage -> (risk, bootstrap CI), beside AURC
    curve: RiskCoverage | None = field(default=None, compare=False)


def _folds(items: Sequence[Any], k: int) -> list[int]:
    """Alternate items between folds within each human label: every fold has the same share of ties.

    (The tie share decides the best threshold; folds cut along the file's order can differ wildly
    in it, e.g. 45 ties of 58 in one fold and 3 in the other on an evenly spaced Auto-J subset.)
    """
    seen: Counter = Counter()
    out = []
    for it in items:
        out.append(seen[it.label] % k)
        seen[it.label] += 1
    return out


def _prefers_longer(predictions: Sequence[int | None], items: Sequence[Any]) -> float | None:
    decisive = [
        (p, it)
        for p, it in zip(predictions, items)
        if p in (FIRST, SECOND) and len(it.response_1) != len(it.response_2)
    ]
    if not decisive:
        return None
    longer = sum((p == FIRST) == (len(it.response_1) > len(it.response_2)) for p, it in decisive)
    return 100.0 * longer / len(decisive)


def evaluate_pairwise(
    bench: Benchmark,
    subset: Sequence[Prompt],
    label: str,
    judgements: Sequence[Judgement] = (),
    comparisons: Sequence[Comparison] = (),
    reps: int = 1000,
    seed: int = 0,
    folds: int = 2,
) -> PairwiseResult:
    wanted = {p.id for p in subset}
    items = [it for it in bench.pairs if it.id in wanted]
    labels = [it.label for it in items]
    threshold = heldout = thresholds = consistency = curve = length = None
    risk: Risks = {}
    if comparisons:
        verdicts: dict[tuple[str, int], int | None] = {(c.prompt_id, c.first): c.winner for c in comparisons}
        forward = [verdicts.get((it.id, 0)) for it in items]
        swapped = [swap_back(verdicts.get((it.id, 1))) for it in items]
        # Auto-J: an item counts only when both orders give the label, so a disagreeing pair is wrong
        predictions = [f if f == s else None for f, s in zip(forward, swapped)]
        failed = sum(f is None or s is None for f, s in zip(forward, swapped))
        _, consistency = comparator_scores(forward, swapped, labels)
    else:
        table = scores_of(judgements)
        a = [table.get((it.id, 0)) for it in items]
        b = [table.get((it.id, 1)) for it in items]
        failed = sum(x is None or y is None for x, y in zip(a, b))
        threshold, _ = search_threshold(a, b, labels)
        predictions = predict_pairs(a, b, threshold)
        heldout, by_fold = cross_fit_agreement(a, b, labels, _folds(items, folds))
        thresholds = [by_fold[f] for f in sorted(by_fold)]
        correct = [float(p == y) for p, y in zip(predictions, labels)]
        gaps = [None if x is None or y is None else abs(x - y) for x, y in zip(a, b)]
        curve = risk_coverage(gaps, correct)
        risk = risk_at_coverages(gaps, correct, COVERAGES, reps, seed)
        lengths = [len(t) for it in items for t in (it.response_1, it.response_2)]
        length = correlations([s for pair in zip(a, b) for s in pair], lengths).spearman
    correct_arr = np.array([p == y for p, y in zip(predictions, labels)], float)
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.group, []).append(i)
    return PairwiseResult(
        judge=label,
        n=len(items),
        failed=failed,
        agreement=agreement(predictions, labels),
        agreement_ci=_ci(correct_arr, reps, seed),
        agreement_no_tie=agreement_no_tie(predictions, labels),
        tie_threshold=threshold,
        heldout_agreement=heldout,
        heldout_thresholds=thresholds,
        consistency=consistency,
        groups={
            g: agreement([predictions[i] for i in idx], [labels[i] for i in idx])
            for g, idx in sorted(groups.items(), key=lambda kv: group_order(kv[0]))
        },
        group_n={g: len(idx) for g, idx in groups.items()},
        aurc=None if curve is None else curve.aurc,
        oracle_aurc=None if curve is None else curve.oracle_aurc,
        length_spearman=length,
        prefers_longer=_prefers_longer(predictions, items),
        risk=risk,
        curve=curve,
    )


@dataclass(frozen=True)
class PoolResult(_Result):
    judge: str
    n: int  # instructions
    failed: int  # instructions none of whose candidates could be judged
    win_rate: float  # alpaca-eval's win rate of the judge's picks
    win_rate_ci: tuple[float, float] | None
    reference_points: dict[str, float]  # random, longest, best_single, oracle on the same instructions
    best_single_model: str
    picks: dict[str, int]
    correlation: Correlations  # judge score vs the candidate's released preference (its win in [0, 1])
    pearson_ci: tuple[float, float] | None
    aurc: float | None  # declining the instructions whose pick scores lowest; quality = the pick's win
    oracle_aurc: float | None
    length_spearman: float | None  # score vs output length (characters)
    mean_pick_length: float  # characters
    mean_length: float  # characters, over every candidate
    longest_picked: float  # % of instructions where the pick is the longest candidate
    baseline_length: float = 0.0  # characters of the baseline's answers to the same instructions
    vs_random: PairedGain | None = None  # the picks' win rate minus a random pick's (pp, paired)
    vs_length_matched: PairedGain | None = None  # minus a pick with the picks' length ranks
    risk: Risks = field(default_factory=dict)  # coverage -> (risk, bootstrap CI), beside AURC
    curve: RiskCoverage | None = field(default=None, compare=False)


def _cluster_pearson(
    groups: list[tuple[list[float | None], list[float]]], reps: int, seed: int
) -> tuple[float, float] | None:
    """Bootstrap over prompts (their candidates move together) of the pooled Pearson correlation."""
    kept = [np.array([(x, y) for x, y in zip(*g) if x is not None], float).reshape(-1, 2) for g in groups]

    def stat(idx: np.ndarray) -> float | None:
        xy = np.concatenate([kept[i] for i in idx])
        if len(xy) < 2 or np.ptp(xy[:, 0]) == 0 or np.ptp(xy[:, 1]) == 0:
            return None
        return float(np.corrcoef(xy[:, 0], xy[:, 1])[0, 1])

    return bootstrap_ci(stat, len(groups), reps, seed)


def evaluate_pool(
    bench: Benchmark,
    subset: Sequence[Prompt],
    label: str,
    judgements: Sequence[Judgement],
    reps: int = 1000,
    seed: int = 0,
) -> PoolResult:
    assert bench.pool is not None
    pool = bench.pool.restrict([p.instruction for p in subset])
    report = picks_report(pool, label, judgements, reps=reps, seed=seed)
    table = scores_of(judgements)
    groups: list[tuple[list[float | None], list[float]]] = []
    confidence: list[float | None] = []
    pick_wins: list[float] = []
    pick_lengths: list[int] = []
    longest = 0
    for p, s in zip(subset, report.selections):
        annotations = pool.table[p.instruction]
        pick = annotations[s.chosen_index or 0]  # no threshold: never declined
        groups.append(([table.get((p.id, i)) for i in range(len(annotations))], [a.win() or 0.0 for a in annotations]))
        confidence.append(s.score)
        pick_wins.append(pick.win() or 0.0)
        pick_lengths.append(len(pick.output_2))
        longest += len(pick.output_2) == max(len(a.output_2) for a in annotations)
    scores = [x for g in groups for x in g[0]]
    lengths = [len(a.output_2) for p in subset for a in pool.table[p.instruction]]
    curve = risk_coverage(confidence, pick_wins)
    return PoolResult(
        judge=label,
        n=report.n_instructions,
        failed=report.failed,
        win_rate=report.win_rate,
        win_rate_ci=_ci(np.array(pick_wins, float), reps, seed),
        reference_points=report.reference_points,
        best_single_model=report.best_single_model,
        picks=report.picks,
        correlation=correlations(scores, [y for g in groups for y in g[1]]),
        pearson_ci=_cluster_pearson(groups, reps, seed),
        aurc=curve.aurc,
        oracle_aurc=curve.oracle_aurc,
        length_spearman=correlations(scores, lengths).spearman,
        mean_pick_length=float(np.mean(pick_lengths)),
        mean_length=float(np.mean(lengths)),
        longest_picked=100.0 * longest / len(subset),
        baseline_length=report.lengths["baseline"],
        vs_random=report.vs_random,
        vs_length_matched=report.vs_length_matched,
        risk=risk_at_coverages(confidence, pick_wins, COVERAGES, reps, seed),
        curve=curve,
    )


@dataclass(frozen=True)
class ScoresResult(_Result):
    judge: str
    n: int  # responses
    failed: int
    correlation: Correlations  # judge score vs the reference score column
    pearson_ci: tuple[float, float] | None
    aurc: float | None  # declining the lowest-scored responses; quality = reference min-max scaled to [0, 1]
    oracle_aurc: float | None
    length_spearman: float | None
    risk: Risks = field(default_factory=dict)  # coverage -> (risk, bootstrap CI), beside AURC
    curve: RiskCoverage | None = field(default=None, compare=False)


def evaluate_scores(
    bench: Benchmark,
    subset: Sequence[Prompt],
    label: str,
    judgements: Sequence[Judgement],
    reps: int = 1000,
    seed: int = 0,
) -> ScoresResult:
    table = scores_of(judgements)
    groups = [([table.get((p.id, i)) for i in range(len(bench.values[p.id]))], bench.values[p.id]) for p in subset]
    scores = [x for g in groups for x in g[0]]
    values = np.array([y for g in groups for y in g[1]], float)
    span = float(np.ptp(values)) or 1.0
    quality = ((values - values.min()) / span).tolist()
    curve = risk_coverage(scores, quality)
    lengths = [len(c.text) for p in subset for c in bench.candidates[p.id]]
    return ScoresResult(
        judge=label,
        n=len(scores),
        failed=sum(s is None for s in scores),
        correlation=correlations(scores, values.tolist()),
        pearson_ci=_cluster_pearson(groups, reps, seed),
        aurc=curve.aurc,
        oracle_aurc=curve.oracle_aurc,
        length_spearman=correlations(scores, lengths).spearman,
        risk=risk_at_coverages(scores, quality, COVERAGES, reps, seed),
        curve=curve,
    )


@dataclass(frozen=True)
class LeaderboardResult(_Result):
    judge: str
    n: int  # responses scored
    failed: int
    instructions: int
    means: dict[str, float | None]  # model -> the judge's mean score over the instructions scored
    columns: dict[
        str, dict[str, Any]
    ]  # leaderboard column -> spearman, kendall (with bootstrap CIs over models), n models


def evaluate_leaderboard(
    bench: Benchmark,
    subset: Sequence[Prompt],
    label: str,
    judgements: Sequence[Judgement],
    reps: int = 1000,
    seed: int = 0,
) -> LeaderboardResult:
    """The judge's mean score per model, rank-correlated with each leaderboard column (bootstrap over models)."""
    table = scores_of(judgements)
    per_model: dict[str, list[float]] = {m: [] for m in bench.board}
    scores = []
    for p in subset:
        for c in bench.candidates[p.id]:
            s = table.get((p.id, c.index))
            scores.append(s)
            if s is not None:
                per_model[c.policy].append(s)
    means = {m: (float(np.mean(v)) if v else None) for m, v in per_model.items()}
    columns: dict[str, dict[str, Any]] = {}
    for column in sorted({k for row in bench.board.values() for k in row}):
        models = [m for m in bench.board if means[m] is not None and bench.board[m].get(column) is not None]
        x = np.array([means[m] for m in models], float)
        y = np.array([bench.board[m][column] for m in models], float)
        corr = correlations(x.tolist(), y.tolist())

        def stat(idx: np.ndarray, which: str, x: np.ndarray = x, y: np.ndarray = y) -> float | None:
            from scipy import stats

            u, v = x[idx], y[idx]
            if np.ptp(u) == 0 or np.ptp(v) == 0:
                return None
            return float((stats.spearmanr if which == "spearman" else stats.kendalltau)(u, v).statistic)

        columns[column] = {
            "n_models": len(models),
            "spearman": corr.spearman,
            "kendall": corr.kendall,
            "spearman_ci": bootstrap_ci(lambda idx: stat(idx, "spearman"), len(models), reps, seed)
            if len(models) > 2
            else None,
            "kendall_ci": bootstrap_ci(lambda idx: stat(idx, "kendall"), len(models), reps, seed)
            if len(models) > 2
            else None,
        }
    return LeaderboardResult(label, len(scores), sum(s is None for s in scores), len(subset), means, columns)


@dataclass(frozen=True)
class AgreementMatrix:
    judges: list[str]
    tau: list[list[float | None]]  # mean within-prompt Kendall tau-b, judges x judges
    prompts: list[list[int]]  # prompts each cell averages over


def judge_agreement(bench: Benchmark, scores: dict[str, Scores]) -> AgreementMatrix:
    """Rank agreement of every two judges over the candidates both scored, prompt by prompt."""
    per_prompt: dict[str, dict[str, Sequence[float | None]]] = {}
    for label, table in scores.items():
        grouped: dict[str, Sequence[float | None]] = {}
        for p in bench.prompts:
            if (p.id, 0) in table:
                grouped[p.id] = [table.get((p.id, c.index)) for c in bench.candidates[p.id]]
        per_prompt[label] = grouped
    labels = list(scores)
    tau: list[list[float | None]] = [[None] * len(labels) for _ in labels]
    counts = [[0] * len(labels) for _ in labels]
    for i, a in enumerate(labels):
        for j, b in enumerate(labels):
            if j < i:
                tau[i][j], counts[i][j] = tau[j][i], counts[j][i]
                continue
            tau[i][j], counts[i][j] = grouped_kendall(per_prompt[a], per_prompt[b])
    return AgreementMatrix(labels, tau, counts)

"""Metrics for comparing judges; pure functions over plain numbers, checked by hand in the tests.

Conventions: percentages are in [0, 100]; a missing score is None and is never silently dropped
(pairwise: a pair with a missing side is a wrong prediction; risk-coverage: it is declined first).
Pair labels follow Auto-J: 0 = response 1 better, 1 = response 2 better, 2 = tie.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bon.judges.pairwise import FIRST, SECOND, TIE, scalar_verdict
from bon.pipeline.selection import answered_count

# the Auto-J leaderboard's tie thresholds for scalar reward models: 0 to 2.0 in steps of 0.01
THRESHOLDS: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(201))


def predict_pairs(a: Sequence[float | None], b: Sequence[float | None], threshold: float) -> list[int | None]:
    """Scalar scores to a verdict per pair (`judges.pairwise.scalar_verdict`); None where a score is missing."""
    return [None if x is None or y is None else scalar_verdict(x, y, threshold) for x, y in zip(a, b)]


def agreement(predictions: Sequence[int | None], labels: Sequence[int]) -> float:
    """Percent of items whose prediction equals the human label (None is never equal)."""
    if not labels:
        return float("nan")
    return 100.0 * sum(p == y for p, y in zip(predictions, labels)) / len(labels)


def agreement_no_tie(predictions: Sequence[int | None], labels: Sequence[int]) -> float:
    """Agreement over the items whose human label is not a tie."""
    kept = [(p, y) for p, y in zip(predictions, labels) if y != TIE]
    return agreement([p for p, _ in kept], [y for _, y in kept])


def search_threshold(
    a: Sequence[float | None], b: Sequence[float | None], labels: Sequence[int], grid: Sequence[float] = THRESHOLDS
) -> tuple[float, float]:
    """The grid threshold with the highest agreement (the smallest on ties) and that agreement."""
    best_t, best = grid[0], -1.0
    for t in grid:
        score = agreement(predict_pairs(a, b, t), labels)
        if score > best + 1e-12:
            best_t, best = t, score
    return best_t, best


def cross_fit_agreement(
    a: Sequence[float | None],
    b: Sequence[float | None],
    labels: Sequence[int],
    folds: Sequence[int],
    grid: Sequence[float] = THRESHOLDS,
) -> tuple[float, dict[int, float]]:
    """Agreement when each fold is predicted with the threshold searched on the other folds.

    Returns the agreement over all items and the threshold used for each fold, so no item is
    scored with a threshold tuned on itself.
    """
    predictions: list[int | None] = [None] * len(labels)
    thresholds: dict[int, float] = {}
    for fold in sorted(set(folds)):
        train = [i for i, f in enumerate(folds) if f != fold]
        test = [i for i, f in enumerate(folds) if f == fold]
        t, _ = search_threshold([a[i] for i in train], [b[i] for i in train], [labels[i] for i in train], grid)
        thresholds[fold] = t
        for i, p in zip(test, predict_pairs([a[i] for i in test], [b[i] for i in test], t)):
            predictions[i] = p
    return agreement(predictions, labels), thresholds


def swap_back(verdict: int | None) -> int | None:
    """A verdict on the swapped pair (response 2 shown first) in the original orientation."""
    return None if verdict is None else {FIRST: SECOND, SECOND: FIRST, TIE: TIE}[verdict]


def comparator_scores(
    forward: Sequence[int | None], swapped: Sequence[int | None], labels: Sequence[int]
) -> tuple[float, float]:
    """Auto-J's protocol for pairwise judges: (agreement, consistency) in percent.

    ``swapped`` is already mapped back to the original orientation. Agreement counts an item only
    when both orders give the human label; consistency is the share of items whose two orders give
    the same usable verdict.
    """
    n = len(labels)
    both = sum(f == s == y for f, s, y in zip(forward, swapped, labels))
    same = sum(f is not None and f == s for f, s in zip(forward, swapped))
    return 100.0 * both / n, 100.0 * same / n


@dataclass(frozen=True)
class Correlations:
    pearson: float | None
    spearman: float | None
    kendall: float | None
    n: int


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def correlations(x: Sequence[float | None], y: Sequence[float | None]) -> Correlations:
    """Pearson, Spearman and Kendall's tau-b over the pairs where both are present (None if constant)."""
    from scipy import stats

    pairs = [(u, v) for u, v in zip(x, y) if u is not None and v is not None]
    if len(pairs) < 2:
        return Correlations(None, None, None, len(pairs))
    u, v = np.array([p[0] for p in pairs], float), np.array([p[1] for p in pairs], float)
    if np.ptp(u) == 0 or np.ptp(v) == 0:
        return Correlations(None, None, None, len(pairs))
    return Correlations(
        _finite(stats.pearsonr(u, v).statistic),
        _finite(stats.spearmanr(u, v).statistic),
        _finite(stats.kendalltau(u, v).statistic),
        len(pairs),
    )


@dataclass(frozen=True)
class RiskCoverage:
    coverage: list[float]  # k / n for k = 1..n
    risk: list[float]  # 1 - mean quality of the k most confident items
    aurc: float  # mean of risk over k: the area under the risk-coverage curve
    oracle_aurc: float  # the same with items ordered by their true quality (the best any judge can do)


def _risks(quality_in_order: np.ndarray) -> np.ndarray:
    k = np.arange(1, len(quality_in_order) + 1)
    return 1.0 - np.cumsum(quality_in_order) / k


def _confidences(confidence: Sequence[float | None]) -> np.ndarray:
    """Confidences as floats, a missing one below every score."""
    return np.array([-math.inf if c is None else c for c in confidence], dtype=float)


def _by_confidence(conf: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """``quality`` most confident first; items keep their given order among equal confidences (a stable sort)."""
    return quality[np.argsort(-conf, kind="stable")]


def risk_coverage(confidence: Sequence[float | None], quality: Sequence[float]) -> RiskCoverage:
    """Declining the least confident items first: risk at each coverage and the area under it.

    Quality is in [0, 1] (a win, a correct verdict). Items keep their given order among equal
    confidences (a stable sort); a missing confidence ranks below every score.
    """
    n = len(quality)
    if n == 0:
        return RiskCoverage([], [], float("nan"), float("nan"))
    q = np.asarray(quality, float)
    risk = _risks(_by_confidence(_confidences(confidence), q))
    oracle = _risks(np.sort(q)[::-1])
    return RiskCoverage([(k + 1) / n for k in range(n)], risk.tolist(), float(risk.mean()), float(oracle.mean()))


def kendall_tau_b(x: Sequence[float | None], y: Sequence[float | None]) -> float | None:
    """Kendall's tau-b over the pairs where both are present (None when either side is constant or fewer than
    two pairs), from the signs of every two items: for the few candidates of a prompt this is ~100x quicker than
    `scipy.stats.kendalltau`, which `grouped_kendall` would call once per prompt and judge pair."""
    kept = [(u, v) for u, v in zip(x, y) if u is not None and v is not None]
    if len(kept) < 2:
        return None
    u, v = np.array(kept, float).T
    i, j = np.triu_indices(len(kept), 1)
    du, dv = np.sign(u[i] - u[j]), np.sign(v[i] - v[j])
    untied_u, untied_v = np.count_nonzero(du), np.count_nonzero(dv)
    if untied_u == 0 or untied_v == 0:
        return None
    return float(np.dot(du, dv) / math.sqrt(untied_u * untied_v))


def grouped_kendall(
    a: dict[str, Sequence[float | None]], b: dict[str, Sequence[float | None]]
) -> tuple[float | None, int]:
    """Mean within-group Kendall tau-b of two judges over the same candidates, and the groups used.

    A group counts when both judges score at least two of its candidates and neither is constant
    there (tau is undefined otherwise): best-of-N only needs each prompt's ranking to agree.
    """
    taus = []
    for key in sorted(a.keys() & b.keys()):  # a fixed summation order: results.json is reproducible
        tau = kendall_tau_b(a[key], b[key])
        if tau is not None:
            taus.append(tau)
    return (float(np.mean(taus)) if taus else None), len(taus)


TOO_FEW = 10  # items below which no CI and no p-value is stated: 4 items have 4^4 resamples, all of one prompt's sign


def p_value_text(p: float, reps: int) -> str:
    """A bootstrap p-value at the resolution its resamples allow: ``p<0.001`` when no resample of 1,000 reached
    the observed difference, else ``p=0.012`` (as many decimals as 1/reps has)."""
    decimals = max(1, math.ceil(math.log10(reps)))
    return f"p<{10**-decimals:.{decimals}f}" if p <= 1 / (reps + 1) + 1e-15 else f"p={p:.{decimals}f}"


def ci_text(low: float | None, high: float | None, n: int, digits: int = 1) -> str:
    """``[41.2, 58.3]``, or ``too few (n=4)`` where no CI is stated (under `TOO_FEW` items)."""
    if low is None or high is None:
        return f"too few (n={n})" if n < TOO_FEW else "—"
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float | None], n: int, reps: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float] | None:
    """Percentile CI of ``statistic(indices)`` over ``reps`` resamples of ``n`` units with replacement (None under
    `TOO_FEW` units)."""
    if n < TOO_FEW or reps < 1:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(reps):
        v = statistic(rng.integers(0, n, n))
        if v is not None and not math.isnan(v):
            values.append(v)
    if len(values) < max(10, reps // 2):  # a statistic undefined on most resamples has no useful CI
        return None
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class PairedGain:
    """A statistic of picks minus the same statistic of a reference, over the same items (percentage points)."""

    delta: float
    ci: tuple[float, float] | None  # percentile bootstrap over items, 95%; None under TOO_FEW items
    p_value: float | None  # two-sided, paired bootstrap under no difference
    n: int = 0  # the items it rests on
    reps: int = 1000  # the resamples behind ci and p_value

    @property
    def significant(self) -> bool:
        """The CI excludes 0 (a gain whose CI crosses 0 is not a gain one can claim)."""
        return self.ci is not None and (self.ci[0] > 0 or self.ci[1] < 0)

    def said(self) -> str:
        """``+3.10 [+0.40, +5.90], p=0.020``, the same with ``not significant``, or ``+3.10 (too few, n=4)``."""
        if self.n < TOO_FEW:
            return f"{self.delta:+.2f} (too few, n={self.n})"
        ci = f" [{self.ci[0]:+.2f}, {self.ci[1]:+.2f}]" if self.ci else ""
        p = f", {p_value_text(self.p_value, self.reps)}" if self.p_value is not None else ""
        return f"{self.delta:+.2f}{ci}{p}" + ("" if self.significant else ", not significant")


def paired_gain(picked: Sequence[float], reference: Sequence[float], reps: int = 1000, seed: int = 0) -> PairedGain:
    """The mean of ``picked`` minus the mean of ``reference`` (per-item values in [0, 1], paired by item) x 100,
    with a bootstrap CI over items and the p-value of a paired bootstrap test of no difference (neither under
    `TOO_FEW` items)."""
    diff = np.asarray(picked, dtype=float) - np.asarray(reference, dtype=float)
    n = len(diff)
    delta = float(diff.mean()) * 100 if n else float("nan")
    if n < TOO_FEW or reps < 1:
        return PairedGain(delta, None, None, n, reps)
    means = diff[np.random.default_rng(seed).integers(0, n, (reps, n))].mean(axis=1)
    lo, hi = np.quantile(means * 100, [0.025, 0.975])
    centred = np.abs(means - diff.mean())  # the resampled spread around no difference
    p = (1 + int((centred >= abs(diff.mean()) - 1e-12).sum())) / (reps + 1)
    return PairedGain(delta, (float(lo), float(hi)), min(1.0, p), n, reps)


def risk_at_coverages(
    confidence: Sequence[float | None],
    quality: Sequence[float],
    coverages: Sequence[float] = (1.0, 0.9, 0.8, 0.5),
    reps: int = 1000,
    seed: int = 0,
) -> dict[float, tuple[float, tuple[float, float] | None]]:
    """Per coverage c, the risk (1 - mean quality) of the c share of items answered by highest confidence (None
    last, ties in item order) and its bootstrap CI over items (the threshold recomputed on every resample)."""
    conf, q = _confidences(confidence), np.asarray(quality, dtype=float)
    n = len(q)
    if n == 0:  # nothing to answer: no risk to state
        return {c: (float("nan"), None) for c in coverages}

    def risk(idx: np.ndarray, c: float) -> float:  # ``risk_coverage``'s curve at the coverage's answered count
        return float(_risks(_by_confidence(conf[idx], q[idx]))[answered_count(c, len(idx)) - 1])

    out: dict[float, tuple[float, tuple[float, float] | None]] = {}
    for c in coverages:

        def resampled(idx: np.ndarray, c: float = c) -> float:
            return risk(np.sort(idx), c)

        out[c] = (risk(np.arange(n), c), bootstrap_ci(resampled, n, reps, seed))
    return out

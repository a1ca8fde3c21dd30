"""Benchmark kinds of `bon compare`: how each is loaded and evaluated, looked up by name in `KINDS`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bon.core.records import Prompt
from bon.core.registry import Registry
from bon.eval.benchmarks import Benchmark, load_leaderboard, load_pairwise, load_pool_benchmark, load_scores
from bon.eval.judge_metrics import (
    evaluate_leaderboard,
    evaluate_pairwise,
    evaluate_pool,
    evaluate_scores,
    is_comparisons,
)

Result = Any  # PairwiseResult | PoolResult | ScoresResult | LeaderboardResult


@dataclass(frozen=True)
class Kind:
    """How one kind is read and scored.

    ``load(cfg)``: the benchmark a `BenchmarkConfig` names;
    ``evaluate(bench, subset, label, records, reps, seed, folds)``: one judge's numbers on it.
    """

    load: Callable[[Any], Benchmark]
    evaluate: Callable[[Benchmark, Sequence[Prompt], str, list, int, int, int], Result]


def _evaluate_pairwise(
    bench: Benchmark, subset: Sequence[Prompt], label: str, records: list, reps: int, seed: int, folds: int
) -> Result:
    # a pairwise judge's comparisons, or a scalar judge's judgements thresholded into verdicts
    kind = "comparisons" if is_comparisons(records) else "judgements"
    return evaluate_pairwise(bench, subset, label, **{kind: records}, reps=reps, seed=seed, folds=folds)


PAIRWISE = Kind(lambda cfg: load_pairwise(cfg.path, cfg.name), _evaluate_pairwise)
POOL = Kind(
    lambda cfg: load_pool_benchmark(cfg.path, cfg.name),
    lambda bench, subset, label, records, reps, seed, folds: evaluate_pool(bench, subset, label, records, reps, seed),
)
SCORES = Kind(
    lambda cfg: load_scores(
        cfg.path, cfg.name, cfg.instruction_field, cfg.response_field, cfg.score_field, cfg.reference_field
    ),
    lambda bench, subset, label, records, reps, seed, folds: evaluate_scores(bench, subset, label, records, reps, seed),
)
LEADERBOARD = Kind(
    lambda cfg: load_leaderboard(cfg.path, cfg.name),
    lambda bench, subset, label, records, reps, seed, folds: evaluate_leaderboard(
        bench, subset, label, records, reps, seed
    ),
)

KINDS: Registry[Kind] = Registry(
    "benchmark kind",
    {
        "pairwise": "bon.eval.kinds:PAIRWISE",
        "pool": "bon.eval.kinds:POOL",
        "scores": "bon.eval.kinds:SCORES",
        "leaderboard": "bon.eval.kinds:LEADERBOARD",
    },
)

"""Each comparison metric against values worked out by hand in the comments."""

import math

import numpy as np
import pytest

from bon.eval.metrics import (
    FIRST,
    SECOND,
    TIE,
    agreement,
    agreement_no_tie,
    bootstrap_ci,
    comparator_scores,
    correlations,
    cross_fit_agreement,
    grouped_kendall,
    kendall_tau_b,
    predict_pairs,
    risk_coverage,
    search_threshold,
    swap_back,
)


def test_predict_pairs_and_agreement_with_ties_and_a_missing_score():
    # |2 - 2.005| = 0.005 < 0.01 is a tie; a missing side is no prediction (and so never right)
    preds = predict_pairs([3, 1, 2, None, 4], [1, 3, 2.005, 1, 4], 0.01)
    assert preds == [FIRST, SECOND, TIE, None, TIE]  # equal scores tie even at threshold 0
    assert predict_pairs([4], [4], 0.0) == [TIE]
    labels = [0, 1, 2, 0, 0]
    assert agreement(preds, labels) == pytest.approx(60.0)  # 3 of 5
    assert agreement_no_tie(preds, labels) == pytest.approx(50.0)  # items 0, 1, 3, 4: two right


def test_threshold_search_picks_the_smallest_best_grid_point():
    # differences 0.5, 0.05, -0.03, 1.5 with labels 1>2, tie, tie, 1>2:
    # t <= 0.03: 50%; 0.03 < t <= 0.05: 75%; 0.05 < t <= 0.5: 100%  -> the grid's first is 0.06
    t, best = search_threshold([0.5, 0.05, 0.0, 1.5], [0.0, 0.0, 0.03, 0.0], [0, 2, 2, 0])
    assert t == 0.06
    assert best == pytest.approx(100.0)


def test_cross_fitted_threshold_never_sees_its_own_fold():
    # fold 0: one tie at gap 0.3; fold 1: a tie at gap 0.1 and a 1>2 at gap 0.2
    # fold 1 alone chooses 0.11 -> predicts fold 0's gap 0.3 as FIRST (wrong)
    # fold 0 alone chooses 0.31 -> predicts fold 1 as tie, tie: one of two right
    score, thresholds = cross_fit_agreement([0.3, 0.1, 0.2], [0, 0, 0], [2, 2, 0], [0, 1, 1])
    assert thresholds == {0: 0.11, 1: 0.31}
    assert score == pytest.approx(100 / 3)


def test_pairwise_judge_agreement_needs_both_orders_and_consistency_counts_agreeing_orders():
    assert [swap_back(v) for v in (FIRST, SECOND, TIE, None)] == [SECOND, FIRST, TIE, None]
    forward = [0, 1, 2, 0, None]
    swapped = [0, 0, 2, None, 0]  # already in the original orientation
    labels = [0, 1, 2, 1, 0]
    agree, consistent = comparator_scores(forward, swapped, labels)
    assert agree == pytest.approx(40.0)  # items 0 and 2
    assert consistent == pytest.approx(40.0)  # items 0 and 2 agree across orders


def test_correlations_by_hand():
    x, y = [1, 2, 3, 4, 5], [2, 4, 5, 4, 5]
    c = correlations(x, y)
    # Pearson: sum dxdy = 6, sum dx^2 = 10, sum dy^2 = 6
    assert c.pearson == pytest.approx(6 / math.sqrt(60))
    # Spearman: y ranks 1, 2.5, 4.5, 2.5, 4.5 -> 7 / sqrt(10 * 9)
    assert c.spearman == pytest.approx(7 / math.sqrt(90))
    # Kendall tau-b: 7 concordant, 1 discordant, 2 ties in y -> 6 / sqrt(10 * 8)
    assert c.kendall == pytest.approx(6 / math.sqrt(80))
    assert c.n == 5
    # pairs with a missing side are left out; a constant side has no correlation
    assert correlations([1, None, 2, 3], [1, 5, 2, 3]).n == 3
    assert correlations([1, 1, 1], [1, 2, 3]).pearson is None


def test_risk_coverage_and_aurc_by_hand():
    # most confident first: 0 (0.9), 2 (0.5), 1 (0.1), 3 (missing) -> qualities 1, 0, 0, 1
    rc = risk_coverage([0.9, 0.1, 0.5, None], [1, 0, 0, 1])
    assert rc.coverage == [0.25, 0.5, 0.75, 1.0]
    assert rc.risk == pytest.approx([0.0, 0.5, 2 / 3, 0.5])
    assert rc.aurc == pytest.approx((0 + 0.5 + 2 / 3 + 0.5) / 4)
    # oracle order 1, 1, 0, 0 -> risks 0, 0, 1/3, 1/2
    assert rc.oracle_aurc == pytest.approx((0 + 0 + 1 / 3 + 0.5) / 4)
    # a judge as good as the oracle reaches its AURC
    assert risk_coverage([3, 2, 1, 0], [1, 1, 0, 0]).aurc == pytest.approx(rc.oracle_aurc)


def test_grouped_kendall_averages_prompts_where_both_judges_rank():
    a = {"p": [1, 2, 3], "q": [3, 2, 1], "r": [5, 5, 5], "s": [1, 2]}
    b = {"p": [10, 20, 30], "q": [1, 2, 3], "r": [1, 2, 3]}
    tau, used = grouped_kendall(a, b)
    assert used == 2  # r is constant for a; s is scored by a only
    assert tau == pytest.approx(0.0)  # +1 on p, -1 on q


def test_kendall_tau_b_equals_scipys_with_ties_and_missing_scores():
    from scipy import stats

    rng = np.random.default_rng(0)
    for m in (2, 3, 8, 32):
        for _ in range(50):
            x = rng.integers(0, 4, m).astype(float)  # few values: many ties
            y = rng.integers(0, 4, m).astype(float)
            expected = stats.kendalltau(x, y).statistic
            got = kendall_tau_b(x.tolist(), y.tolist())
            assert (got is None) == bool(np.isnan(expected) or np.ptp(x) == 0 or np.ptp(y) == 0)
            if got is not None:
                assert got == pytest.approx(expected, abs=1e-12)
    assert kendall_tau_b([1, None, 2, 3], [1, 9, 3, 2]) == pytest.approx(1 / 3)
    assert kendall_tau_b([1, 2], [None, 1]) is None


def test_bootstrap_ci():
    assert bootstrap_ci(lambda idx: 5.0, 10, reps=50) == (5.0, 5.0)
    assert bootstrap_ci(lambda idx: 1.0, 1, reps=50) is None  # one unit cannot be resampled
    values = np.array([0.0] * 50 + [1.0] * 50)
    lo, hi = bootstrap_ci(lambda idx: values[idx].mean(), 100, reps=2000, seed=1)
    # the normal approximation: 0.5 +- 1.96 * 0.05
    assert lo == pytest.approx(0.402, abs=0.03) and hi == pytest.approx(0.598, abs=0.03)
    assert bootstrap_ci(lambda idx: values[idx].mean(), 100, reps=200, seed=3) == bootstrap_ci(
        lambda idx: values[idx].mean(), 100, reps=200, seed=3
    )


def test_one_tie_rule_for_scalar_judges():
    """metrics and the pairwise comparator predict the same verdicts; a gap equal to the threshold is not a tie."""
    from bon.judges.pairwise import ScalarComparator, ScalarComparatorOptions, scalar_verdict

    a, b, t = [1.0, 1.0, 1.0, 2.0, 3.0], [1.0, 1.4, 1.5, 1.0, 3.6], 0.5
    assert predict_pairs(a, b, t) == [TIE, TIE, SECOND, FIRST, SECOND]
    assert [scalar_verdict(x, y, t) for x, y in zip(a, b)] == predict_pairs(a, b, t)
    assert scalar_verdict(1.0, 1.0, 0.0) == TIE and scalar_verdict(1.0, 1.01, 0.0) == SECOND
    comparator = ScalarComparator(ScalarComparatorOptions(judge="length", tie_threshold=2.0))
    verdicts = comparator.compare([("q", "abc", "abcd"), ("q", "abc", "abcde"), ("q", "abcdef", "a")])
    assert [v.winner for v in verdicts] == predict_pairs([3, 3, 6], [4, 5, 1], 2.0) == [TIE, SECOND, FIRST]


def test_every_benchmark_kind_a_config_accepts_is_registered():
    from typing import get_args

    from bon.eval.compare import BenchmarkConfig
    from bon.eval.kinds import KINDS

    assert sorted(get_args(BenchmarkConfig.model_fields["kind"].annotation)) == KINDS.names()
    assert all(callable(KINDS.get(k).load) and callable(KINDS.get(k).evaluate) for k in KINDS)


def test_paired_gain_by_hand_and_its_significance():
    from bon.eval.metrics import paired_gain

    same = paired_gain([1, 0, 1, 0] * 3, [1, 0, 1, 0] * 3)
    assert same.delta == 0 and not same.significant and same.p_value == 1.0 and "not significant" in same.said()
    few = paired_gain([1, 0, 1, 0], [0, 0, 0, 0])  # under TOO_FEW items: the delta alone
    assert few.ci is None and few.p_value is None and few.said() == "+50.00 (too few, n=4)"
    clear = paired_gain([1.0] * 40, [0.0] * 20 + [0.5] * 20)
    assert clear.delta == pytest.approx(75.0) and clear.significant and clear.p_value < 0.01
    assert clear.ci[0] <= 75.0 <= clear.ci[1]
    assert paired_gain([1.0], [0.0]).ci is None  # one item: no interval


def test_risk_at_coverages_by_hand():
    from bon.eval.metrics import risk_at_coverages

    # confidence orders the items; quality 1 for the two most confident, 0 for the rest
    risks = risk_at_coverages([0.9, 0.1, 0.8, None], [1.0, 0.0, 1.0, 0.0], (1.0, 0.5, 0.75), reps=50)
    assert risks[1.0][0] == pytest.approx(0.5) and risks[0.5][0] == 0.0
    assert risks[0.75][0] == pytest.approx(1 / 3)  # three answered: the unjudged item is declined first
    ties = risk_at_coverages([1.0, 1.0], [0.0, 1.0], (0.5,), reps=50)
    assert ties[0.5][0] == 1.0  # ties answered in item order, as `bon select --coverage` does

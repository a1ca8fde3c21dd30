"""Parsers, pairwise ranking, ensembles and tie-breaks, on hand-made inputs (no model)."""

import math
import random

import pytest

from bon.core.config import SelectionConfig
from bon.core.records import Candidate, Judgement, Prompt
from bon.engines.contract import derive_seed
from bon.judges import build_judge, describe_judges
from bon.judges.autoj import parse_rating
from bon.judges.pairwise import FIRST, SECOND, TIE, PairVerdict, PairwiseRanking, _both_orders, parse_decision
from bon.pipeline.selection import TieBreakError, select, select_prompt, tiebreak_values, zscores

PROMPTS = [Prompt("p", "Explain rain."), Prompt("q", "Name a bird.")]
TEXTS = {
    "p": ["Rain falls.", "Water vapour condenses into drops that fall.", "Rain.", "Clouds release water as rain."],
    "q": ["Owl", "A robin", "Sparrow", "Eagle"],
}
CANDS = [Candidate(pid, i, t, None, 1, 1, "stop", "x") for pid, texts in TEXTS.items() for i, t in enumerate(texts)]


@pytest.mark.parametrize(
    "text, rating, flag",
    [
        ("Solid answer.\n\nRating: [[7]]", 7.0, None),
        ("First Rating: [[3]] then, revised: Rating: [[8.5]]", 8.5, None),
        ("The response is fine overall. I would give it", None, "no 'Rating: [[x]]'"),
        ("Rating: [[seven]]", None, "is not a number"),
        ("Rating: [[9", None, "unterminated"),
        ("Rating: [5]", None, "no 'Rating: [[x]]'"),
    ],
)
def test_parse_rating(text, rating, flag):
    got, why = parse_rating(text)
    assert got == rating and (flag is None and why is None or flag in why)


@pytest.mark.parametrize(
    "text, winner",
    [
        ("... So, the final decision is Response 1. Because ...", FIRST),
        ("So, the final decision is response 2", SECOND),
        ("Earlier: the final decision is Response 1. On reflection the final decision is Tie.", TIE),
        ("I cannot decide between them.", None),
        ("So, the final decision is neither.", None),
    ],
)
def test_parse_decision(text, winner):
    verdict = parse_decision(text)
    assert verdict.winner == winner and verdict.raw == text
    assert (verdict.flag is None) == (winner is not None)


def test_both_orders_cancel_position_bias():
    v = PairVerdict
    assert _both_orders(v(FIRST), v(SECOND)) == FIRST  # i wins in both orders
    assert _both_orders(v(SECOND), v(FIRST)) == SECOND
    assert _both_orders(v(FIRST), v(FIRST)) == TIE  # always "the first one": position bias, a tie
    assert _both_orders(v(TIE), v(TIE)) == TIE
    assert _both_orders(v(None), v(FIRST)) is None


def test_round_robin_with_scalar_length_by_hand():
    judge = build_judge("pairwise", {"comparator": "scalar", "comparator_options": {"judge": "length"}})
    out = judge.score(PROMPTS, CANDS)
    # length order in p: 1 > 3 > 0 > 2: each candidate's points = candidates it beats (both orders agree)
    assert [j.score for j in out[:4]] == [1.0, 3.0, 0.0, 2.0]
    # q: "A robin" (7) > "Sparrow" (7)? equal length -> a tie, half a point each
    lengths = [len(t) for t in TEXTS["q"]]
    by_hand = [
        sum(1.0 if lengths[i] > lengths[j] else 0.5 if lengths[i] == lengths[j] else 0.0 for j in range(4) if j != i)
        for i in range(4)
    ]
    assert [j.score for j in out[4:]] == by_hand
    assert out[0].details == {"mode": "round_robin", "comparisons_per_prompt": 12}
    assert "round_robin (N(N-1) comparisons per prompt)" in judge.describe()
    assert select("p", out[:4]).chosen_index == 1


def test_knockout_champion_and_cost():
    judge = build_judge(
        "pairwise", {"comparator": "scalar", "comparator_options": {"judge": "length"}, "mode": "knockout"}
    )
    out = judge.score(PROMPTS, CANDS)
    assert select("p", out[:4]).chosen_index == 1 and out[1].score == 4.0
    assert select("q", out[4:]).chosen_index == 1  # "A robin" and "Sparrow" tie: the champion stays
    assert PairwiseRanking.cost(32, "knockout") == 62 and PairwiseRanking.cost(32, "round_robin") == 992


def test_ensemble_by_hand():
    judge = build_judge(
        "ensemble",
        {"members": [{"name": "length", "weight": 2.0}, {"name": "random", "options": {"seed": 3}, "weight": -1.0}]},
    )
    out = judge.score(PROMPTS, CANDS)
    for pid, rows in (("p", out[:4]), ("q", out[4:])):
        lengths = [float(len(t)) for t in TEXTS[pid]]
        draws = [random.Random(derive_seed(3, pid, i)).random() for i in range(4)]
        mean_l, sd_l = sum(lengths) / 4, math.sqrt(sum((x - sum(lengths) / 4) ** 2 for x in lengths) / 4)
        mean_r, sd_r = sum(draws) / 4, math.sqrt(sum((x - sum(draws) / 4) ** 2 for x in draws) / 4)
        expected = [2 * (lengths[i] - mean_l) / sd_l - (draws[i] - mean_r) / sd_r for i in range(4)]
        assert [j.score for j in rows] == pytest.approx(expected)
        assert rows[0].details == {"length": lengths[0], "random": pytest.approx(draws[0])}
    assert zscores([5.0, 5.0]) == [0.0, 0.0] and zscores([1.0]) == [0.0]


def test_length_and_random_selection_by_hand():
    length = build_judge("length").score(PROMPTS, CANDS)
    assert select("p", length[:4]).chosen_index == max(range(4), key=lambda i: len(TEXTS["p"][i]))
    rnd = build_judge("random", {"seed": 11}).score(PROMPTS, CANDS)
    draws = [random.Random(derive_seed(11, "q", i)).random() for i in range(4)]
    assert select("q", rnd[4:]).chosen_index == draws.index(max(draws))


def test_tie_breaks():
    js = [Judgement("p", i, "autoj", 6.0, details={"rating_logprob": lp}) for i, lp in enumerate([-2.0, -0.1, -0.5])]
    assert select("p", js).chosen_index == 0
    assert select_prompt("p", js, SelectionConfig(tie_break="details:rating_logprob")).chosen_index == 1
    secondary = {("p", i): Judgement("p", i, "selfj", s) for i, s in enumerate([1.0, 2.0, 3.0])}
    assert select_prompt("p", js, SelectionConfig(tie_break="judge:selfj"), secondary).chosen_index == 2
    with pytest.raises(TieBreakError, match="judge 'autoj' records no 'missing' .*; it records rating_logprob"):
        tiebreak_values("details:missing", js)  # issue 21: a key no judgement records is refused, not ignored
    with pytest.raises(TieBreakError, match="has no 'selfj' judgement"):
        tiebreak_values("judge:selfj", js, {})
    higher = [Judgement("p", 0, "autoj", 5.0, details={"rating_logprob": -0.01}), js[2]]
    assert (
        select_prompt("p", higher, SelectionConfig(tie_break="details:rating_logprob")).chosen_index == 2
    )  # the score comes first


def test_every_judge_is_listed_with_its_needs():
    rows = {r.name: r for r in describe_judges()}
    assert set(rows) >= {
        "selfj",
        "autoj",
        "reward_model",
        "pairwise",
        "ppl",
        "cosine",
        "self_eval",
        "consistency",
        "ensemble",
        "length",
        "random",
    }
    assert rows["cosine"].needs_reference and not rows["length"].needs_reference
    assert rows["selfj"].hub_id == "oceanpty/Self-J" and rows["selfj"].cpu_default == "SmolLM2-135M-Instruct"
    assert rows["cosine"].cpu_default == "all-MiniLM-L6-v2"

import pytest

from bon.core.records import Judgement
from bon.pipeline.selection import select


def j(i, score, judge="t"):
    return Judgement("p", i, judge, score, flag=None if score is not None else "failed")


def test_argmax():
    s = select("p", [j(0, 1.0), j(1, 3.0), j(2, 2.0)])
    assert (s.chosen_index, s.score, s.declined) == (1, 3.0, False)


def test_tie_goes_to_lowest_index_whatever_the_order():
    s = select("p", [j(3, 5.0), j(1, 5.0), j(2, 4.0), j(0, 1.0)])
    assert s.chosen_index == 1


def test_failed_judgements_never_win():
    s = select("p", [j(0, None), j(1, -2.0), j(2, None)])
    assert (s.chosen_index, s.score) == (1, -2.0)


def test_decline_below_threshold():
    s = select("p", [j(0, 2.0), j(1, 2.5)], decline_below=3.0)
    assert s.declined and s.chosen_index is None and s.score == 2.5 and "decline_below" in s.reason
    kept = select("p", [j(0, 2.0), j(1, 3.0)], decline_below=3.0)
    assert not kept.declined and kept.chosen_index == 1


def test_all_failed():
    fallback = select("p", [j(0, None), j(1, None)])
    assert (fallback.chosen_index, fallback.declined, fallback.score) == (0, False, None)
    assert "no candidate could be judged" in fallback.reason
    declined = select("p", [j(0, None), j(1, None)], decline_below=1.0)
    assert declined.declined and declined.chosen_index is None


def sel(pid, score, skipped=False):
    from bon.core.records import Selection

    if skipped:
        return Selection(pid, None, True, None, "t", "too long", skipped=True)
    return Selection(pid, 0, False, score, "t")


def test_coverage_declines_exactly_its_share_lowest_first_and_records_tau():
    from bon.pipeline.selection import cover

    picks = [sel(f"p{i}", float(s)) for i, s in enumerate([5, 1, 9, 3, 7, 2, 8, 4, 6, 0])]
    out, tau = cover(picks, 0.9)
    assert [s.prompt_id for s in out if s.declined] == ["p9"]  # the least confident 10%
    assert tau == 1.0 and all(s.threshold == 1.0 for s in out)
    assert "0 < 1, the threshold of coverage 0.9" in next(s.reason for s in out if s.declined)
    out, tau = cover(picks, 0.5)
    assert sum(s.declined for s in out) == 5 and tau == 5.0
    assert {s.prompt_id for s in out if not s.declined} == {"p0", "p2", "p4", "p6", "p8"}
    assert [s.chosen_index for s in cover(picks, 1.0)[0]] == [0] * 10  # everything answered


def test_coverage_ties_are_answered_in_prompt_order_and_unjudged_or_skipped_prompts_are_handled():
    from bon.pipeline.selection import cover

    out, tau = cover([sel("a", 2.0), sel("b", 2.0), sel("c", 2.0), sel("d", 2.0)], 0.5)
    assert [s.declined for s in out] == [False, False, True, True] and tau == 2.0
    assert "ties the threshold" in out[2].reason
    out, _ = cover([sel("a", None), sel("b", 1.0), sel("s", None, skipped=True), sel("c", 0.5)], 2 / 3)
    assert [s.prompt_id for s in out if s.declined and not s.skipped] == ["a"]  # unjudged goes first
    assert out[2].skipped and out[2].reason == "too long"  # untouched, and not counted in the share
    assert cover([sel("a", 0.1)], 0.01)[0][0].declined is False  # at least one prompt is answered


def test_length_penalty_picks_shorter_among_close_scores_and_means_the_same_on_any_scale():
    from bon.pipeline.selection import pick_values

    lengths = {0: 100, 1: 2000, 2: 900}
    js = [j(0, 7.0), j(1, 8.0), j(2, 7.5)]
    assert select("p", js).chosen_index == 1
    assert select("p", js, lengths=lengths, length_penalty=0.0).chosen_index == 1  # λ = 0 is the plain pick
    assert select("p", js, lengths=lengths, length_penalty=1.0).chosen_index == 2  # a trade-off
    assert select("p", js, lengths=lengths, length_penalty=2.0).chosen_index == 0  # the shortest
    rescaled = [j(i, 100 * s.score - 40) for i, s in enumerate(js)]
    for lam in (0.25, 0.5, 1.0, 2.0):  # z-scores: a judge's units do not change what λ does
        assert pick_values(rescaled, lengths, lam) == pytest.approx(pick_values(js, lengths, lam))
    decline = select("p", js, decline_below=7.2, lengths=lengths, length_penalty=2.0)
    assert decline.declined and decline.score == 7.0  # the pick's own score is the confidence


def test_selection_config_refuses_two_decline_rules_and_bad_values():
    from bon.core.config import SelectionConfig, validate_options
    from bon.core.errors import ConfigError

    with pytest.raises(ConfigError, match="give --decline-below or --coverage, not both"):
        validate_options(SelectionConfig, {"decline_below": 1.0, "coverage": 0.9})
    with pytest.raises(ConfigError, match="option --coverage: Input should be greater than 0"):
        validate_options(SelectionConfig, {"coverage": 0})
    with pytest.raises(ConfigError, match="option --length-penalty: Input should be greater than or equal to 0"):
        validate_options(SelectionConfig, {"length_penalty": -1})

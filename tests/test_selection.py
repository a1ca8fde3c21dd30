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

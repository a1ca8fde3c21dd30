"""`score_missing`: the one "judge what is missing, in batches" of run, judge, compare and select-pool."""

from bon.core.records import Candidate, Judgement
from bon.pipeline.executors import Done
from bon.pipeline.scoring import InFlight, score_missing
from tests.conftest import make_prompts


class CountingExecutor:
    """Scores a candidate by its index; records which batches reached the judge."""

    window = judge_window = 2

    def __init__(self):
        self.batches: list[list[str]] = []

    def score(self, prompts, candidates):
        self.batches.append([c.prompt_id for c in candidates])
        return Done([Judgement(c.prompt_id, c.index, "inner-name", float(c.index)) for c in candidates])


def cands(pid, n=2, rejected=()):
    return [
        Candidate(
            pid, i, "t", 0, 1, 1, "rejected" if i in rejected else "stop", "p", flag="cut" if i in rejected else None
        )
        for i in range(n)
    ]


def test_only_batches_with_a_missing_judgement_reach_the_judge_and_results_keep_batch_order():
    prompts = make_prompts(3)
    table = {p.id: cands(p.id) for p in prompts}
    judged = {
        (prompts[0].id, 0): Judgement(prompts[0].id, 0, "lbl", 5.0),
        (prompts[0].id, 1): Judgement(prompts[0].id, 1, "lbl", 6.0),
    }
    judged[(prompts[1].id, 0)] = Judgement(prompts[1].id, 0, "lbl", 7.0)  # batch 1 lacks one: rescored whole
    seen = []
    ex = CountingExecutor()
    made = score_missing(
        ex, [[p] for p in prompts], lambda p: table[p.id], judged, "lbl", lambda b, fresh: seen.append((b[0].id, fresh))
    )
    assert ex.batches == [["q1", "q1"], ["q2", "q2"]]  # the complete batch 0 is never submitted
    assert [pid for pid, _ in seen] == ["q0", "q1", "q2"]  # every batch reported, in order
    assert made == 3 and [len(f) for _, f in seen] == [0, 1, 2]
    assert judged[("q1", 0)].score == 7.0  # what was held stays as it was
    assert all(j.judge == "lbl" for j in judged.values())  # relabelled, never the judge's own name


def test_rejected_candidates_get_failed_judgements_without_the_judge():
    prompts = make_prompts(1)
    table = {"q0": cands("q0", 3, rejected=(1,))}
    judged: dict = {}
    ex = CountingExecutor()
    score_missing(ex, [prompts], lambda p: table[p.id], judged, "lbl", lambda b, f: None)
    assert ex.batches == [["q0", "q0"]] and judged[("q0", 1)].score is None and judged[("q0", 1)].flag == "cut"


def test_in_flight_finishes_in_submission_order_and_bounds_what_is_outstanding():
    done = []
    flight = InFlight(lambda k, value: done.append((k, value)))
    for k in range(5):
        flight.submit(k, Done(k * 10) if k != 2 else None)
        flight.collect(keep=2)
        assert len(flight) <= 2
    flight.collect()
    assert done == [(0, 0), (1, 10), (2, None), (3, 30), (4, 40)]

"""Best-of-N selection: argmax with a lowest-index tie-break, or a decline below a threshold."""

from __future__ import annotations

from typing import Sequence

from bon.records import Judgement, Selection


def select(prompt_id: str, judgements: Sequence[Judgement], decline_below: float | None = None) -> Selection:
    """Pick the best-scored candidate of one prompt.

    Ties go to the lowest candidate index. Failed judgements (score None) never win. A prompt whose
    best score is below ``decline_below``, or none of whose candidates could be judged while a
    threshold is set, is declined; with no threshold an all-failed prompt falls back to candidate 0.
    """
    if not judgements:
        raise ValueError(f"prompt {prompt_id!r}: no judgements to select from")
    judge = judgements[0].judge
    scored = [j for j in judgements if j.score is not None]
    if not scored:
        if decline_below is not None:
            return Selection(prompt_id, None, True, None, judge, reason="no candidate could be judged")
        first = min(j.candidate_index for j in judgements)
        return Selection(prompt_id, first, False, None, judge, reason="no candidate could be judged; kept the first")
    best = min(scored, key=lambda j: (-j.score, j.candidate_index))
    if decline_below is not None and best.score < decline_below:
        return Selection(
            prompt_id, None, True, best.score, judge, reason=f"best score {best.score:.4g} < decline_below {decline_below:g}"
        )
    return Selection(prompt_id, best.candidate_index, False, best.score, judge)
